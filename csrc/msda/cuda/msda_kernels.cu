// CUDA kernels of multiscale deformable attention and their launchers (msda_launch.h).
//
// Work split: one thread group of G lanes per (batch, query, head) row; each lane owns VEC
// consecutive channels per chunk (16-byte vector loads of value), and a row of D channels is
// covered by D / (G * VEC) chunks. G is a power of two, so a group never straddles a warp and
// the backward can reduce its per-point sums with warp shuffles.
//
// Backward: gradients of sampling locations and attention weights are written once per point
// by the group's first lane; the value gradient is scattered with atomics into a float32
// (float64) buffer, 16 bytes at a time where the GPU has vector atomics (sm_90+).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "../sampling.h"
#include "msda_launch.h"

namespace codetr::msda {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;

template <typename T>
using acc_type_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
__device__ __forceinline__ acc_type_t<T> to_acc(T x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else {
    return x;
  }
}

template <typename T>
__device__ __forceinline__ T from_acc(acc_type_t<T> x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

// VEC consecutive elements; a 16-byte group is moved with one vector instruction.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* __restrict__ src, acc_type_t<T> (&dst)[VEC]) {
  if constexpr (sizeof(T) * VEC == 16) {
    union {
      uint4 raw;
      T elements[VEC];
    } packed;
    packed.raw = __ldg(reinterpret_cast<const uint4*>(src));
#pragma unroll
    for (int i = 0; i < VEC; ++i) dst[i] = to_acc(packed.elements[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) dst[i] = to_acc(__ldg(src + i));
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* __restrict__ dst, const acc_type_t<T> (&src)[VEC]) {
  if constexpr (sizeof(T) * VEC == 16) {
    union {
      uint4 raw;
      T elements[VEC];
    } packed;
#pragma unroll
    for (int i = 0; i < VEC; ++i) packed.elements[i] = from_acc<T>(src[i]);
    *reinterpret_cast<uint4*>(dst) = packed.raw;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) dst[i] = from_acc<T>(src[i]);
  }
}

template <typename A, int VEC>
__device__ __forceinline__ void atomic_add_vec(A* dst, const A (&src)[VEC], A scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<A, float> && VEC % 4 == 0) {
#pragma unroll
    for (int i = 0; i < VEC; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(dst + i),
                make_float4(scale * src[i], scale * src[i + 1], scale * src[i + 2],
                            scale * src[i + 3]));
    }
    return;
  }
#endif
#pragma unroll
  for (int i = 0; i < VEC; ++i) atomicAdd(dst + i, scale * src[i]);
}

template <typename L>
__device__ __forceinline__ void load_location(const L* __restrict__ locations, int64_t index,
                                              acc_type_t<L>& x, acc_type_t<L>& y) {
  x = to_acc(__ldg(locations + 2 * index));
  y = to_acc(__ldg(locations + 2 * index + 1));
}

struct Layout {
  int64_t total_threads;  // rows * group
  int group;              // G: lanes per row, a power of two <= 32
  int chunks;             // D / (G * VEC)
};

template <typename T, typename L, int VEC>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(Problem pb, Layout layout, const T* __restrict__ value,
                   const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                   const L* __restrict__ locations, const L* __restrict__ weights,
                   T* __restrict__ output) {
  using acc_t = acc_type_t<T>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (thread >= layout.total_threads) return;
  const int lane = static_cast<int>(thread % layout.group);
  const int64_t row = thread / layout.group;  // (b * Q + q) * M + m
  const int64_t head = row % pb.num_heads;
  const int64_t batch = row / (pb.num_queries * pb.num_heads);
  const int64_t pixel_stride = pb.num_heads * pb.channels;
  const T* value_bm = value + (batch * pb.num_values * pb.num_heads + head) * pb.channels;
  const int64_t first_point = row * pb.num_levels * pb.num_points;

  for (int chunk = 0; chunk < layout.chunks; ++chunk) {
    const int64_t channel = (static_cast<int64_t>(chunk) * layout.group + lane) * VEC;
    acc_t acc[VEC] = {};
    for (int64_t level = 0; level < pb.num_levels; ++level) {
      const int64_t height = __ldg(shapes + 2 * level);
      const int64_t width = __ldg(shapes + 2 * level + 1);
      const int64_t start = __ldg(starts + level);
      if (!level_fits(start, height, width, pb.num_values)) continue;
      const T* level_value = value_bm + start * pixel_stride + channel;
      const int64_t level_point = first_point + level * pb.num_points;
#pragma unroll 4
      for (int64_t point = 0; point < pb.num_points; ++point) {
        acc_t x, y;
        load_location(locations, level_point + point, x, y);
        Corners<acc_t> corners;
        if (!locate_corners<acc_t>(x, y, height, width, corners)) continue;
        const acc_t attention = to_acc(__ldg(weights + level_point + point));
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          if (corners.pixel[corner] < 0) continue;
          acc_t sample[VEC];
          load_vec<T, VEC>(level_value + corners.pixel[corner] * pixel_stride, sample);
          const acc_t scale = attention * corners.weight[corner];
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[i] += scale * sample[i];
        }
      }
    }
    store_vec<T, VEC>(output + row * pb.channels + channel, acc);
  }
}

