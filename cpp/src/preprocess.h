// Host-side pre-processing, the same computation as codetr.preprocess.make_batch (see that
// module for the sources of each rule), plus the fitting of the canvas to the export's input.
#pragma once

#include <optional>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "metadata.h"

namespace codetr {

// images [B, 3, H, W] float32 RGB 0-255, padded; image_sizes [B, 2] int64 (h, w) handed to the
// model; scale_factors [B, 2] float64 (w_scale, h_scale) = resized / original; original_sizes
// [B, 2] int64 (h, w).
struct Batch {
  at::Tensor images;
  at::Tensor image_sizes;
  at::Tensor scale_factors;
  at::Tensor original_sizes;
};

// mmcv rescale_size with keep_ratio: the largest (h, w) fitting the (long, short) limits, each
// side rounded as int(x * s + 0.5).
std::pair<int64_t, int64_t> rescaled_size(int64_t height, int64_t width, std::pair<int64_t, int64_t> scale,
                                          std::optional<std::pair<int64_t, int64_t>> canvas = std::nullopt);

// [3, H, W] uint8 -> [3, h, w] float32 with integer intensities: bilinear, align_corners=False,
// no antialias, rounded and clamped to 0-255.
at::Tensor resize_keep_ratio(const at::Tensor& image, std::pair<int64_t, int64_t> scale,
                             std::optional<std::pair<int64_t, int64_t>> canvas = std::nullopt);

// Resizes and pads `images` (uint8 [3, H_i, W_i]) into one batch: to preprocess.pad_size, else to
// the largest image rounded up to size_divisor; then a side smaller than the export's minimum
// input size is padded up to it (a static export takes one size). Throws std::runtime_error when
// the batch does not fit the export (too large, or not a multiple of input.multiple).
Batch make_batch(const std::vector<at::Tensor>& images, const ExportMetadata& metadata);

}  // namespace codetr
