// Host-side post-processing, the same computation as codetr.postprocess: back to original-image
// pixels, (soft-)NMS as the export's metadata says, score threshold, COCO results.
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "metadata.h"
#include "preprocess.h"

namespace codetr {

// The model's outputs: boxes [B, K, 4] (x1, y1, x2, y2) network-input pixels, scores [B, K],
// labels [B, K] int64.
struct Detections {
  at::Tensor boxes;
  at::Tensor scores;
  at::Tensor labels;
};

// One image's detections on the CPU: boxes [N, 4] float32 xyxy original pixels, scores [N]
// float32, labels [N] int64.
struct ImageDetections {
  at::Tensor boxes;
  at::Tensor scores;
  at::Tensor labels;
};

// Per image of the batch: divide by the scale factors, clamp to the original image, NMS per
// `nms`, keep scores > score_threshold.
std::vector<ImageDetections> postprocess(const Detections& detections, const Batch& batch, const NmsConfig& nms,
                                         double score_threshold);

// Soft-NMS (Bodla et al.) with linear decay, class-aware, as mmcv soft_nms and
// codetr.postprocess.soft_nms: returns (indices in selection order, their decayed scores).
std::pair<at::Tensor, at::Tensor> soft_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& labels,
                                           double iou_threshold, double min_score);

// COCO results-format entries {image_id, category_id, bbox [x, y, w, h], score}, rounded as
// codetr.postprocess.coco_results does (3 decimals for boxes, 5 for scores).
nlohmann::ordered_json coco_results(int64_t image_id, const ImageDetections& detections, const std::vector<int64_t>& category_ids);

}  // namespace codetr
