// Schema of torch.ops.codetr.msda and the input checks every backend runs first.
// The schema matches Deformable-DETR's MSDeformAttnFunction and torchvision's (unreleased)
// torchvision::deform_attn, so the ops are interchangeable.
#include "msda.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace codetr::msda {
namespace {

constexpr const char* kLevelCheckVariable = "CODETR_MSDA_CHECK";

// Set from the environment when first read (any value but empty or "0" turns the checks on).
std::atomic<bool>& level_checks_flag() {
  static std::atomic<bool> flag{[] {
    const char* setting = std::getenv(kLevelCheckVariable);
    return setting != nullptr && std::string(setting) != "" && std::string(setting) != "0";
  }()};
  return flag;
}

// torch.ops.codetr.set_msda_checks(enabled) -> the previous setting.
bool set_level_checks(bool enabled) { return level_checks_flag().exchange(enabled); }

bool is_supported_float(at::ScalarType type) {
  return type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16;
}

void check_same_device(const at::Tensor& tensor, const char* name, const at::Tensor& value) {
  TORCH_CHECK(tensor.device() == value.device(), "msda: ", name, " must be on value's device (",
              value.device(), "), got ", tensor.device());
}

void check_level_layout(const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                        int64_t num_values) {
  const auto shapes = spatial_shapes.accessor<int64_t, 2>();
  const auto starts = level_start_index.accessor<int64_t, 1>();
  int64_t expected_start = 0;
  for (int64_t level = 0; level < spatial_shapes.size(0); ++level) {
    const int64_t height = shapes[level][0];
    const int64_t width = shapes[level][1];
    TORCH_CHECK(height > 0 && width > 0, "msda: spatial_shapes[", level,
                "] must be a positive (H, W), got (", height, ", ", width, ")");
    TORCH_CHECK(starts[level] == expected_start, "msda: level_start_index[", level,
                "] must be ", expected_start, " (the sum of H*W of the levels before it), got ",
                starts[level]);
    expected_start += height * width;
  }
  TORCH_CHECK(expected_start == num_values, "msda: spatial_shapes give sum(H*W) = ",
              expected_start, " but value has S = ", num_values, " rows (value.shape[1])");
}

}  // namespace

// "[2, 3, 4]". Built by hand: streaming an IntArrayRef into the error message crashed torch 2.11
// when the check fired on CUDA tensors.
std::string shape_of(at::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(sizes[i]);
  }
  return text + "]";
}

Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, int64_t im2col_step) {
  TORCH_CHECK(im2col_step > 0, "msda: im2col_step must be positive, got ", im2col_step);
  TORCH_CHECK(value.dim() == 4, "msda: value must be [B, S, M, D], got shape ", shape_of(value.sizes()));
  TORCH_CHECK(is_supported_float(value.scalar_type()),
              "msda: value must be float64, float32, float16 or bfloat16, got ",
              value.scalar_type());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "msda: spatial_shapes must be [L, 2] (H, W per level), got shape ",
              shape_of(spatial_shapes.sizes()));
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong,
              "msda: spatial_shapes must be int64, got ", spatial_shapes.scalar_type());
  const int64_t num_levels = spatial_shapes.size(0);
  TORCH_CHECK(num_levels > 0, "msda: spatial_shapes must hold at least one level");
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == num_levels,
              "msda: level_start_index must be [L] = [", num_levels, "], got shape ",
              shape_of(level_start_index.sizes()));
  TORCH_CHECK(level_start_index.scalar_type() == at::kLong,
              "msda: level_start_index must be int64, got ", level_start_index.scalar_type());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "msda: sampling_locations must be [B, Q, M, L, P, 2], got shape ",
              shape_of(sampling_locations.sizes()));
  TORCH_CHECK(attention_weights.dim() == 5,
              "msda: attention_weights must be [B, Q, M, L, P], got shape ",
              shape_of(attention_weights.sizes()));

  const Sizes sizes{value.size(0),
                    value.size(1),
                    value.size(2),
                    value.size(3),
                    num_levels,
                    sampling_locations.size(1),
                    sampling_locations.size(4)};
  const std::vector<int64_t> expected_locations{sizes.batch, sizes.num_queries, sizes.num_heads,
                                                num_levels, sizes.num_points, 2};
  TORCH_CHECK(sampling_locations.sizes() == at::IntArrayRef(expected_locations),
              "msda: sampling_locations must be [B, Q, M, L, P, 2] = ",
              shape_of(expected_locations), " to match value ", shape_of(value.sizes()),
              " and spatial_shapes, got ", shape_of(sampling_locations.sizes()));
  const std::vector<int64_t> expected_weights{sizes.batch, sizes.num_queries, sizes.num_heads,
                                              num_levels, sizes.num_points};
  TORCH_CHECK(attention_weights.sizes() == at::IntArrayRef(expected_weights),
              "msda: attention_weights must be [B, Q, M, L, P] = ",
              shape_of(expected_weights), ", got ", shape_of(attention_weights.sizes()));

  const auto value_type = value.scalar_type();
  const auto location_type = sampling_locations.scalar_type();
  const bool half_value = value_type == at::kHalf || value_type == at::kBFloat16;
  TORCH_CHECK(location_type == value_type || (half_value && location_type == at::kFloat),
              "msda: sampling_locations must have value's dtype (", value_type, ")",
              half_value ? " or float32" : "", ", got ", location_type);
  TORCH_CHECK(attention_weights.scalar_type() == location_type,
              "msda: attention_weights must have sampling_locations' dtype (", location_type,
              "), got ", attention_weights.scalar_type());

  check_same_device(spatial_shapes, "spatial_shapes", value);
  check_same_device(level_start_index, "level_start_index", value);
  check_same_device(sampling_locations, "sampling_locations", value);
  check_same_device(attention_weights, "attention_weights", value);
  if (value.device().is_cpu() || level_checks_enabled()) {  // off on CUDA: a sync per call
    check_level_layout(spatial_shapes.cpu().contiguous(), level_start_index.cpu().contiguous(),
                       sizes.num_values);
  }
  return sizes;
}

