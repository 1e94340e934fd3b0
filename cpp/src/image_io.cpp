#include "image_io.h"

#include <algorithm>
#include <cctype>
#include <csetjmp>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>

#include <unistd.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#ifdef CODETR_WITH_PNG
#include <png.h>
#endif
#ifdef CODETR_WITH_JPEG
#include <jpeglib.h>
#endif

namespace codetr {
namespace fs = std::filesystem;
namespace {

std::string lower_suffix(const fs::path& path) {
  std::string suffix = path.extension().string();
  std::transform(suffix.begin(), suffix.end(), suffix.begin(), [](unsigned char c) { return std::tolower(c); });
  return suffix;
}

std::vector<std::string> supported_suffixes() {
  std::vector<std::string> suffixes{".ppm", ".pgm", ".pnm"};
#ifdef CODETR_WITH_PNG
  suffixes.push_back(".png");
#endif
#ifdef CODETR_WITH_JPEG
  suffixes.push_back(".jpg");
  suffixes.push_back(".jpeg");
#endif
  return suffixes;
}

[[noreturn]] void fail(const fs::path& path, const std::string& why) {
  throw std::runtime_error("cannot decode image " + path.string() + ": " + why);
}

// [H, W, C] interleaved uint8 rows -> [3, H, W] (grey channels repeated).
at::Tensor to_chw(std::vector<uint8_t>& pixels, int64_t height, int64_t width, int64_t channels) {
  auto hwc = at::from_blob(pixels.data(), {height, width, channels}, at::kByte);
  return hwc.expand({height, width, 3}).permute({2, 0, 1}).contiguous();
}

// --- PPM / PGM (netpbm binary P6 / P5) ---
int64_t read_pnm_number(std::istream& stream, const fs::path& path) {
  int next = stream.peek();
  while (std::isspace(next) || next == '#') {
    if (next == '#') {
      std::string comment;
      std::getline(stream, comment);
    } else {
      stream.get();
    }
    next = stream.peek();
  }
  int64_t value = -1;
  if (!(stream >> value) || value < 0) fail(path, "malformed PNM header");
  return value;
}

at::Tensor read_pnm(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  char magic[2] = {0, 0};
  stream.read(magic, 2);
  if (magic[0] != 'P' || (magic[1] != '6' && magic[1] != '5')) fail(path, "not a binary PPM (P6) or PGM (P5) file");
  const int64_t channels = magic[1] == '6' ? 3 : 1;
  const int64_t width = read_pnm_number(stream, path);
  const int64_t height = read_pnm_number(stream, path);
  const int64_t maxval = read_pnm_number(stream, path);
  if (width < 1 || height < 1 || maxval < 1 || maxval > 65535) fail(path, "bad PNM size or maxval");
  stream.get();  // the single whitespace byte before the raster
  const int64_t samples = width * height * channels;
  const int64_t bytes_per_sample = maxval > 255 ? 2 : 1;
  std::vector<uint8_t> raw(samples * bytes_per_sample);
  if (!stream.read(reinterpret_cast<char*>(raw.data()), raw.size())) fail(path, "truncated PNM raster");
  std::vector<uint8_t> pixels(samples);
  for (int64_t index = 0; index < samples; ++index) {
    const int64_t value = bytes_per_sample == 2 ? (raw[2 * index] << 8 | raw[2 * index + 1]) : raw[index];
    // Scaled to 0-255 with rounding, as Pillow does for maxval != 255.
    pixels[index] = maxval == 255 ? static_cast<uint8_t>(value)
                                  : static_cast<uint8_t>((value * 255 + maxval / 2) / maxval);
  }
  return to_chw(pixels, height, width, channels);
}

void write_ppm(const fs::path& path, const at::Tensor& hwc) {
  std::ostringstream stream;
  stream << "P6\n" << hwc.size(1) << " " << hwc.size(0) << "\n255\n";
  stream.write(reinterpret_cast<const char*>(hwc.data_ptr<uint8_t>()), hwc.numel());
  write_text(path, stream.str());
}

#ifdef CODETR_WITH_PNG
// Palette, grey and low-bit images expand to 8-bit RGB, 16-bit samples scale to 8 bits with
// rounding, alpha is dropped (as Pillow's convert("RGB")).
at::Tensor read_png(const fs::path& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) fail(path, "cannot open");
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    fail(path, "out of memory");
  }
  std::vector<uint8_t> pixels;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail(path, "not a valid PNG file");
  }
  png_init_io(png, file.get());
  png_read_info(png, info);
  png_set_expand(png);
  png_set_scale_16(png);
  png_set_strip_alpha(png);
  png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int64_t width = png_get_image_width(png, info);
  const int64_t height = png_get_image_height(png, info);
  const int64_t channels = png_get_channels(png, info);
  pixels.resize(height * width * channels);
  rows.resize(height);
  for (int64_t row = 0; row < height; ++row) rows[row] = pixels.data() + row * width * channels;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return to_chw(pixels, height, width, channels);
}

void write_png(const fs::path& path, const at::Tensor& hwc) {
  const fs::path temporary = path.string() + ".tmp." + std::to_string(getpid());
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(temporary.c_str(), "wb"), &std::fclose);
  if (!file) throw std::runtime_error("cannot write " + path.string());
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    file.reset();
    fs::remove(temporary);
    throw std::runtime_error("cannot write PNG " + path.string());
  }
  const int64_t height = hwc.size(0);
  const int64_t width = hwc.size(1);
  png_init_io(png, file.get());
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  auto* data = hwc.data_ptr<uint8_t>();
  for (int64_t row = 0; row < height; ++row) png_write_row(png, data + row * width * 3);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  if (std::fclose(file.release()) != 0) throw std::runtime_error("cannot write " + path.string());
  fs::rename(temporary, path);
}
#endif

