// torch.ops.codetr.msda on CUDA: checks the inputs and calls the torch-free launchers that the
// TensorRT plugin shares (msda_launch.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
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
  const Inputs in = checked_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                   attention_weights, im2col_step);
  const c10::cuda::CUDAGuard device_guard(value.device());
  auto output = in.empty_output();
  check_launch(launch_forward(to_problem(in.sizes), to_launch_type(value.scalar_type()),
                              to_launch_type(sampling_locations.scalar_type()),
                              in.value.const_data_ptr(),
                              in.spatial_shapes.const_data_ptr<int64_t>(),
                              in.level_start_index.const_data_ptr<int64_t>(),
                              in.sampling_locations.const_data_ptr(),
                              in.attention_weights.const_data_ptr(), output.mutable_data_ptr(),
                              c10::cuda::getCurrentCUDAStream()),
               "msda forward kernel");
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, int64_t im2col_step) {
  const Inputs in = checked_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                   attention_weights, im2col_step);
  const auto grad = checked_grad_output(grad_output, in);
  const c10::cuda::CUDAGuard device_guard(value.device());
  const Gradients grads = Gradients::allocate(in);
  check_launch(
      launch_backward(to_problem(in.sizes), to_launch_type(value.scalar_type()),
                      to_launch_type(sampling_locations.scalar_type()), in.value.const_data_ptr(),
                      in.spatial_shapes.const_data_ptr<int64_t>(),
                      in.level_start_index.const_data_ptr<int64_t>(),
                      in.sampling_locations.const_data_ptr(),
                      in.attention_weights.const_data_ptr(), grad.const_data_ptr(),
                      grads.value_accum.mutable_data_ptr(),
                      grads.sampling_locations.mutable_data_ptr(),
                      grads.attention_weights.mutable_data_ptr(),
                      c10::cuda::getCurrentCUDAStream()),
      "msda backward kernel");
  return grads.finish(in);
}

at::Tensor msda_from_offsets_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index,
                                  const at::Tensor& reference_points,
                                  const at::Tensor& sampling_offsets,
                                  const at::Tensor& attention_logits) {
  const OffsetInputs in = checked_offset_inputs(value, spatial_shapes, level_start_index,
                                                reference_points, sampling_offsets,
                                                attention_logits);
  const c10::cuda::CUDAGuard device_guard(value.device());
  auto output = at::empty({in.sizes.batch, in.sizes.num_queries,
                           in.sizes.num_heads * in.sizes.channels},
                          in.value.options());
  const cudaError_t status = launch_forward_from_offsets(
      to_problem(in.sizes), to_launch_type(value.scalar_type()),
      to_launch_type(reference_points.scalar_type()), in.value.const_data_ptr(),
      in.spatial_shapes.const_data_ptr<int64_t>(), in.level_start_index.const_data_ptr<int64_t>(),
      in.reference_points.const_data_ptr(), in.sampling_offsets.const_data_ptr(),
      in.attention_logits.const_data_ptr(), output.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream());
  if (status == cudaErrorNotSupported) return msda_from_offsets_composite(in);
  check_launch(status, "msda_from_offsets forward kernel");
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(codetr, CUDA, m) {
  m.impl("msda", &msda_forward_cuda);
  m.impl("msda_backward", &msda_backward_cuda);
  m.impl("msda_from_offsets", &msda_from_offsets_cuda);
}

}  // namespace codetr::msda
