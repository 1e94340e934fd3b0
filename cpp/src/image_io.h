// Reading images as uint8 RGB [3, H, W] tensors, drawing boxes, writing images and files.
//
// Binary PPM/PGM (P6/P5) is always supported; PNG when built with libpng, JPEG when built with
// libjpeg (CMake finds them). Pixels match codetr.data.images.read_image (Pillow) for PNG and
// PPM; JPEG pixels match when both use libjpeg-turbo's default (islow) decoder. Unlike the Python
// reader, EXIF orientation is not applied.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace codetr {

// The image at `path` as uint8 RGB [3, H, W]; throws std::runtime_error naming the file.
at::Tensor read_image(const std::filesystem::path& path);

// `source` itself if it is a file, else the images directly in the folder (by suffix), sorted by
// name; throws if it does not exist or holds no image.
std::vector<std::filesystem::path> list_images(const std::filesystem::path& source);

// The suffixes read_image decodes in this build, e.g. ".png .ppm".
std::string image_suffixes();

// ".png" with libpng, else ".ppm": the format write_image uses for drawn images.
std::string drawn_image_suffix();

// Draws each box [N, 4] (x1, y1, x2, y2 pixels, float) as a `width`-pixel red rectangle outline
// into `image` (uint8 [3, H, W], modified in place), inside the box and clipped to the image.
void draw_boxes(at::Tensor& image, const at::Tensor& boxes, int64_t width = 2);

// Writes uint8 RGB [3, H, W] as PNG (.png, needs libpng) or binary PPM (.ppm), atomically.
void write_image(const std::filesystem::path& path, const at::Tensor& image);

// Writes `text` to `path` atomically (a temporary file in the same folder, then a rename).
void write_text(const std::filesystem::path& path, const std::string& text);

}  // namespace codetr
