// CUDA kernels of multiscale deformable attention and their launchers (msda_launch.h).
//
// Work split: each (batch, query, head) row gets G x K lanes. The G channel lanes each own VEC
// consecutive channels per chunk (16-byte vectors), and D / (G * VEC) chunks cover the row.
// The K split lanes share out the row's L * P points; K > 1 only when there are too few rows to
// fill the GPU (the decoder's 900 queries). G is a power of two up to 32, so a row's channel
// lanes never straddle a warp and reduce their per-point sums with warp shuffles; in the
// forward, whose split lanes also sum with shuffles, K is a power of two with G * K <= 32.
//
// The forward of encoder-sized problems at P = 4 takes forward_fast_kernel instead (below).
//
// Backward: gradients of sampling locations and attention weights are written once per point
// by its first channel lane; the value gradient is scattered with vector reductions into a
// float32 (float64) buffer, each lane owning 16 bytes of it, so half-precision values lose
// nothing to half-precision atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../sampling.h"
#include "msda_launch.h"

namespace codetr::msda {
namespace {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
// The backward is bound by L2 reductions and latency: capping registers for three resident
// blocks per SM measured best on the H100 among 1-4.
constexpr int kBackwardBlocksPerSM = 3;

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
__device__ __forceinline__ void atomic_add_scalars(A* dst, const A (&src)[VEC], A scale) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) atomicAdd(dst + i, scale * src[i]);
}

// dst[i] += scale * src[i] with fire-and-forget reductions, 16 or 8 bytes at a time on sm_90+.
template <typename A, int VEC>
__device__ __forceinline__ void atomic_add_vec(A* dst, const A (&src)[VEC], A scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<A, float> && VEC % 4 == 0) {
#pragma unroll
    for (int i = 0; i < VEC; i += 4) {
      asm volatile("red.relaxed.gpu.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst + i),
                   "f"(scale * src[i]), "f"(scale * src[i + 1]), "f"(scale * src[i + 2]),
                   "f"(scale * src[i + 3])
                   : "memory");
    }
  } else if constexpr (std::is_same_v<A, float> && VEC % 2 == 0) {
#pragma unroll
    for (int i = 0; i < VEC; i += 2) {
      asm volatile("red.relaxed.gpu.global.add.v2.f32 [%0], {%1, %2};" ::"l"(dst + i),
                   "f"(scale * src[i]), "f"(scale * src[i + 1])
                   : "memory");
    }
  } else {
    atomic_add_scalars<A, VEC>(dst, src, scale);
  }
#else
  atomic_add_scalars<A, VEC>(dst, src, scale);
#endif
}

template <typename L>
__device__ __forceinline__ void load_location(const L* __restrict__ locations, int64_t index,
                                              acc_type_t<L>& x, acc_type_t<L>& y) {
  x = to_acc(__ldg(locations + 2 * index));
  y = to_acc(__ldg(locations + 2 * index + 1));
}

struct Layout {
  int64_t total_threads;  // rows * group * splits
  int group;              // G: channel lanes per row, a power of two
  int splits;             // K: lanes that share out a row's points
  int chunks;             // D / (G * VEC)
};

// Rows are (batch, query, head) triples. Threads walk them head-major, (m, b, q), so that a
// block's rows share one head: the small levels of that head's map then stay in L1 (measured
// on the H100: encoder forward 0.88 -> 0.74 ms, forward+backward 4.6 -> 3.2 ms in float32).
// `index` is the row's position in (b, q, m) order, the order of the output and locations.
struct Row {
  int64_t index;
  int64_t batch;
  int64_t head;
};

__device__ __forceinline__ Row locate_row(const Problem& pb, int64_t row) {
  const int64_t batch_queries = pb.batch * pb.num_queries;
  const int64_t head = row / batch_queries;
  const int64_t batch_query = row - head * batch_queries;
  return Row{batch_query * pb.num_heads + head, batch_query / pb.num_queries, head};
}

