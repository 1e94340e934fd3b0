// CPU kernels of torch.ops.codetr.msda: float64, float32, float16 and bfloat16, accumulating in
// float32 (float64 for float64). The forward parallelises over (batch, query, head) rows; the
// backward over (batch, head) pairs, whose gradient rows of value never overlap, so it needs no
// atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "../msda.h"
#include "../sampling.h"

namespace codetr::msda {
namespace {

template <typename scalar_t, typename loc_t>
void forward_kernel(const Sizes& sz, const scalar_t* value, const int64_t* shapes,
                    const int64_t* starts, const loc_t* locations, const loc_t* weights,
                    scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = sz.batch * sz.num_queries * sz.num_heads;
  const int64_t points_per_row = sz.num_levels * sz.num_points;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(sz.channels);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t head = row % sz.num_heads;
      const int64_t batch = row / (sz.num_queries * sz.num_heads);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t level = 0; level < sz.num_levels; ++level) {
        const int64_t height = shapes[2 * level];
        const int64_t width = shapes[2 * level + 1];
        const scalar_t* level_value =
            value + ((batch * sz.num_values + starts[level]) * sz.num_heads + head) * sz.channels;
        for (int64_t point = 0; point < sz.num_points; ++point) {
          const int64_t index = row * points_per_row + level * sz.num_points + point;
          Corners<acc_t> corners;
          if (!locate_corners<acc_t>(locations[2 * index], locations[2 * index + 1], height,
                                     width, corners)) {
            continue;
          }
          const acc_t attention = weights[index];
          for (int corner = 0; corner < 4; ++corner) {
            if (corners.pixel[corner] < 0) {
              continue;
            }
            const acc_t scale = attention * corners.weight[corner];
            const scalar_t* pixel = level_value + corners.pixel[corner] * sz.num_heads * sz.channels;
            for (int64_t c = 0; c < sz.channels; ++c) {
              acc[c] += scale * static_cast<acc_t>(pixel[c]);
            }
          }
        }
      }
      scalar_t* out = output + row * sz.channels;
      for (int64_t c = 0; c < sz.channels; ++c) {
        out[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

template <typename scalar_t, typename loc_t>
void backward_kernel(const Sizes& sz, const scalar_t* grad_output, const scalar_t* value,
                     const int64_t* shapes, const int64_t* starts, const loc_t* locations,
                     const loc_t* weights, at::opmath_type<scalar_t>* grad_value,
                     loc_t* grad_locations, loc_t* grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t points_per_row = sz.num_levels * sz.num_points;
  const int64_t pixel_stride = sz.num_heads * sz.channels;
  at::parallel_for(0, sz.batch * sz.num_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t batch = pair / sz.num_heads;
      const int64_t head = pair % sz.num_heads;
      for (int64_t query = 0; query < sz.num_queries; ++query) {
        const int64_t row = (batch * sz.num_queries + query) * sz.num_heads + head;
        const scalar_t* grad_row = grad_output + row * sz.channels;
        for (int64_t level = 0; level < sz.num_levels; ++level) {
          const int64_t height = shapes[2 * level];
          const int64_t width = shapes[2 * level + 1];
          const int64_t level_offset =
              ((batch * sz.num_values + starts[level]) * sz.num_heads + head) * sz.channels;
          for (int64_t point = 0; point < sz.num_points; ++point) {
            const int64_t index = row * points_per_row + level * sz.num_points + point;
            Corners<acc_t> corners;
            if (!locate_corners<acc_t>(locations[2 * index], locations[2 * index + 1], height,
                                       width, corners)) {
              grad_weights[index] = loc_t(0);
              grad_locations[2 * index] = loc_t(0);
              grad_locations[2 * index + 1] = loc_t(0);
              continue;
            }
            const acc_t attention = weights[index];
            acc_t dot[4] = {0, 0, 0, 0};
            for (int corner = 0; corner < 4; ++corner) {
              if (corners.pixel[corner] < 0) {
                continue;
              }
              const int64_t offset = level_offset + corners.pixel[corner] * pixel_stride;
              const acc_t scale = attention * corners.weight[corner];
              for (int64_t c = 0; c < sz.channels; ++c) {
                const acc_t grad = static_cast<acc_t>(grad_row[c]);
                dot[corner] += grad * static_cast<acc_t>(value[offset + c]);
                grad_value[offset + c] += scale * grad;
              }
            }
            const SampleGrads<acc_t> grads = sample_grads(corners, dot);
            grad_weights[index] = static_cast<loc_t>(grads.sample);
            grad_locations[2 * index] = static_cast<loc_t>(attention * grads.d_px * width);
            grad_locations[2 * index + 1] = static_cast<loc_t>(attention * grads.d_py * height);
          }
        }
      }
    }
  });
}

// Calls body(scalar_t{}, loc_t{}) for the dtype pair of the inputs, which check_inputs has
// already restricted to (T, T) or (half type, float).
template <typename Body>
void dispatch_types(at::ScalarType value_type, at::ScalarType location_type, Body&& body) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value_type, "msda_cpu", [&] {
    if (location_type == value_type) {
      body(scalar_t{}, scalar_t{});
    } else if constexpr (!std::is_same_v<scalar_t, double>) {
      body(scalar_t{}, float{});
    }
  });
}

at::Tensor msda_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                            const at::Tensor& level_start_index,
                            const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights, int64_t im2col_step) {
  const Inputs in = checked_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                   attention_weights, im2col_step);
  auto output = in.empty_output();
  dispatch_types(value.scalar_type(), sampling_locations.scalar_type(),
                 [&](auto value_tag, auto location_tag) {
                   using scalar_t = decltype(value_tag);
                   using loc_t = decltype(location_tag);
                   forward_kernel<scalar_t, loc_t>(
                       in.sizes, in.value.const_data_ptr<scalar_t>(),
                       in.spatial_shapes.const_data_ptr<int64_t>(),
                       in.level_start_index.const_data_ptr<int64_t>(),
                       in.sampling_locations.const_data_ptr<loc_t>(),
                       in.attention_weights.const_data_ptr<loc_t>(),
                       output.mutable_data_ptr<scalar_t>());
                 });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msda_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, int64_t im2col_step) {
  const Inputs in = checked_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                   attention_weights, im2col_step);
  const auto grad = checked_grad_output(grad_output, in);
  const Gradients grads = Gradients::allocate(in);
  dispatch_types(value.scalar_type(), sampling_locations.scalar_type(),
                 [&](auto value_tag, auto location_tag) {
                   using scalar_t = decltype(value_tag);
                   using loc_t = decltype(location_tag);
                   using acc_t = at::opmath_type<scalar_t>;
                   backward_kernel<scalar_t, loc_t>(
                       in.sizes, grad.const_data_ptr<scalar_t>(),
                       in.value.const_data_ptr<scalar_t>(),
                       in.spatial_shapes.const_data_ptr<int64_t>(),
                       in.level_start_index.const_data_ptr<int64_t>(),
                       in.sampling_locations.const_data_ptr<loc_t>(),
                       in.attention_weights.const_data_ptr<loc_t>(),
                       grads.value_accum.mutable_data_ptr<acc_t>(),
                       grads.sampling_locations.mutable_data_ptr<loc_t>(),
                       grads.attention_weights.mutable_data_ptr<loc_t>());
                 });
  return grads.finish(in);
}

}  // namespace

TORCH_LIBRARY_IMPL(codetr, CPU, m) {
  m.impl("msda", &msda_forward_cpu);
  m.impl("msda_backward", &msda_backward_cpu);
}

}  // namespace codetr::msda