bool level_checks_enabled() { return level_checks_flag().load(std::memory_order_relaxed); }

Inputs checked_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                      const at::Tensor& attention_weights, int64_t im2col_step) {
  const Sizes sizes = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                   attention_weights, im2col_step);
  return Inputs{sizes,
                value.contiguous(),
                spatial_shapes.contiguous(),
                level_start_index.contiguous(),
                sampling_locations.contiguous(),
                attention_weights.contiguous()};
}

at::Tensor Inputs::empty_output() const {
  return at::empty({sizes.batch, sizes.num_queries, sizes.num_heads * sizes.channels},
                   value.options());
}

at::Tensor checked_grad_output(const at::Tensor& grad_output, const Inputs& inputs) {
  const Sizes& sizes = inputs.sizes;
  const std::vector<int64_t> expected{sizes.batch, sizes.num_queries,
                                      sizes.num_heads * sizes.channels};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected),
              "msda_backward: grad_output must be [B, Q, M*D] = ", shape_of(expected),
              ", got ", shape_of(grad_output.sizes()));
  TORCH_CHECK(grad_output.scalar_type() == inputs.value.scalar_type(),
              "msda_backward: grad_output must have value's dtype (",
              inputs.value.scalar_type(), "), got ", grad_output.scalar_type());
  check_same_device(grad_output, "grad_output", inputs.value);
  return grad_output.contiguous();
}

Gradients Gradients::allocate(const Inputs& inputs) {
  const auto accum_type = at::toOpMathType(inputs.value.scalar_type());
  return Gradients{
      at::zeros(inputs.value.sizes(), inputs.value.options().dtype(accum_type)),
      at::empty(inputs.sampling_locations.sizes(), inputs.sampling_locations.options()),
      at::empty(inputs.attention_weights.sizes(), inputs.attention_weights.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> Gradients::finish(const Inputs& inputs) const {
  return {value_accum.to(inputs.value.scalar_type()), sampling_locations, attention_weights};
}

TORCH_LIBRARY(codetr, m) {
  m.def(
      "msda(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, int im2col_step=64) -> Tensor");
  m.def(
      "msda_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights, "
      "int im2col_step=64) -> (Tensor, Tensor, Tensor)");
  m.def("set_msda_checks(bool enabled) -> bool", &set_level_checks);
}

}  // namespace codetr::msda