template <typename A>
__device__ __forceinline__ A lane_sum(A x, int first_offset, int last_offset) {
  for (int offset = first_offset; offset >= last_offset; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// What a thread works on: a row, and its place among the row's G x K lanes.
struct Lane {
  bool active;           // false past the end: such lanes only take part in the shuffles
  int channel_lane;      // 0 .. G-1
  int split;             // 0 .. K-1
  Row row;
  int64_t value_offset;  // element of value at (row's batch, pixel 0, row's head, channel 0)
  int64_t first_point;   // index of the row's first point in locations and weights
};

__device__ __forceinline__ Lane locate_lane(const Problem& pb, const Layout& layout) {
  const int lanes = layout.group * layout.splits;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  Lane lane;
  // Whole rows are active or not, so a shuffle group is never half past the end.
  lane.active = thread < layout.total_threads;
  const int lane_in_row = static_cast<int>(thread % lanes);
  lane.channel_lane = lane_in_row % layout.group;
  lane.split = lane_in_row / layout.group;
  lane.row = locate_row(pb, lane.active ? thread / lanes : 0);
  lane.value_offset = (lane.row.batch * pb.num_values * pb.num_heads + lane.row.head) * pb.channels;
  lane.first_point = lane.row.index * pb.num_levels * pb.num_points;
  return lane;
}

// One sampling point of a row: its level's size and first pixel, its attention weight and the
// corners it reads.
template <typename A>
struct Point {
  int64_t height;
  int64_t width;
  int64_t start;
  A attention;
  Corners<A> corners;
};

// Reads point `index` (in level-major order within its row) and returns whether it touches its
// map; points of a level that does not fit inside value never do.
template <typename A, typename L>
__device__ __forceinline__ bool read_point(const Problem& pb, const int64_t* __restrict__ shapes,
                                           const int64_t* __restrict__ starts,
                                           const L* __restrict__ locations,
                                           const L* __restrict__ weights, int64_t point,
                                           int64_t index, Point<A>& out) {
  const int64_t level = point / pb.num_points;
  out.height = __ldg(shapes + 2 * level);
  out.width = __ldg(shapes + 2 * level + 1);
  out.start = __ldg(starts + level);
  if (!level_fits(out.start, out.height, out.width, pb.num_values)) return false;
  A x, y;
  load_location(locations, index, x, y);
  out.attention = to_acc(__ldg(weights + index));
  return locate_corners<A>(x, y, out.height, out.width, out.corners);
}

template <typename T, typename L, int VEC>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(Problem pb, Layout layout, const T* __restrict__ value,
                   const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                   const L* __restrict__ locations, const L* __restrict__ weights,
                   T* __restrict__ output) {
  using acc_t = acc_type_t<T>;
  const Lane lane = locate_lane(pb, layout);
  const int64_t pixel_stride = pb.num_heads * pb.channels;
  const int64_t points_per_row = pb.num_levels * pb.num_points;

  for (int chunk = 0; chunk < layout.chunks; ++chunk) {
    const int64_t channel = (static_cast<int64_t>(chunk) * layout.group + lane.channel_lane) * VEC;
    acc_t acc[VEC] = {};
    if (lane.active) {
#pragma unroll 4
      for (int64_t point = lane.split; point < points_per_row; point += layout.splits) {
        Point<acc_t> p;
        if (!read_point(pb, shapes, starts, locations, weights, point, lane.first_point + point, p)) {
          continue;
        }
        const T* level_value = value + lane.value_offset + p.start * pixel_stride + channel;
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          if (p.corners.pixel[corner] < 0) continue;
          acc_t sample[VEC];
          load_vec<T, VEC>(level_value + p.corners.pixel[corner] * pixel_stride, sample);
          const acc_t scale = p.attention * p.corners.weight[corner];
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[i] += scale * sample[i];
        }
      }
    }
    if (layout.splits > 1) {
      const int lanes = layout.group * layout.splits;
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = lane_sum(acc[i], lanes / 2, layout.group);
    }
    if (lane.active && lane.split == 0) {
      store_vec<T, VEC>(output + lane.row.index * pb.channels + channel, acc);
    }
  }
}

// ---- The fast forward ---------------------------------------------------------------------
// For the encoder's many rows at P = 4 (fast_forward_fits gives the exact conditions); the
// general forward_kernel above keeps every other shape. Threads map to rows head-major with
// G = D / VEC lanes per row, as in forward_kernel, so a warp's lanes gather neighbouring
// queries of one head, 16 bytes per lane and corner. What it saves per sampling point:
// - the level loop is outer and its 4 points are unrolled: a level's size and start are read
//   once per level, with no per-point division (forward_kernel divides by P per point);
// - when G is a multiple of 4, the 4 lanes of each aligned group of a row work out one point
//   each (its location, corner offsets and weights) and share the results with 5 shuffles,
//   instead of every lane repeating the arithmetic of all 4 points;
// - offsets inside one batch element are 32-bit (S * M * D bytes < 2^31), floor() splits into
//   integer and fraction without conversion instructions (split_floor), and corners outside
//   the map are predicated loads of zero with weight zero: no branches.
constexpr int kFastPoints = 4;
// split_floor is exact for -1 < p < 2^22; a level wider or taller than that cannot fit in S.
constexpr int64_t kFastMaxValues = int64_t(1) << 22;

// floor(p) as an int, and p - floor(p), for -1 < p < 2^22: adding 1.5 * 2^23 rounded down puts
// floor(p) into the low mantissa bits (the float spacing in [2^23, 2^24) is 1), so no
// float-to-int conversion (a quarter-rate instruction) is needed. Same result as std::floor.
__device__ __forceinline__ int split_floor(float p, float& fraction) {
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  const float shifted = __fadd_rd(p, kShift);
  fraction = p - (shifted - kShift);
  return __float_as_int(shifted) - __float_as_int(kShift);
}

// N consecutive elements as float, in one or more loads of up to 16 bytes; src is aligned to
// the load size.
template <typename T, int N>
__device__ __forceinline__ void load_aligned(const T* __restrict__ src, float (&dst)[N]) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  using Piece = std::conditional_t<
      kBytes % 16 == 0, uint4,
      std::conditional_t<kBytes % 8 == 0, uint2,
                         std::conditional_t<kBytes % 4 == 0, unsigned int, unsigned short>>>;
  static_assert(sizeof(Piece) % sizeof(T) == 0, "whole elements per load");
  constexpr int kPer = static_cast<int>(sizeof(Piece) / sizeof(T));
#pragma unroll
  for (int piece = 0; piece < N / kPer; ++piece) {
    union {
      Piece raw;
      T elements[kPer];
    } packed;
    packed.raw = __ldg(reinterpret_cast<const Piece*>(src) + piece);
#pragma unroll
    for (int i = 0; i < kPer; ++i) dst[piece * kPer + i] = to_acc(packed.elements[i]);
  }
}

