// Multiscale deformable attention (MSDA): the torch-facing declarations shared by the schema
// registration (msda.cpp) and the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace codetr::msda {

// Sizes of one call, read off the validated inputs.
struct Sizes {
  int64_t batch;        // B
  int64_t num_values;   // S
  int64_t num_heads;    // M
  int64_t channels;     // D
  int64_t num_levels;   // L
  int64_t num_queries;  // Q
  int64_t num_points;   // P
};

// Checks ranks, sizes, dtypes and devices of the op's inputs and names the offending argument in
// the error. For CPU inputs it also checks spatial_shapes and level_start_index against S; on CUDA
// that check would cost a host sync per call, so the kernels instead skip any level that does not
// fit inside S (zeros, never an out-of-bounds read).
Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, int64_t im2col_step);

// Also checks that grad_output is [B, Q, M*D] in value's dtype on value's device.
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& value, const Sizes& sizes);

}  // namespace codetr::msda
