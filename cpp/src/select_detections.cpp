// torch.ops.codetr.select_detections for the runner: the in-graph post-processing of an export
// made with `codetr export --postprocess threshold|nms`. Python registers this op in
// codetr/ops/select.py (a torch.library.custom_op over torchvision.ops.nms); an AOTInductor
// package calls it through the dispatcher, so a Python-free runner must register the same schema.
// Computed as torchvision's CPU nms kernel does (stable descending sort by score, float IoU, a box
// is suppressed when IoU > iou_threshold), then scores > score_threshold; inputs on another device
// are computed on the host (K is the model's max_per_img, a few hundred boxes).
#include <algorithm>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/tensor.h>
#include <torch/library.h>

namespace codetr {
namespace {

at::Tensor select_detections(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                             double score_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "select_detections: boxes must be [K, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "select_detections: scores must be [K] with K = ", boxes.size(0), ", got ", scores.sizes());
  const auto host_boxes = boxes.to(at::kCPU, at::kFloat).contiguous();
  const auto host_scores = scores.to(at::kCPU, at::kFloat).contiguous();
  const int64_t count = host_boxes.size(0);
  const auto order = std::get<1>(host_scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const auto* ranked = order.data_ptr<int64_t>();
  const auto* box = host_boxes.data_ptr<float>();
  const auto* score = host_scores.data_ptr<float>();
  std::vector<float> areas(count);
  for (int64_t index = 0; index < count; ++index) {
    areas[index] = (box[4 * index + 2] - box[4 * index]) * (box[4 * index + 3] - box[4 * index + 1]);
  }
  std::vector<bool> suppressed(count, false);
  std::vector<int64_t> keep;
  for (int64_t rank = 0; rank < count; ++rank) {
    const int64_t kept = ranked[rank];
    if (suppressed[kept]) continue;
    // Compared in float32, as torch compares a float32 tensor with a Python float.
    if (score[kept] > static_cast<float>(score_threshold)) keep.push_back(kept);
    const float* first = box + 4 * kept;
    for (int64_t other_rank = rank + 1; other_rank < count; ++other_rank) {
      const int64_t other = ranked[other_rank];
      if (suppressed[other]) continue;
      const float* second = box + 4 * other;
      const float width = std::max(0.0f, std::min(first[2], second[2]) - std::max(first[0], second[0]));
      const float height = std::max(0.0f, std::min(first[3], second[3]) - std::max(first[1], second[1]));
      const float intersection = width * height;
      if (intersection / (areas[kept] + areas[other] - intersection) > iou_threshold) suppressed[other] = true;
    }
  }
  return at::tensor(keep, at::kLong).to(boxes.device());
}

}  // namespace

// The schema torch.library.custom_op derives from codetr/ops/select.py's signature; the package
// names the op and the arguments by it.
TORCH_LIBRARY_FRAGMENT(codetr, m) {
  m.def("select_detections(Tensor boxes, Tensor scores, float iou_threshold, float score_threshold) -> Tensor");
  m.impl("select_detections", c10::DispatchKey::CompositeExplicitAutograd, &select_detections);
}

}  // namespace codetr