// 16 bytes at src as float when `valid`, zeros otherwise (a predicated load, no branch).
template <typename T, int VEC>
__device__ __forceinline__ void load_vec_or_zero(const T* __restrict__ src, bool valid,
                                                 float (&dst)[VEC]) {
  static_assert(sizeof(T) * VEC == 16, "one 16-byte vector");
  union {
    uint4 raw;
    T elements[VEC];
  } packed;
  packed.raw = make_uint4(0, 0, 0, 0);
  if (valid) packed.raw = __ldg(reinterpret_cast<const uint4*>(src));
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    // A bfloat16 is the high half of its float: one shift or mask per element, not an
    // extract followed by a shift.
    const unsigned int words[4] = {packed.raw.x, packed.raw.y, packed.raw.z, packed.raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      dst[2 * i] = __uint_as_float(words[i] << 16);
      dst[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) dst[i] = to_acc(packed.elements[i]);
  }
}

// One sampling point as every lane of its row needs it.
struct FastPoint {
  // pixel * 16 + corner mask: pixel = level start + top * W + left (the top-left corner, may be
  // -W - 1 .. -1 when that corner is outside), mask bit i = corner i (Corners order) exists.
  // 0 (no corner) for a point outside its map.
  int packed;
  float scale[4];  // attention weight times bilinear weight; 0 for a corner that is not read
};

// The arithmetic of locate_corners (sampling.h) in 32 bits, from the point's pixel coordinates
// px = x * W - 0.5, py = y * H - 0.5 (the sources work them out).
__device__ __forceinline__ FastPoint locate_fast_point(float px, float py, float attention,
                                                       int height, int width, int start) {
  const float height_f = static_cast<float>(height);
  const float width_f = static_cast<float>(width);
  // Written so that NaN fails every comparison.
  const bool inside = px > -1.0f && py > -1.0f && px < width_f && py < height_f;
  float frac_x, frac_y;
  const int left = split_floor(px, frac_x);
  const int top = split_floor(py, frac_y);
  const bool has_left = left >= 0;
  const bool has_right = left < width - 1;
  const bool has_top = top >= 0;
  const bool has_bottom = top < height - 1;
  const bool corner[4] = {inside && has_top && has_left, inside && has_top && has_right,
                          inside && has_bottom && has_left, inside && has_bottom && has_right};
  // A corner that is not read gets weight 0, not attention * 0: a NaN or infinite attention
  // weight must not leak through it (as in forward_kernel).
  const float top_weight = attention * (1.0f - frac_y);
  const float bottom_weight = attention * frac_y;
  const float weight[4] = {top_weight * (1.0f - frac_x), top_weight * frac_x,
                           bottom_weight * (1.0f - frac_x), bottom_weight * frac_x};
  FastPoint point;
  int mask = 0;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    mask |= corner[c] ? 1 << c : 0;
    point.scale[c] = corner[c] ? weight[c] : 0.0f;
  }
  point.packed = inside ? (start + top * width + left) * 16 + mask : 0;
  return point;
}

