// torch.ops.codetr.msda on CUDA: checks the inputs and calls the torch-free launchers that the
// TensorRT plugin shares (msda_launch.h).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../msda.h"
#include "msda_launch.h"

namespace codetr::msda {
namespace {

DataType to_launch_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return DataType::kFloat32;
    case at::kHalf:
      return DataType::kFloat16;
    case at::kBFloat16:
      return DataType::kBFloat16;
    case at::kDouble:
      return DataType::kFloat64;
    default:
      TORCH_CHECK(false, "msda: unsupported dtype ", type);
  }
}

Problem to_problem(const Sizes& sz) {
  return Problem{sz.batch,      sz.num_values,  sz.num_heads, sz.channels,
                 sz.num_levels, sz.num_queries, sz.num_points};
}

void check_launch(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed to launch: ", cudaGetErrorString(status));
}

at::Tensor msda_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                             const at::Tensor& level_start_index,
                             const at::Tensor& sampling_locations,
                             const at::Tensor& attention_weights, int64_t im2col_step) {
  const Sizes sz = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, im2col_step);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = attention_weights.contiguous();
  auto output = at::empty({sz.batch, sz.num_queries, sz.num_heads * sz.channels}, value.options());
  check_launch(launch_forward(to_problem(sz), to_launch_type(value.scalar_type()),
                              to_launch_type(sampling_locations.scalar_type()),
                              value_c.const_data_ptr(), shapes_c.const_data_ptr<int64_t>(),
                              starts_c.const_data_ptr<int64_t>(), locations_c.const_data_ptr(),
                              weights_c.const_data_ptr(), output.mutable_data_ptr(),
                              c10::cuda::getCurrentCUDAStream()),
               "msda forward kernel");
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, int64_t im2col_step) {
  const Sizes sz = check_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, im2col_step);
  check_grad_output(grad_output, value, sz);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const auto grad_c = grad_output.contiguous();
  const auto value_c = value.contiguous();
  const auto shapes_c = spatial_shapes.contiguous();
  const auto starts_c = level_start_index.contiguous();
  const auto locations_c = sampling_locations.contiguous();
  const auto weights_c = attention_weights.contiguous();
  // Half-precision atomics would lose most of the sum: accumulate in float32 (float64), then cast.
  const auto accum_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto grad_value = at::zeros(value.sizes(), value.options().dtype(accum_type));
  auto grad_locations = at::empty(sampling_locations.sizes(), sampling_locations.options());
  auto grad_weights = at::empty(attention_weights.sizes(), attention_weights.options());
  check_launch(
      launch_backward(to_problem(sz), to_launch_type(value.scalar_type()),
                      to_launch_type(sampling_locations.scalar_type()), value_c.const_data_ptr(),
                      shapes_c.const_data_ptr<int64_t>(), starts_c.const_data_ptr<int64_t>(),
                      locations_c.const_data_ptr(), weights_c.const_data_ptr(),
                      grad_c.const_data_ptr(), grad_value.mutable_data_ptr(),
                      grad_locations.mutable_data_ptr(), grad_weights.mutable_data_ptr(),
                      c10::cuda::getCurrentCUDAStream()),
      "msda backward kernel");
  return {grad_value.to(value.scalar_type()), grad_locations, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(codetr, CUDA, m) {
  m.impl("msda", &msda_forward_cuda);
  m.impl("msda_backward", &msda_backward_cuda);
}

}  // namespace codetr::msda
