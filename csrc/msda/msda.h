// Multiscale deformable attention (MSDA): the torch-facing declarations shared by the schema
// registration (msda.cpp) and the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
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

// checked_inputs checks ranks, sizes, dtypes and devices of the op's inputs and names the
// offending argument in the error. The values of spatial_shapes and level_start_index (positive
// sizes, starts = running sums of H*W, sum = S) are checked where that is free: on CPU always.
// On CUDA reading them costs a device-to-host copy and sync per call, so by default the kernels
// instead read a level that does not fit inside S as zeros (never out of bounds: level_fits in
// sampling.h); with level checks on (env CODETR_MSDA_CHECK=1 when the library loads, or
// torch.ops.codetr.set_msda_checks(True)) CUDA runs the CPU check, with the same message.
// The op's inputs after check_inputs, made contiguous for the kernels.
struct Inputs {
  Sizes sizes;
  at::Tensor value;
  at::Tensor spatial_shapes;
  at::Tensor level_start_index;
  at::Tensor sampling_locations;
  at::Tensor attention_weights;

  // [B, Q, M*D] in value's dtype, uninitialised.
  at::Tensor empty_output() const;
};

// The checks of checked_inputs without the contiguous copies; returns the sizes.
Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights, int64_t im2col_step);

Inputs checked_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                      const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                      const at::Tensor& attention_weights, int64_t im2col_step);

// "[2, 3, 4]", for error messages.
std::string shape_of(at::IntArrayRef sizes);

// Whether CUDA inputs get the value checks of spatial_shapes / level_start_index (see above).
bool level_checks_enabled();

// Checks that grad_output is [B, Q, M*D] in value's dtype on value's device; returns it
// contiguous.
at::Tensor checked_grad_output(const at::Tensor& grad_output, const Inputs& inputs);

// The backward's results. The kernels accumulate grad_value in float32 (float64 for float64):
// half-precision accumulation would lose most of a pixel's many small contributions.
struct Gradients {
  at::Tensor value_accum;         // zeroed, value's shape, float32 or float64
  at::Tensor sampling_locations;  // uninitialised, written fully by the kernels
  at::Tensor attention_weights;   // uninitialised, written fully by the kernels

  static Gradients allocate(const Inputs& inputs);
  // (grad value in value's dtype, grad sampling_locations, grad attention_weights)
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const Inputs& inputs) const;
};

// torch.ops.codetr.msda_from_offsets (msda_from_offsets.cpp): msda's inputs before their
// preparation, checked (each argument named in the error) and made contiguous.
struct OffsetInputs {
  Sizes sizes;
  at::Tensor value;
  at::Tensor spatial_shapes;
  at::Tensor level_start_index;
  at::Tensor reference_points;  // [B, Q, L, 2] normalised (x, y); value's dtype or float32
  at::Tensor sampling_offsets;  // [B, Q, M, L, P, 2] pixels of each level, value's dtype
  at::Tensor attention_logits;  // [B, Q, M, L, P] before the softmax over L*P, value's dtype
};

OffsetInputs checked_offset_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                   const at::Tensor& level_start_index,
                                   const at::Tensor& reference_points,
                                   const at::Tensor& sampling_offsets,
                                   const at::Tensor& attention_logits);

// The op's definition, as ATen ops and msda: locations = reference + offsets / (W_l, H_l) and
// weights = softmax over each row's L*P logits, both in the reference points' dtype. CPU, and
// CUDA problems the fused kernel does not take.
at::Tensor msda_from_offsets_composite(const OffsetInputs& inputs);

}  // namespace codetr::msda