// acc += the point's bilinear sample of the lane's VEC channels, times its attention weight.
// row_value points at (batch, pixel 0, head, the lane's first channel).
template <typename T, int VEC>
__device__ __forceinline__ void accumulate_fast_point(const T* __restrict__ row_value,
                                                      int pixel_stride, int row_stride,
                                                      const FastPoint& point, float (&acc)[VEC]) {
  const int mask = point.packed & 15;
  // Byte offsets from one 64-bit pointer: cheaper addresses than element indices.
  // An arithmetic shift: floor(packed / 16) = pixel, negative ones included.
  const int pixel_bytes = pixel_stride * static_cast<int>(sizeof(T));
  const char* top_left =
      reinterpret_cast<const char*>(row_value) + (point.packed >> 4) * pixel_bytes;
  const char* bottom_left = top_left + row_stride * static_cast<int>(sizeof(T));
  const char* corners[4] = {top_left, top_left + pixel_bytes, bottom_left,
                            bottom_left + pixel_bytes};
  float sample[4][VEC];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    load_vec_or_zero<T, VEC>(reinterpret_cast<const T*>(corners[c]), mask & (1 << c), sample[c]);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = fmaf(point.scale[c], sample[c][i], acc[i]);
  }
}

// Where forward_fast_kernel's points come from. A source is moved to a row once
// (start_row, called by every lane: it may shuffle within the row's aligned groups of 4 lanes),
// then gives N consecutive points of a level, starting at point `first`, as pixel coordinates
// (px, py) = (x * W - 0.5, y * H - 0.5) and attention weight: N = 1 (each lane of a group its
// own point) or N = P.
//
// GivenPoints: codetr::msda's sampling_locations and attention_weights.
template <typename L>
struct GivenPoints {
  const L* __restrict__ locations;  // [B, Q, M, L, P, 2]
  const L* __restrict__ weights;    // [B, Q, M, L, P]

  __device__ __forceinline__ void start_row(int64_t index, unsigned /*batch_query*/,
                                            int num_levels, int /*own*/, bool /*shared*/) {
    locations += index * num_levels * (2 * kFastPoints);
    weights += index * num_levels * kFastPoints;
  }

  template <int N>
  __device__ __forceinline__ void load(int level, int first, float width, float height,
                                       float (&pxy)[2 * N], float (&attention)[N]) const {
    load_aligned<L, 2 * N>(locations + (level * kFastPoints + first) * 2, pxy);
    load_aligned<L, N>(weights + level * kFastPoints + first, attention);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      pxy[2 * i] = pxy[2 * i] * width - 0.5f;
      pxy[2 * i + 1] = pxy[2 * i + 1] * height - 0.5f;
    }
  }
};

// OffsetPoints: codetr::msda_from_offsets' inputs; the locations and the softmax are worked out
// here as msda_from_offsets_composite (msda_from_offsets.cpp) defines them, in float32 whatever
// the reference points' dtype. The pixel coordinate (reference x + offset x / W) * W - 0.5 is
// computed as reference x * W + offset x - 0.5, without the division and its rounding; weight =
// exp(logit - row max) * (1 / row sum of exp), with the fast exponential (__expf: ~2 ulp plus
// 2 ulp per unit of |logit - max|, far below a half-precision output's rounding). float32
// results are within about 1e-5 relative of the composition (9e-6 measured at encoder shapes).
// Per call of the R50 package's six encoder layers (H200, BENCHMARKS.md): divisions and expf
// 1.64 ms, reciprocals and __expf 1.58 ms, this form 1.55 ms; msda's kernel on prepared inputs
// 1.44 ms plus 0.35 ms of Inductor's preparation kernels.
template <typename T, typename R>
struct OffsetPoints {
  const R* __restrict__ reference;  // [B, Q, L, 2]
  const T* __restrict__ offsets;    // [B, Q, M, L, P, 2]
  const T* __restrict__ logits;     // [B, Q, M, L, P]
  float max_logit;
  float inverse_sum;  // 1 / sum over the row of exp(logit - max_logit)