#ifdef CODETR_WITH_JPEG
struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

at::Tensor read_jpeg(const fs::path& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) fail(path, "cannot open");
  jpeg_decompress_struct decoder;
  JpegError error;
  decoder.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = [](j_common_ptr common) {
    auto* state = reinterpret_cast<JpegError*>(common->err);
    state->manager.format_message(common, state->message);
    std::longjmp(state->jump, 1);
  };
  std::vector<uint8_t> pixels;
  if (setjmp(error.jump)) {
    jpeg_destroy_decompress(&decoder);
    fail(path, error.message);
  }
  jpeg_create_decompress(&decoder);
  jpeg_stdio_src(&decoder, file.get());
  jpeg_read_header(&decoder, TRUE);
  decoder.out_color_space = JCS_RGB;
  jpeg_start_decompress(&decoder);
  const int64_t width = decoder.output_width;
  const int64_t height = decoder.output_height;
  pixels.resize(height * width * 3);
  while (decoder.output_scanline < decoder.output_height) {
    JSAMPROW row = pixels.data() + static_cast<int64_t>(decoder.output_scanline) * width * 3;
    jpeg_read_scanlines(&decoder, &row, 1);
  }
  jpeg_finish_decompress(&decoder);
  jpeg_destroy_decompress(&decoder);
  return to_chw(pixels, height, width, 3);
}
#endif

}  // namespace

at::Tensor read_image(const fs::path& path) {
  if (!fs::is_regular_file(path)) throw std::runtime_error("image not found: " + path.string());
  const std::string suffix = lower_suffix(path);
  if (suffix == ".ppm" || suffix == ".pgm" || suffix == ".pnm") return read_pnm(path);
#ifdef CODETR_WITH_PNG
  if (suffix == ".png") return read_png(path);
#endif
#ifdef CODETR_WITH_JPEG
  if (suffix == ".jpg" || suffix == ".jpeg") return read_jpeg(path);
#endif
  throw std::runtime_error("cannot decode image " + path.string() + ": this build reads " + image_suffixes() +
                           " (PNG needs libpng, JPEG libjpeg when building)");
}

std::vector<fs::path> list_images(const fs::path& source) {
  if (fs::is_regular_file(source)) return {source};
  if (!fs::is_directory(source)) throw std::runtime_error("no image or folder at " + source.string());
  const auto suffixes = supported_suffixes();
  std::vector<fs::path> images;
  for (const auto& entry : fs::directory_iterator(source)) {
    if (entry.is_regular_file() &&
        std::find(suffixes.begin(), suffixes.end(), lower_suffix(entry.path())) != suffixes.end()) {
      images.push_back(entry.path());
    }
  }
  if (images.empty()) {
    throw std::runtime_error("no images (" + image_suffixes() + ") in " + source.string());
  }
  std::sort(images.begin(), images.end());
  return images;
}

std::string image_suffixes() {
  std::string text;
  for (const auto& suffix : supported_suffixes()) text += (text.empty() ? "" : " ") + suffix;
  return text;
}

std::string drawn_image_suffix() {
#ifdef CODETR_WITH_PNG
  return ".png";
#else
  return ".ppm";
#endif
}

void draw_boxes(at::Tensor& image, const at::Tensor& boxes, int64_t width) {
  const int64_t height = image.size(1);
  const int64_t image_width = image.size(2);
  const auto corners = boxes.to(at::kFloat).contiguous();
  const auto* values = corners.data_ptr<float>();
  auto pixels = image.accessor<uint8_t, 3>();
  const uint8_t colour[3] = {255, 0, 0};
  auto fill = [&](int64_t x1, int64_t y1, int64_t x2, int64_t y2) {  // inclusive, clipped
    for (int64_t y = std::max<int64_t>(y1, 0); y <= std::min(y2, height - 1); ++y) {
      for (int64_t x = std::max<int64_t>(x1, 0); x <= std::min(x2, image_width - 1); ++x) {
        for (int channel = 0; channel < 3; ++channel) pixels[channel][y][x] = colour[channel];
      }
    }
  };
  for (int64_t box = 0; box < corners.size(0); ++box) {
    const auto x1 = static_cast<int64_t>(values[4 * box]);
    const auto y1 = static_cast<int64_t>(values[4 * box + 1]);
    const auto x2 = static_cast<int64_t>(values[4 * box + 2]);
    const auto y2 = static_cast<int64_t>(values[4 * box + 3]);
    fill(x1, y1, x2, y1 + width - 1);
    fill(x1, y2 - width + 1, x2, y2);
    fill(x1, y1, x1 + width - 1, y2);
    fill(x2 - width + 1, y1, x2, y2);
  }
}

void write_image(const fs::path& path, const at::Tensor& image) {
  const auto hwc = image.permute({1, 2, 0}).contiguous();
  const std::string suffix = lower_suffix(path);
  if (suffix == ".ppm") return write_ppm(path, hwc);
#ifdef CODETR_WITH_PNG
  if (suffix == ".png") return write_png(path, hwc);
#endif
  throw std::runtime_error("cannot write " + path.string() + ": this build writes " + drawn_image_suffix() + " images");
}

void write_text(const fs::path& path, const std::string& text) {
  const fs::path temporary = path.string() + ".tmp." + std::to_string(getpid());
  {
    std::ofstream stream(temporary, std::ios::binary);
    stream << text;
    if (!stream.flush()) {
      fs::remove(temporary);
      throw std::runtime_error("cannot write " + path.string());
    }
  }
  fs::rename(temporary, path);
}

}  // namespace codetr
