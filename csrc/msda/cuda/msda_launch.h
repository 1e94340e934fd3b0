// CUDA launchers of multiscale deformable attention, free of any torch type so that the torch
// op (msda_cuda.cpp) and the TensorRT plugin (csrc/tensorrt/msda_plugin) share one copy of the
// kernels.
//
// Layouts (all dense, row-major, contiguous):
//   value               [B, S, M, D]        S = sum over levels of H_l * W_l
//   spatial_shapes      [L, 2]  int64       (H_l, W_l)
//   level_start_index   [L]     int64       offset of level l's first row in S
//   sampling_locations  [B, Q, M, L, P, 2]  normalised (x, y); pixel centres at (i + 0.5) / size
//   attention_weights   [B, Q, M, L, P]
//   output              [B, Q, M * D]
// Sampling is bilinear with align_corners=False semantics and zeros outside the map. A level
// whose rows would run past S contributes zeros instead of reading out of bounds.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace codetr::msda {

enum class DataType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

struct Problem {
  int64_t batch = 0;        // B
  int64_t num_values = 0;   // S
  int64_t num_heads = 0;    // M
  int64_t channels = 0;     // D, per head
  int64_t num_levels = 0;   // L
  int64_t num_queries = 0;  // Q
  int64_t num_points = 0;   // P
};

// value_type: dtype of value and output. location_type: dtype of sampling_locations and
// attention_weights; either value_type, or kFloat32 with a half-precision value_type.
// Returns cudaErrorInvalidValue for an unsupported dtype pair, else the launch's error.
cudaError_t launch_forward(const Problem& problem, DataType value_type, DataType location_type,
                           const void* value, const int64_t* spatial_shapes,
                           const int64_t* level_start_index, const void* sampling_locations,
                           const void* attention_weights, void* output, cudaStream_t stream);

// grad_value_accum is a float32 (float64 for kFloat64) buffer shaped like value, zeroed by
// the caller; the kernels accumulate into it with atomics. grad_sampling_locations and
// grad_attention_weights have location_type and are fully written.
cudaError_t launch_backward(const Problem& problem, DataType value_type, DataType location_type,
                            const void* value, const int64_t* spatial_shapes,
                            const int64_t* level_start_index, const void* sampling_locations,
                            const void* attention_weights, const void* grad_output,
                            void* grad_value_accum, void* grad_sampling_locations,
                            void* grad_attention_weights, cudaStream_t stream);

// codetr::msda_from_offsets (msda.h: msda_from_offsets_composite gives the definition) in the
// fast forward's kernel, which prepares each point's location and softmax weight as it samples:
//   reference_points   [B, Q, L, 2]        normalised (x, y), reference_type
//   sampling_offsets   [B, Q, M, L, P, 2]  pixels of each level, value_type
//   attention_logits   [B, Q, M, L, P]     value_type
// reference_type is value_type, or kFloat32 with a half-precision value_type. Returns
// cudaErrorNotSupported, launching nothing, for a problem that kernel does not take (the
// caller then prepares the locations and weights and calls launch_forward).
cudaError_t launch_forward_from_offsets(const Problem& problem, DataType value_type,
                                       DataType reference_type, const void* value,
                                       const int64_t* spatial_shapes,
                                       const int64_t* level_start_index,
                                       const void* reference_points, const void* sampling_offsets,
                                       const void* attention_logits, void* output,
                                       cudaStream_t stream);

}  // namespace codetr::msda