  __device__ __forceinline__ void start_row(int64_t index, unsigned batch_query, int num_levels,
                                            int own, bool shared) {
    reference += static_cast<int64_t>(batch_query) * num_levels * 2;
    offsets += index * num_levels * (2 * kFastPoints);
    logits += index * num_levels * kFastPoints;
    // Shared: each lane of a group takes the row's points `own` of every level, and the group
    // combines the four parts; otherwise one lane takes all L * P logits.
    const int first = shared ? own : 0;
    const int step = shared ? kFastPoints : 1;
    const int count = num_levels * kFastPoints;
    max_logit = -INFINITY;
    for (int point = first; point < count; point += step) {
      max_logit = fmaxf(max_logit, to_acc(__ldg(logits + point)));
    }
    if (shared) max_logit = fmaxf(max_logit, __shfl_xor_sync(0xffffffffu, max_logit, 1));
    if (shared) max_logit = fmaxf(max_logit, __shfl_xor_sync(0xffffffffu, max_logit, 2));
    float exp_sum = 0.0f;
    for (int point = first; point < count; point += step) {
      exp_sum += __expf(to_acc(__ldg(logits + point)) - max_logit);
    }
    if (shared) exp_sum += __shfl_xor_sync(0xffffffffu, exp_sum, 1);
    if (shared) exp_sum += __shfl_xor_sync(0xffffffffu, exp_sum, 2);
    inverse_sum = 1.0f / exp_sum;
  }

  template <int N>
  __device__ __forceinline__ void load(int level, int first, float width, float height,
                                       float (&pxy)[2 * N], float (&attention)[N]) const {
    float origin[2];
    float offset[2 * N];
    float logit[N];
    load_aligned<R, 2>(reference + 2 * level, origin);
    load_aligned<T, 2 * N>(offsets + (level * kFastPoints + first) * 2, offset);
    load_aligned<T, N>(logits + level * kFastPoints + first, logit);
    const float origin_x = fmaf(origin[0], width, -0.5f);
    const float origin_y = fmaf(origin[1], height, -0.5f);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      pxy[2 * i] = origin_x + offset[2 * i];
      pxy[2 * i + 1] = origin_y + offset[2 * i + 1];
      attention[i] = __expf(logit[i] - max_logit) * inverse_sum;
    }
  }
};

template <typename T, typename Source, bool kShared>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_fast_kernel(Problem pb, int lanes, int total_threads, const T* __restrict__ value,
                        const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                        Source source, T* __restrict__ output) {
  constexpr int VEC = 16 / sizeof(T);
  constexpr int P = kFastPoints;
  // fast_forward_fits bounds every index below 2^31: 32-bit unsigned arithmetic is exact.
  const unsigned thread = blockIdx.x * blockDim.x + threadIdx.x;
  // Lanes past the end work on row 0 without storing: the shuffles need every lane. Rows are
  // whole groups of 4 lanes, so no group mixes the two.
  const bool active = thread < static_cast<unsigned>(total_threads);
  const unsigned row = active ? thread / lanes : 0;
  const int lane = active ? static_cast<int>(thread - row * lanes) : 0;
  // Head-major rows, as locate_row.
  const unsigned batch_queries = static_cast<unsigned>(pb.batch * pb.num_queries);
  const unsigned head = row / batch_queries;
  const unsigned batch_query = row - head * batch_queries;
  const unsigned batch = batch_query / static_cast<unsigned>(pb.num_queries);
  const int64_t index = static_cast<int64_t>(batch_query) * pb.num_heads + head;

  const int pixel_stride = static_cast<int>(pb.num_heads * pb.channels);
  const T* row_value =
      value + (batch * pb.num_values * pb.num_heads + head) * pb.channels + lane * VEC;
  const int own = lane % P;
  source.start_row(index, batch_query, static_cast<int>(pb.num_levels), own, kShared);

  float acc[VEC] = {};
  for (int level = 0; level < static_cast<int>(pb.num_levels); ++level) {
    const int64_t level_height = __ldg(shapes + 2 * level);
    const int64_t level_width = __ldg(shapes + 2 * level + 1);
    const int64_t level_start = __ldg(starts + level);
    // The same for every lane: the shuffles below stay converged.
    if (!level_fits(level_start, level_height, level_width, pb.num_values)) continue;
    const int height = static_cast<int>(level_height);
    const int width = static_cast<int>(level_width);
    const int start = static_cast<int>(level_start);
    const int row_stride = width * pixel_stride;
    if constexpr (kShared) {
      float pxy[2];
      float attention[1];
      source.template load<1>(level, own, static_cast<float>(width), static_cast<float>(height),
                              pxy, attention);
      const FastPoint mine =
          locate_fast_point(pxy[0], pxy[1], attention[0], height, width, start);
#pragma unroll
      for (int point = 0; point < P; ++point) {
        FastPoint shared;
        shared.packed = __shfl_sync(0xffffffffu, mine.packed, point, P);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          shared.scale[c] = __shfl_sync(0xffffffffu, mine.scale[c], point, P);
        }
        accumulate_fast_point<T, VEC>(row_value, pixel_stride, row_stride, shared, acc);
      }
    } else {
      float pxy[2 * P];
      float attention[P];
      source.template load<P>(level, 0, static_cast<float>(width), static_cast<float>(height),
                              pxy, attention);
#pragma unroll
      for (int point = 0; point < P; ++point) {
        const FastPoint located = locate_fast_point(pxy[2 * point], pxy[2 * point + 1],
                                                    attention[point], height, width, start);
        accumulate_fast_point<T, VEC>(row_value, pixel_stride, row_stride, located, acc);
      }
    }
  }
  if (active) store_vec<T, VEC>(output + index * pb.channels + lane * VEC, acc);
}