template <typename A>
__device__ __forceinline__ A group_sum(A x, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <typename T, typename L, int VEC>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(Problem pb, Layout layout, const T* __restrict__ value,
                    const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                    const L* __restrict__ locations, const L* __restrict__ weights,
                    const T* __restrict__ grad_output, acc_type_t<T>* __restrict__ grad_value,
                    L* __restrict__ grad_locations, L* __restrict__ grad_weights) {
  using acc_t = acc_type_t<T>;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Lanes past the end still take part in the shuffles; whole groups are active or not.
  const bool active = thread < layout.total_threads;
  const int lane = static_cast<int>(thread % layout.group);
  const int64_t row = active ? thread / layout.group : 0;
  const int64_t head = row % pb.num_heads;
  const int64_t batch = row / (pb.num_queries * pb.num_heads);
  const int64_t pixel_stride = pb.num_heads * pb.channels;
  const int64_t value_offset = (batch * pb.num_values * pb.num_heads + head) * pb.channels;
  const int64_t first_point = row * pb.num_levels * pb.num_points;

  for (int64_t level = 0; level < pb.num_levels; ++level) {
    const int64_t height = __ldg(shapes + 2 * level);
    const int64_t width = __ldg(shapes + 2 * level + 1);
    const int64_t start = __ldg(starts + level);
    const bool fits = level_fits(start, height, width, pb.num_values);
    const int64_t level_point = first_point + level * pb.num_points;
    for (int64_t point = 0; point < pb.num_points; ++point) {
      const int64_t index = level_point + point;
      acc_t x = 0, y = 0, attention = 0;
      Corners<acc_t> corners;
      bool touches = false;
      if (active && fits) {
        load_location(locations, index, x, y);
        attention = to_acc(__ldg(weights + index));
        touches = locate_corners<acc_t>(x, y, height, width, corners);
      }
      acc_t dot[4] = {0, 0, 0, 0};
      if (touches) {
        for (int chunk = 0; chunk < layout.chunks; ++chunk) {
          const int64_t channel = (static_cast<int64_t>(chunk) * layout.group + lane) * VEC;
          acc_t grad[VEC];
          load_vec<T, VEC>(grad_output + row * pb.channels + channel, grad);
          const int64_t level_offset = value_offset + start * pixel_stride + channel;
#pragma unroll
          for (int corner = 0; corner < 4; ++corner) {
            if (corners.pixel[corner] < 0) continue;
            const int64_t offset = level_offset + corners.pixel[corner] * pixel_stride;
            acc_t sample[VEC];
            load_vec<T, VEC>(value + offset, sample);
#pragma unroll
            for (int i = 0; i < VEC; ++i) dot[corner] += grad[i] * sample[i];
            atomic_add_vec<acc_t, VEC>(grad_value + offset, grad,
                                       attention * corners.weight[corner]);
          }
        }
      }
      SampleGrads<acc_t> grads{0, 0, 0};
      if (touches) grads = sample_grads(corners, dot);
      grads.sample = group_sum(grads.sample, layout.group);
      grads.d_px = group_sum(grads.d_px, layout.group);
      grads.d_py = group_sum(grads.d_py, layout.group);
      if (active && lane == 0) {
        grad_weights[index] = from_acc<L>(grads.sample);
        grad_locations[2 * index] = from_acc<L>(attention * grads.d_px * width);
        grad_locations[2 * index + 1] = from_acc<L>(attention * grads.d_py * height);
      }
    }
  }
}

// Picks VEC (16-byte vectors when D and the pointers allow) and the group size G.
template <typename T>
bool use_vectors(const Problem& pb, std::initializer_list<const void*> pointers) {
  constexpr int vec = 16 / sizeof(T);
  if (pb.channels % vec != 0) return false;
  for (const void* pointer : pointers) {
    if (pointer != nullptr && reinterpret_cast<uintptr_t>(pointer) % 16 != 0) return false;
  }
  return true;
}

Layout make_layout(const Problem& pb, int vec) {
  const int64_t vectors_per_row = pb.channels / vec;
  int group = 1;
  while (group < kWarpSize && vectors_per_row % (group * 2) == 0) group *= 2;
  const int64_t rows = pb.batch * pb.num_queries * pb.num_heads;
  return Layout{rows * group, group, static_cast<int>(vectors_per_row / group)};
}

unsigned int blocks_for(const Layout& layout) {
  return static_cast<unsigned int>((layout.total_threads + kThreadsPerBlock - 1) /
                                   kThreadsPerBlock);
}

template <typename T, typename L>
cudaError_t forward_typed(const Problem& pb, const void* value, const int64_t* shapes,
                          const int64_t* starts, const void* locations, const void* weights,
                          void* output, cudaStream_t stream) {
  const auto* v = static_cast<const T*>(value);
  const auto* loc = static_cast<const L*>(locations);
  const auto* w = static_cast<const L*>(weights);
  auto* out = static_cast<T*>(output);
  constexpr int kVec = 16 / sizeof(T);
  if (use_vectors<T>(pb, {value, output})) {
    const Layout layout = make_layout(pb, kVec);
    forward_kernel<T, L, kVec><<<blocks_for(layout), kThreadsPerBlock, 0, stream>>>(
        pb, layout, v, shapes, starts, loc, w, out);
  } else {
    const Layout layout = make_layout(pb, 1);
    forward_kernel<T, L, 1><<<blocks_for(layout), kThreadsPerBlock, 0, stream>>>(
        pb, layout, v, shapes, starts, loc, w, out);
  }
  return cudaGetLastError();
}

template <typename T, typename L>
cudaError_t backward_typed(const Problem& pb, const void* value, const int64_t* shapes,
                           const int64_t* starts, const void* locations, const void* weights,
                           const void* grad_output, void* grad_value, void* grad_locations,
                           void* grad_weights, cudaStream_t stream) {
  using acc_t = acc_type_t<T>;
  const auto* v = static_cast<const T*>(value);
  const auto* loc = static_cast<const L*>(locations);
  const auto* w = static_cast<const L*>(weights);
  const auto* go = static_cast<const T*>(grad_output);
  auto* gv = static_cast<acc_t*>(grad_value);
  auto* gl = static_cast<L*>(grad_locations);
  auto* gw = static_cast<L*>(grad_weights);
  constexpr int kVec = 16 / sizeof(T);
  if (use_vectors<T>(pb, {value, grad_output, grad_value})) {
    const Layout layout = make_layout(pb, kVec);
    backward_kernel<T, L, kVec><<<blocks_for(layout), kThreadsPerBlock, 0, stream>>>(
        pb, layout, v, shapes, starts, loc, w, go, gv, gl, gw);
  } else {
    const Layout layout = make_layout(pb, 1);
    backward_kernel<T, L, 1><<<blocks_for(layout), kThreadsPerBlock, 0, stream>>>(
        pb, layout, v, shapes, starts, loc, w, go, gv, gl, gw);
  }
  return cudaGetLastError();
}

// Calls body(T{}, L{}) for a supported (value, location) dtype pair.
template <typename Body>
cudaError_t dispatch_types(DataType value_type, DataType location_type, Body&& body) {
  const bool same = value_type == location_type;
  const bool float_locations = location_type == DataType::kFloat32;
  switch (value_type) {
    case DataType::kFloat32:
      if (same) return body(float{}, float{});
      break;
    case DataType::kFloat64:
      if (same) return body(double{}, double{});
      break;
    case DataType::kFloat16:
      if (same) return body(__half{}, __half{});
      if (float_locations) return body(__half{}, float{});
      break;
    case DataType::kBFloat16:
      if (same) return body(__nv_bfloat16{}, __nv_bfloat16{});
      if (float_locations) return body(__nv_bfloat16{}, float{});
      break;
  }
  return cudaErrorInvalidValue;
}

bool has_no_rows(const Problem& pb) {
  return pb.batch == 0 || pb.num_queries == 0 || pb.num_heads == 0;
}

}  // namespace

