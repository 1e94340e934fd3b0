// Bilinear sampling arithmetic of MSDA, shared by the CPU and CUDA kernels so both backends
// follow one convention: a normalised location (x, y) maps to the pixel coordinates
// (x * W - 0.5, y * H - 0.5) (align_corners=False), and corners outside the map read as zero.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MSDA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MSDA_HOST_DEVICE inline
#endif

namespace codetr::msda {

// The four corners around one sampling location, in the order
// (top, left), (top, right), (bottom, left), (bottom, right).
template <typename acc_t>
struct Corners {
  int64_t pixel[4];   // row within the level (y * W + x), or -1 when outside the map
  acc_t weight[4];    // bilinear weight of each corner
  acc_t frac_y;       // y - floor(y) in pixel units
  acc_t frac_x;       // x - floor(x) in pixel units
};

// Fills `corners` and returns true when the location touches the map. NaN or infinite
// locations, and locations a full pixel or more outside, return false: they contribute zero.
template <typename acc_t>
MSDA_HOST_DEVICE bool locate_corners(acc_t x, acc_t y, int64_t height, int64_t width,
                                     Corners<acc_t>& corners) {
  const acc_t px = x * static_cast<acc_t>(width) - acc_t(0.5);
  const acc_t py = y * static_cast<acc_t>(height) - acc_t(0.5);
  // Written so that NaN fails every comparison.
  if (!(px > acc_t(-1) && py > acc_t(-1) && px < static_cast<acc_t>(width) &&
        py < static_cast<acc_t>(height))) {
    return false;
  }
  const acc_t floor_x = std::floor(px);
  const acc_t floor_y = std::floor(py);
  const int64_t left = static_cast<int64_t>(floor_x);
  const int64_t top = static_cast<int64_t>(floor_y);
  corners.frac_x = px - floor_x;
  corners.frac_y = py - floor_y;
  const acc_t keep_x = acc_t(1) - corners.frac_x;
  const acc_t keep_y = acc_t(1) - corners.frac_y;
  const bool has_left = left >= 0;
  const bool has_right = left + 1 < width;
  const bool has_top = top >= 0;
  const bool has_bottom = top + 1 < height;
  corners.pixel[0] = has_top && has_left ? top * width + left : -1;
  corners.pixel[1] = has_top && has_right ? top * width + left + 1 : -1;
  corners.pixel[2] = has_bottom && has_left ? (top + 1) * width + left : -1;
  corners.pixel[3] = has_bottom && has_right ? (top + 1) * width + left + 1 : -1;
  corners.weight[0] = keep_y * keep_x;
  corners.weight[1] = keep_y * corners.frac_x;
  corners.weight[2] = corners.frac_y * keep_x;
  corners.weight[3] = corners.frac_y * corners.frac_x;
  return true;
}

// Given dot[i] = <grad_output, value at corner i> (zero for corners outside), the derivatives
// of <grad_output, sample> with respect to the sample (for the attention weight) and to the
// pixel coordinates px and py.
template <typename acc_t>
struct SampleGrads {
  acc_t sample;
  acc_t d_px;
  acc_t d_py;
};

template <typename acc_t>
MSDA_HOST_DEVICE SampleGrads<acc_t> sample_grads(const Corners<acc_t>& corners,
                                                 const acc_t dot[4]) {
  const acc_t keep_x = acc_t(1) - corners.frac_x;
  const acc_t keep_y = acc_t(1) - corners.frac_y;
  SampleGrads<acc_t> grads;
  grads.sample = corners.weight[0] * dot[0] + corners.weight[1] * dot[1] +
                 corners.weight[2] * dot[2] + corners.weight[3] * dot[3];
  grads.d_px = keep_y * (dot[1] - dot[0]) + corners.frac_y * (dot[3] - dot[2]);
  grads.d_py = keep_x * (dot[2] - dot[0]) + corners.frac_x * (dot[3] - dot[1]);
  return grads;
}

// A level whose rows do not fit inside value is skipped; on CPU check_inputs rejects it first.
MSDA_HOST_DEVICE bool level_fits(int64_t start, int64_t height, int64_t width,
                                 int64_t num_values) {
  return height > 0 && width > 0 && start >= 0 && start + height * width <= num_values;
}

}  // namespace codetr::msda