template <typename T, typename L, int VEC>
__global__ void __launch_bounds__(kThreadsPerBlock, kBackwardBlocksPerSM)
    backward_kernel(Problem pb, Layout layout, const T* __restrict__ value,
                    const int64_t* __restrict__ shapes, const int64_t* __restrict__ starts,
                    const L* __restrict__ locations, const L* __restrict__ weights,
                    const T* __restrict__ grad_output, acc_type_t<T>* __restrict__ grad_value,
                    L* __restrict__ grad_locations, L* __restrict__ grad_weights) {
  using acc_t = acc_type_t<T>;
  const Lane lane = locate_lane(pb, layout);
  const int64_t pixel_stride = pb.num_heads * pb.channels;
  const int64_t points_per_row = pb.num_levels * pb.num_points;
  // Every lane runs the same number of rounds so that the shuffles stay converged.
  const int64_t rounds = (points_per_row + layout.splits - 1) / layout.splits;

  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t point = round * layout.splits + lane.split;
    const bool owns_point = lane.active && point < points_per_row;
    const int64_t index = lane.first_point + point;
    Point<acc_t> p{0, 0, 0, 0, {}};
    const bool touches =
        owns_point && read_point(pb, shapes, starts, locations, weights, point, index, p);
    acc_t dot[4] = {0, 0, 0, 0};
    if (touches) {
      for (int chunk = 0; chunk < layout.chunks; ++chunk) {
        const int64_t channel =
            (static_cast<int64_t>(chunk) * layout.group + lane.channel_lane) * VEC;
        acc_t grad[VEC];
        load_vec<T, VEC>(grad_output + lane.row.index * pb.channels + channel, grad);
        const int64_t level_offset = lane.value_offset + p.start * pixel_stride + channel;
#pragma unroll
        for (int corner = 0; corner < 4; ++corner) {
          if (p.corners.pixel[corner] < 0) continue;
          const int64_t offset = level_offset + p.corners.pixel[corner] * pixel_stride;
          acc_t sample[VEC];
          load_vec<T, VEC>(value + offset, sample);
#pragma unroll
          for (int i = 0; i < VEC; ++i) dot[corner] += grad[i] * sample[i];
          atomic_add_vec<acc_t, VEC>(grad_value + offset, grad,
                                     p.attention * p.corners.weight[corner]);
        }
      }
    }
    SampleGrads<acc_t> grads{0, 0, 0};
    if (touches) grads = sample_grads(p.corners, dot);
    grads.sample = lane_sum(grads.sample, layout.group / 2, 1);
    grads.d_px = lane_sum(grads.d_px, layout.group / 2, 1);
    grads.d_py = lane_sum(grads.d_py, layout.group / 2, 1);
    if (owns_point && lane.channel_lane == 0) {
      // A point of a level that does not fit inside value gets zero gradients too.
      grad_weights[index] = from_acc<L>(grads.sample);
      grad_locations[2 * index] = from_acc<L>(p.attention * grads.d_px * p.width);
      grad_locations[2 * index + 1] = from_acc<L>(p.attention * grads.d_py * p.height);
    }
  }
}

// Vector width in elements for `bytes`-byte accesses, or 1 when D or a pointer does not allow it.
template <typename T>
int pick_vec(const Problem& pb, int bytes, std::initializer_list<const void*> pointers) {
  const int vec = bytes / static_cast<int>(sizeof(T));
  if (vec <= 1 || pb.channels % vec != 0) return 1;
  for (const void* pointer : pointers) {
    if (pointer != nullptr && reinterpret_cast<uintptr_t>(pointer) % bytes != 0) return 1;
  }
  return vec;
}

