// torch.ops.codetr.msda_from_offsets: MSDA that takes the layer's raw projections (sampling
// offsets in pixels, attention logits) and reference points, and prepares the sampling locations
// and the softmax itself. Defined as the composition below; on CUDA the fast forward computes
// the same inside its sampling loop (msda_cuda.cpp), so no [B, Q, M, L, P] tensor is written
// and read back. Inference only: the op has no gradient (the layer's training path calls msda).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "msda.h"

namespace codetr::msda {
namespace {

void check_shape(const at::Tensor& tensor, const char* name, const char* layout,
                 const std::vector<int64_t>& expected) {
  TORCH_CHECK(tensor.sizes() == at::IntArrayRef(expected), "msda_from_offsets: ", name,
              " must be ", layout, " = ", shape_of(expected), ", got ",
              shape_of(tensor.sizes()));
}

at::Tensor call_msda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                     const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                     const at::Tensor& attention_weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("codetr::msda", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 64);
}

at::Tensor msda_from_offsets_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index,
                                 const at::Tensor& reference_points,
                                 const at::Tensor& sampling_offsets,
                                 const at::Tensor& attention_logits) {
  return msda_from_offsets_composite(checked_offset_inputs(
      value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
      attention_logits));
}

// Refuses to record a graph (grad mode on and an input requiring grad): there is no backward,
// and a silent zero gradient would train wrong.
at::Tensor msda_from_offsets_autograd(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& reference_points,
                                      const at::Tensor& sampling_offsets,
                                      const at::Tensor& attention_logits) {
  TORCH_CHECK(!at::GradMode::is_enabled() ||
                  !(value.requires_grad() || reference_points.requires_grad() ||
                    sampling_offsets.requires_grad() || attention_logits.requires_grad()),
              "msda_from_offsets has no gradient (it is for inference); use msda for training, "
              "or call it under torch.no_grad()");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("codetr::msda_from_offsets", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(value, spatial_shapes, level_start_index, reference_points, sampling_offsets,
                 attention_logits);
}

}  // namespace

OffsetInputs checked_offset_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                   const at::Tensor& level_start_index,
                                   const at::Tensor& reference_points,
                                   const at::Tensor& sampling_offsets,
                                   const at::Tensor& attention_logits) {
  TORCH_CHECK(value.dim() == 4, "msda_from_offsets: value must be [B, S, M, D], got shape ",
              shape_of(value.sizes()));
  TORCH_CHECK(spatial_shapes.dim() == 2,
              "msda_from_offsets: spatial_shapes must be [L, 2] (H, W per level), got shape ",
              shape_of(spatial_shapes.sizes()));
  TORCH_CHECK(sampling_offsets.dim() == 6,
              "msda_from_offsets: sampling_offsets must be [B, Q, M, L, P, 2], got shape ",
              shape_of(sampling_offsets.sizes()));
  const int64_t batch = value.size(0);
  const int64_t heads = value.size(2);
  const int64_t levels = spatial_shapes.size(0);
  const int64_t queries = sampling_offsets.size(1);
  const int64_t points = sampling_offsets.size(4);
  check_shape(sampling_offsets, "sampling_offsets", "[B, Q, M, L, P, 2]",
              {batch, queries, heads, levels, points, 2});
  check_shape(attention_logits, "attention_logits", "[B, Q, M, L, P]",
              {batch, queries, heads, levels, points});
  check_shape(reference_points, "reference_points", "[B, Q, L, 2]", {batch, queries, levels, 2});
  const auto value_type = value.scalar_type();
  const bool half_value = value_type == at::kHalf || value_type == at::kBFloat16;
  TORCH_CHECK(reference_points.scalar_type() == value_type ||
                  (half_value && reference_points.scalar_type() == at::kFloat),
              "msda_from_offsets: reference_points must have value's dtype (", value_type, ")",
              half_value ? " or float32" : "", ", got ", reference_points.scalar_type());
  for (const auto& [tensor, name] : {std::pair{&sampling_offsets, "sampling_offsets"},
                                     std::pair{&attention_logits, "attention_logits"}}) {
    TORCH_CHECK(tensor->scalar_type() == value_type, "msda_from_offsets: ", name,
                " must have value's dtype (", value_type, "), got ",
                tensor->scalar_type());
  }
  // msda's checks cover value, spatial_shapes, level_start_index and every device; broadcast
  // views of the reference points (no copy) stand in for the locations and weights, whose dtype
  // they give (value's, or float32 for half-precision values).
  const auto reference = reference_points.reshape({batch, queries, 1, levels, 1, 2});
  const Sizes sizes = check_inputs(
      value, spatial_shapes, level_start_index,
      reference.expand({batch, queries, heads, levels, points, 2}),
      reference.select(-1, 0).expand({batch, queries, heads, levels, points}), 64);
  return OffsetInputs{sizes,
                      value.contiguous(),
                      spatial_shapes.contiguous(),
                      level_start_index.contiguous(),
                      reference_points.contiguous(),
                      sampling_offsets.contiguous(),
                      attention_logits.contiguous()};
}

at::Tensor msda_from_offsets_composite(const OffsetInputs& in) {
  const Sizes& sz = in.sizes;
  const auto location_type = in.reference_points.scalar_type();
  // Offsets are in pixels of each level: divide by (W, H), then add to the reference point.
  const auto normalizer =
      in.spatial_shapes.flip({1}).to(location_type).view({1, 1, 1, sz.num_levels, 1, 2});
  const auto locations =
      in.reference_points.view({sz.batch, sz.num_queries, 1, sz.num_levels, 1, 2}) +
      in.sampling_offsets.to(location_type) / normalizer;
  const auto weights = in.attention_logits.to(location_type)
                           .view({sz.batch, sz.num_queries, sz.num_heads,
                                  sz.num_levels * sz.num_points})
                           .softmax(-1)
                           .view({sz.batch, sz.num_queries, sz.num_heads, sz.num_levels,
                                  sz.num_points});
  return call_msda(in.value, in.spatial_shapes, in.level_start_index, locations, weights);
}

TORCH_LIBRARY_FRAGMENT(codetr, m) {
  m.def(
      "msda_from_offsets(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor reference_points, Tensor sampling_offsets, Tensor attention_logits) -> Tensor");
}

TORCH_LIBRARY_IMPL(codetr, CPU, m) { m.impl("msda_from_offsets", &msda_from_offsets_cpu); }

TORCH_LIBRARY_IMPL(codetr, Autograd, m) {
  m.impl("msda_from_offsets", &msda_from_offsets_autograd);
}

}  // namespace codetr::msda
