#include "preprocess.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/upsample_bilinear2d.h>

namespace codetr {

std::pair<int64_t, int64_t> rescaled_size(int64_t height, int64_t width, std::pair<int64_t, int64_t> scale,
                                          std::optional<std::pair<int64_t, int64_t>> canvas) {
  if (height < 1 || width < 1) {
    throw std::runtime_error("image size must be positive, got " + std::to_string(height) + "x" + std::to_string(width));
  }
  const double long_limit = static_cast<double>(std::max(scale.first, scale.second));
  const double short_limit = static_cast<double>(std::min(scale.first, scale.second));
  double factor = std::min(long_limit / static_cast<double>(std::max(height, width)),
                           short_limit / static_cast<double>(std::min(height, width)));
  // As codetr.preprocess.rescaled_size: an image that would overflow a fixed canvas shrinks to fit.
  if (canvas) {
    factor = std::min({factor, static_cast<double>(canvas->first) / static_cast<double>(height),
                       static_cast<double>(canvas->second) / static_cast<double>(width)});
  }
  int64_t resized_height = static_cast<int64_t>(static_cast<double>(height) * factor + 0.5);
  int64_t resized_width = static_cast<int64_t>(static_cast<double>(width) * factor + 0.5);
  if (canvas) {
    resized_height = std::min(resized_height, canvas->first);
    resized_width = std::min(resized_width, canvas->second);
  }
  return {std::max<int64_t>(resized_height, 1), std::max<int64_t>(resized_width, 1)};
}

at::Tensor resize_keep_ratio(const at::Tensor& image, std::pair<int64_t, int64_t> scale,
                             std::optional<std::pair<int64_t, int64_t>> canvas) {
  const auto [height, width] = rescaled_size(image.size(1), image.size(2), scale, canvas);
  // F.interpolate(size=..., mode="bilinear", align_corners=False) without scale factors.
  const auto resized = at::upsample_bilinear2d(image.unsqueeze(0).to(at::kFloat), {height, width},
                                               /*align_corners=*/false, std::nullopt, std::nullopt);
  return resized[0].round().clamp(0, 255);
}

namespace {

int64_t fit_side(int64_t canvas, const SizeRange& range, int64_t multiple, const char* name) {
  canvas = std::max(canvas, range.min);
  if (canvas > range.max || canvas % multiple != 0) {
    throw std::runtime_error("the pre-processed batch has " + std::string(name) + " " + std::to_string(canvas) +
                             ", but the model takes " + std::to_string(range.min) + " to " + std::to_string(range.max) +
                             " pixels in multiples of " + std::to_string(multiple) +
                             " (metadata.json input and preprocessing disagree; re-export the model)");
  }
  return canvas;
}

}  // namespace

Batch make_batch(const std::vector<at::Tensor>& images, const ExportMetadata& metadata) {
  if (images.empty()) throw std::runtime_error("make_batch needs at least one image");
  const PreprocessConfig& config = metadata.preprocess;
  std::vector<at::Tensor> resized;
  std::vector<int64_t> sizes;  // h0, w0, h1, w1, ...
  std::vector<int64_t> original;
  int64_t max_height = 0;
  int64_t max_width = 0;
  for (const auto& image : images) {
    resized.push_back(resize_keep_ratio(image, config.scale, config.pad_size));
    sizes.push_back(resized.back().size(1));
    sizes.push_back(resized.back().size(2));
    original.push_back(image.size(1));
    original.push_back(image.size(2));
    max_height = std::max(max_height, resized.back().size(1));
    max_width = std::max(max_width, resized.back().size(2));
  }
  int64_t canvas_height = 0;
  int64_t canvas_width = 0;
  if (config.pad_size) {
    std::tie(canvas_height, canvas_width) = *config.pad_size;
  } else {
    const int64_t divisor = config.size_divisor;
    canvas_height = (max_height + divisor - 1) / divisor * divisor;
    canvas_width = (max_width + divisor - 1) / divisor * divisor;
  }
  canvas_height = fit_side(canvas_height, metadata.height, metadata.multiple, "height");
  canvas_width = fit_side(canvas_width, metadata.width, metadata.multiple, "width");

  const auto count = static_cast<int64_t>(images.size());
  auto batch = at::empty({count, 3, canvas_height, canvas_width}, at::kFloat);
  for (int64_t channel = 0; channel < 3; ++channel) batch.select(1, channel).fill_(config.pad_colour[channel]);
  for (int64_t index = 0; index < count; ++index) {
    batch[index].narrow(1, 0, sizes[2 * index]).narrow(2, 0, sizes[2 * index + 1]).copy_(resized[index]);
  }
  const auto resized_sizes = at::tensor(sizes, at::kLong).view({count, 2});
  const auto original_sizes = at::tensor(original, at::kLong).view({count, 2});
  const auto scale_factors = (resized_sizes.to(at::kDouble) / original_sizes.to(at::kDouble)).flip({-1});
  const auto image_sizes = config.mask_padding
                               ? resized_sizes
                               : at::tensor(std::vector<int64_t>{canvas_height, canvas_width}, at::kLong)
                                     .view({1, 2})
                                     .repeat({count, 1});
  return {batch, image_sizes, scale_factors, original_sizes};
}

}  // namespace codetr
