"""Host-side post-processing: back to original-image pixels, optional (soft-)NMS, COCO JSON.

Never part of an exported graph. The official Co-DINO test_cfg applies class-aware soft-NMS
(mmcv ``soft_nms``, linear decay, iou_threshold 0.8, min_score 1e-3) to the top-300 detections;
``soft_nms`` below re-implements that rule. Boxes are clamped to the original image (the official
code clamps to the network input only, which can leave boxes in the padding). Detections whose
clamped box has zero width or height are dropped: they cover no pixel of the image (boxes lying
wholly in the padding or outside the image clamp to zero area; random weights give many), and
every runtime's output goes through here, so all drop the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms, box_iou

from codetr.config import NmsConfig
from codetr.models import Detections
from codetr.preprocess import Batch


@dataclass(frozen=True)
class ImageDetections:
    """boxes [N, 4] float32 xyxy in original-image pixels; scores [N] float32; labels [N] int64."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def postprocess(detections: Detections, batch: Batch, nms: NmsConfig, score_threshold: float = 0.0) -> list[ImageDetections]:
    """Per image: rescale to original pixels and clamp to the image, drop zero-width or
    zero-height boxes, NMS as configured, then keep scores > threshold."""
    results = []
    for index in range(detections.boxes.shape[0]):
        scale = batch.scale_factors[index].repeat(2).to(detections.boxes.device)
        height, width = batch.original_sizes[index].tolist()
        boxes = (detections.boxes[index].double() / scale).float()
        boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([width, height, width, height]))
        scores = detections.scores[index].float()
        labels = detections.labels[index]
        has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[has_area], scores[has_area], labels[has_area]
        boxes, scores, labels = apply_nms(boxes, scores, labels, nms)
        keep = scores > score_threshold
        results.append(ImageDetections(boxes[keep].cpu(), scores[keep].cpu(), labels[keep].cpu()))
    return results


def apply_nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, nms: NmsConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-aware NMS per ``nms.kind``; returns survivors sorted by (new) score."""
    if nms.kind == "none":
        return boxes, scores, labels
    if nms.kind == "nms":
        keep = batched_nms(boxes, scores, labels, nms.iou_threshold)
        return boxes[keep], scores[keep], labels[keep]
    keep, new_scores = soft_nms(boxes, scores, labels, nms.iou_threshold, nms.sigma, nms.min_score)
    return boxes[keep], new_scores, labels[keep]


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float,
    sigma: float = 0.5,
    min_score: float = 1e-3,
    method: str = "linear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla et al.), class-aware, as mmcv ``soft_nms``.

    Repeatedly takes the highest-scoring remaining box; boxes of the same label overlapping it
    have their score multiplied by (1 - IoU) if IoU > iou_threshold ("linear"), by
    exp(-IoU^2 / sigma) ("gaussian") or by 0 ("naive"); boxes falling below min_score are removed.
    Returns (indices in selection order, their decayed scores).
    """
    if method not in ("linear", "gaussian", "naive"):
        raise ValueError(f"soft_nms method must be linear, gaussian or naive, got {method!r}")
    overlaps = box_iou(boxes, boxes) * (labels[:, None] == labels[None, :])
    current = scores.clone().float()
    alive = torch.ones_like(current, dtype=torch.bool)
    order, kept_scores = [], []
    while bool(alive.any()):
        best = int(torch.where(alive, current, float("-inf")).argmax())
        order.append(best)
        kept_scores.append(current[best])
        alive[best] = False
        iou = overlaps[best]
        if method == "linear":
            decay = torch.where(iou > iou_threshold, 1 - iou, torch.ones_like(iou))
        elif method == "gaussian":
            decay = torch.exp(-(iou * iou) / sigma)
        else:
            decay = (iou <= iou_threshold).float()
        current = torch.where(alive, current * decay, current)
        alive &= current >= min_score
    if not order:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), current[:0]
    return torch.tensor(order, dtype=torch.int64, device=boxes.device), torch.stack(kept_scores)


def coco_results(image_id: int, detections: ImageDetections, category_ids: tuple[int, ...]) -> list[dict]:
    """COCO results-format entries: bbox as [x, y, width, height] in original pixels."""
    entries = []
    for box, score, label in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist()):
        x1, y1, x2, y2 = box
        entries.append(
            {
                "image_id": image_id,
                "category_id": category_ids[label],
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(score, 5),
            }
        )
    return entries