// Enough threads to cover the GPU several times over; below that, rows split their points.
constexpr int64_t kTargetThreads = int64_t(1) << 20;

int channel_group(const Problem& pb, int vec) {
  const int64_t vectors_per_row = pb.channels / vec;
  int group = 1;
  while (group < kWarpSize && vectors_per_row % (group * 2) == 0) group *= 2;
  return group;
}

int64_t num_rows(const Problem& pb) { return pb.batch * pb.num_queries * pb.num_heads; }

// The forward sums a row's points across its split lanes with shuffles, so K is a power of two
// and G * K fits in a warp.
Layout forward_layout(const Problem& pb, int vec) {
  const int group = channel_group(pb, vec);
  const int64_t rows = num_rows(pb);
  const int64_t points = pb.num_levels * pb.num_points;
  int splits = 1;
  while (group * splits * 2 <= kWarpSize && splits * 2 <= points &&
         rows * group * splits < kTargetThreads) {
    splits *= 2;
  }
  return Layout{rows * group * splits, group, splits, static_cast<int>(pb.channels / vec / group)};
}

// The backward's split lanes share nothing, so K is free: up to one point per lane, spread
// evenly (the decoder's 900 queries: 10 lanes of 2 points each instead of 4 of 5).
Layout backward_layout(const Problem& pb, int vec) {
  const int group = channel_group(pb, vec);
  const int64_t rows = num_rows(pb);
  const int64_t points = std::max<int64_t>(pb.num_levels * pb.num_points, 1);
  const int64_t wanted = std::clamp<int64_t>(kTargetThreads / std::max<int64_t>(rows * group, 1),
                                             1, points);
  const int64_t rounds = (points + wanted - 1) / wanted;
  const int splits = static_cast<int>((points + rounds - 1) / rounds);
  return Layout{rows * group * splits, group, splits, static_cast<int>(pb.channels / vec / group)};
}

unsigned int blocks_for(const Layout& layout) {
  return static_cast<unsigned int>((layout.total_threads + kThreadsPerBlock - 1) /
                                   kThreadsPerBlock);
}

template <typename T, typename L, int VEC>
void forward_with(const Problem& pb, const T* v, const int64_t* shapes, const int64_t* starts,
                  const L* loc, const L* w, T* out, cudaStream_t stream) {
  const Layout layout = forward_layout(pb, VEC);
  forward_kernel<T, L, VEC><<<blocks_for(layout), kThreadsPerBlock, 0, stream>>>(
      pb, layout, v, shapes, starts, loc, w, out);
}

bool aligned_to(const void* pointer, int bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

// Whether forward_fast_kernel takes the problem: float32 / float16 / bfloat16 value; P = 4;
// D a multiple of 16 bytes (G = D / VEC lanes per row, any G); enough rows that the general
// layout would not split points (B * Q * M * G >= kTargetThreads: the encoder, not the
// decoder's 900 queries); S <= 2^22 and S * M * D * sizeof(T) < 2^31 (32-bit byte offsets in
// one batch element); B * Q * M * G < 2^31; and value and output aligned to 16 bytes for the
// vector loads (the sources' own pointers are checked by their callers).
template <typename T>
bool fast_forward_fits(const Problem& pb, const void* value, const void* output) {
  constexpr int vec = 16 / sizeof(T);
  constexpr int64_t int_max = std::numeric_limits<int32_t>::max();
  if (pb.num_points != kFastPoints || pb.channels % vec != 0) return false;
  const int64_t threads = num_rows(pb) * (pb.channels / vec);
  const int64_t batch_bytes = pb.num_values * pb.num_heads * pb.channels * sizeof(T);
  return threads >= kTargetThreads && threads <= int_max && pb.num_values <= kFastMaxValues &&
         batch_bytes <= int_max && aligned_to(value, 16) && aligned_to(output, 16);
}

template <typename T, typename Source>
void launch_fast(const Problem& pb, const T* value, const int64_t* shapes, const int64_t* starts,
                 const Source& source, T* output, cudaStream_t stream) {
  const int lanes = static_cast<int>(pb.channels / (16 / sizeof(T)));
  const int64_t threads = num_rows(pb) * lanes;
  const auto blocks =
      static_cast<unsigned int>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock);
  // Whole groups of 4 lanes per row share out its 4 points; other G compute all 4 each.
  if (lanes % kFastPoints == 0) {
    forward_fast_kernel<T, Source, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
        pb, lanes, static_cast<int>(threads), value, shapes, starts, source, output);
  } else {
    forward_fast_kernel<T, Source, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
        pb, lanes, static_cast<int>(threads), value, shapes, starts, source, output);
  }
}