cudaError_t launch_forward(const Problem& problem, DataType value_type, DataType location_type,
                           const void* value, const int64_t* spatial_shapes,
                           const int64_t* level_start_index, const void* sampling_locations,
                           const void* attention_weights, void* output, cudaStream_t stream) {
  if (has_no_rows(problem)) return cudaSuccess;
  return dispatch_types(value_type, location_type, [&](auto value_tag, auto location_tag) {
    return forward_typed<decltype(value_tag), decltype(location_tag)>(
        problem, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        output, stream);
  });
}

cudaError_t launch_backward(const Problem& problem, DataType value_type, DataType location_type,
                            const void* value, const int64_t* spatial_shapes,
                            const int64_t* level_start_index, const void* sampling_locations,
                            const void* attention_weights, const void* grad_output,
                            void* grad_value_accum, void* grad_sampling_locations,
                            void* grad_attention_weights, cudaStream_t stream) {
  if (has_no_rows(problem)) return cudaSuccess;
  return dispatch_types(value_type, location_type, [&](auto value_tag, auto location_tag) {
    return backward_typed<decltype(value_tag), decltype(location_tag)>(
        problem, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        grad_output, grad_value_accum, grad_sampling_locations, grad_attention_weights, stream);
  });
}

}  // namespace codetr::msda
