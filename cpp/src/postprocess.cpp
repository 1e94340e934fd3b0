#include "postprocess.h"

#include <cmath>
#include <limits>
#include <stdexcept>

#include <ATen/TensorOperators.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

namespace codetr {
namespace {

// torchvision.ops.box_iou: [N, 4] x [M, 4] xyxy -> [N, M].
at::Tensor box_iou(const at::Tensor& first, const at::Tensor& second) {
  auto area = [](const at::Tensor& boxes) {
    return (boxes.select(1, 2) - boxes.select(1, 0)) * (boxes.select(1, 3) - boxes.select(1, 1));
  };
  const auto top_left = at::max(first.unsqueeze(1).narrow(2, 0, 2), second.narrow(1, 0, 2));
  const auto bottom_right = at::min(first.unsqueeze(1).narrow(2, 2, 2), second.narrow(1, 2, 2));
  const auto extent = (bottom_right - top_left).clamp_min(0);
  const auto intersection = extent.select(2, 0) * extent.select(2, 1);
  const auto unions = area(first).unsqueeze(1) + area(second) - intersection;
  return intersection / unions;
}

// Greedy class-aware NMS (torchvision.ops.batched_nms): indices kept, by descending score.
at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels, double iou_threshold) {
  const auto overlaps = (box_iou(boxes, boxes) * (labels.unsqueeze(1) == labels.unsqueeze(0))).contiguous();
  const auto order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const int64_t count = order.size(0);
  const auto* ranked = order.data_ptr<int64_t>();
  const auto* iou = overlaps.data_ptr<float>();
  std::vector<bool> removed(count, false);
  std::vector<int64_t> keep;
  for (int64_t rank = 0; rank < count; ++rank) {
    const int64_t index = ranked[rank];
    if (removed[index]) continue;
    keep.push_back(index);
    for (int64_t other = rank + 1; other < count; ++other) {
      if (iou[index * count + ranked[other]] > iou_threshold) removed[ranked[other]] = true;
    }
  }
  return at::tensor(keep, at::kLong);
}

}  // namespace

std::pair<at::Tensor, at::Tensor> soft_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                                           double iou_threshold, double min_score) {
  const auto overlaps = box_iou(boxes, boxes) * (labels.unsqueeze(1) == labels.unsqueeze(0));
  auto current = scores.to(at::kFloat).clone();
  auto alive = at::ones_like(current, at::kBool);
  const auto minus_infinity = at::tensor(-std::numeric_limits<float>::infinity(), at::kFloat);
  std::vector<int64_t> order;
  std::vector<at::Tensor> kept_scores;
  while (alive.any().item<bool>()) {
    const int64_t best = at::where(alive, current, minus_infinity).argmax().item<int64_t>();
    order.push_back(best);
    kept_scores.push_back(current[best].clone());
    alive[best] = false;
    const auto iou = overlaps[best];
    const auto decay = at::where(iou > iou_threshold, 1 - iou, at::ones_like(iou));
    current = at::where(alive, current * decay, current);
    alive &= current >= min_score;
  }
  if (order.empty()) return {at::zeros({0}, at::kLong), current.narrow(0, 0, 0)};
  return {at::tensor(order, at::kLong), at::stack(kept_scores)};
}

std::vector<ImageDetections> postprocess(const Detections& detections, const Batch& batch, const NmsConfig& config,
                                         double score_threshold) {
  const auto all_boxes = detections.boxes.cpu();
  const auto all_scores = detections.scores.cpu();
  const auto all_labels = detections.labels.cpu();
  std::vector<ImageDetections> results;
  for (int64_t index = 0; index < batch.original_sizes.size(0); ++index) {
    const auto scale = batch.scale_factors[index].repeat({2});
    const auto height = batch.original_sizes[index][0].item<double>();
    const auto width = batch.original_sizes[index][1].item<double>();
    auto boxes = (all_boxes[index].to(at::kDouble) / scale).to(at::kFloat);
    boxes = at::minimum(boxes.clamp_min(0), at::tensor({width, height, width, height}, at::kFloat));
    auto scores = all_scores[index].to(at::kFloat);
    auto labels = all_labels[index].to(at::kLong);
    // As codetr.postprocess: boxes with no area after clamping cover no pixel of the image.
    const auto has_area = ((boxes.select(1, 2) > boxes.select(1, 0)) & (boxes.select(1, 3) > boxes.select(1, 1)))
                              .nonzero()
                              .squeeze(1);
    boxes = boxes.index_select(0, has_area);
    scores = scores.index_select(0, has_area);
    labels = labels.index_select(0, has_area);
    if (config.kind == "nms") {
      const auto keep = nms(boxes, scores, labels, config.iou_threshold);
      boxes = boxes.index_select(0, keep);
      scores = scores.index_select(0, keep);
      labels = labels.index_select(0, keep);
    } else if (config.kind == "soft_nms") {
      const auto [keep, decayed] = soft_nms(boxes, scores, labels, config.iou_threshold, config.min_score);
      boxes = boxes.index_select(0, keep);
      scores = decayed;
      labels = labels.index_select(0, keep);
    }
    const auto keep = (scores > score_threshold).nonzero().squeeze(1);
    results.push_back({boxes.index_select(0, keep), scores.index_select(0, keep), labels.index_select(0, keep)});
  }
  return results;
}

nlohmann::ordered_json coco_results(int64_t image_id, const ImageDetections& detections, const std::vector<int64_t>& category_ids) {
  auto rounded = [](double value, double scale) { return std::nearbyint(value * scale) / scale; };
  const auto boxes = detections.boxes.to(at::kDouble).contiguous();
  const auto scores = detections.scores.to(at::kDouble).contiguous();
  const auto labels = detections.labels.contiguous();
  auto entries = nlohmann::ordered_json::array();
  for (int64_t index = 0; index < boxes.size(0); ++index) {
    const auto* box = boxes.data_ptr<double>() + 4 * index;
    const int64_t label = labels.data_ptr<int64_t>()[index];
    if (label < 0 || label >= static_cast<int64_t>(category_ids.size())) {
      throw std::runtime_error("model returned label " + std::to_string(label) + ", metadata.json names " +
                               std::to_string(category_ids.size()) + " classes");
    }
    entries.push_back({{"image_id", image_id},
                       {"category_id", category_ids[label]},
                       {"bbox",
                        {rounded(box[0], 1e3), rounded(box[1], 1e3), rounded(box[2] - box[0], 1e3),
                         rounded(box[3] - box[1], 1e3)}},
                       {"score", rounded(scores.data_ptr<double>()[index], 1e5)}});
  }
  return entries;
}

}  // namespace codetr