template <typename T, typename L>
cudaError_t forward_typed(const Problem& pb, const void* value, const int64_t* shapes,
                          const int64_t* starts, const void* locations, const void* weights,
                          void* output, cudaStream_t stream) {
  const auto* v = static_cast<const T*>(value);
  const auto* loc = static_cast<const L*>(locations);
  const auto* w = static_cast<const L*>(weights);
  auto* out = static_cast<T*>(output);
  if constexpr (!std::is_same_v<T, double>) {
    // Locations to 16 bytes, weights to their 4 elements.
    if (fast_forward_fits<T>(pb, value, output) && aligned_to(locations, 16) &&
        aligned_to(weights, kFastPoints * sizeof(L))) {
      launch_fast(pb, v, shapes, starts, GivenPoints<L>{loc, w}, out, stream);
      return cudaGetLastError();
    }
  }
  // Each lane gathers 16 bytes of value per corner.
  constexpr int kVec = 16 / sizeof(T);
  if (pick_vec<T>(pb, 16, {value, output}) == kVec) {
    forward_with<T, L, kVec>(pb, v, shapes, starts, loc, w, out, stream);
  } else {
    forward_with<T, L, 1>(pb, v, shapes, starts, loc, w, out, stream);
  }
  return cudaGetLastError();
}

template <typename T, typename L, int VEC>
void backward_with(const Problem& pb, const T* v, const int64_t* shapes, const int64_t* starts,
                   const L* loc, const L* w, const T* go, acc_type_t<T>* gv, L* gl, L* gw,
                   cudaStream_t stream) {
  const Layout layout = backward_layout(pb, VEC);
  backward_kernel<T, L, VEC><<<blocks_for(layout), kThreadsPerBlock, 0, stream>>>(
      pb, layout, v, shapes, starts, loc, w, go, gv, gl, gw);
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
  // Each lane owns 16 bytes of the accumulation buffer per corner: one vector reduction, and
  // a warp's reductions to one pixel cover whole 32-byte sectors.
  constexpr int kVec = 16 / sizeof(acc_t);
  constexpr int kBytes = kVec * sizeof(T);
  if (pick_vec<T>(pb, kBytes, {value, grad_output}) == kVec &&
      pick_vec<acc_t>(pb, 16, {grad_value}) == kVec) {
    backward_with<T, L, kVec>(pb, v, shapes, starts, loc, w, go, gv, gl, gw, stream);
  } else {
    backward_with<T, L, 1>(pb, v, shapes, starts, loc, w, go, gv, gl, gw, stream);
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

template <typename T, typename R>
cudaError_t forward_from_offsets_typed(const Problem& pb, const void* value,
                                       const int64_t* shapes, const int64_t* starts,
                                       const void* reference_points, const void* sampling_offsets,
                                       const void* attention_logits, void* output,
                                       cudaStream_t stream) {
  if constexpr (std::is_same_v<T, double>) {
    return cudaErrorNotSupported;
  } else {
    // Offsets to 16 bytes and logits to their 4 elements, as the locations and weights above;
    // reference points to their pair.
    if (!fast_forward_fits<T>(pb, value, output) || !aligned_to(sampling_offsets, 16) ||
        !aligned_to(attention_logits, kFastPoints * sizeof(T)) ||
        !aligned_to(reference_points, 2 * sizeof(R))) {
      return cudaErrorNotSupported;
    }
    const OffsetPoints<T, R> source{static_cast<const R*>(reference_points),
                                    static_cast<const T*>(sampling_offsets),
                                    static_cast<const T*>(attention_logits), 0.0f, 0.0f};
    launch_fast(pb, static_cast<const T*>(value), shapes, starts, source,
                static_cast<T*>(output), stream);
    return cudaGetLastError();
  }
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

cudaError_t launch_forward_from_offsets(const Problem& problem, DataType value_type,
                                       DataType reference_type, const void* value,
                                       const int64_t* spatial_shapes,
                                       const int64_t* level_start_index,
                                       const void* reference_points, const void* sampling_offsets,
                                       const void* attention_logits, void* output,
                                       cudaStream_t stream) {
  if (has_no_rows(problem)) return cudaSuccess;
  return dispatch_types(value_type, reference_type, [&](auto value_tag, auto reference_tag) {
    return forward_from_offsets_typed<decltype(value_tag), decltype(reference_tag)>(
        problem, value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
        attention_logits, output, stream);
  });
}

}  // namespace codetr::msda
