"""Losses of Co-DINO's query head (mmdet ``DINOHead`` / ``CoDINOHead``).

From mmdetection 3.x ``projects/CO-DETR/configs/codino/co_dino_5scale_r50_lsj_8xb2_1x_coco.py``:
``QualityFocalLoss(use_sigmoid=True, beta=2.0, loss_weight=1.0)``, ``L1Loss(loss_weight=5.0)`` on
normalised (cx, cy, w, h), ``GIoULoss(loss_weight=2.0)``. Every term is a sum divided by the number
of matched ground-truth boxes of the whole (global, all-rank) batch, at least 1 (mmdet's
``avg_factor`` with ``sync_cls_avg_factor``). The quality-focal target of a matched query is the
IoU of its (detached) box with its ground truth (mmdet ``DETRHead.loss_by_feat_single``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from codetr.training.matcher import FOCAL_ALPHA, FOCAL_GAMMA


def quality_focal_loss(logits: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Summed QFL (Li et al., Generalized Focal Loss; mmdet ``quality_focal_loss``).

    logits [M, C]; labels [M] int64, C for background; quality [M] float target of the
    labelled class. Negatives: BCE(x, 0) * sigmoid(x)^beta on every class; at a positive's
    class: BCE(x, q) * |q - sigmoid(x)|^beta.
    """
    logits = logits.float()
    probability = logits.sigmoid()
    target = torch.zeros_like(logits)
    scale = probability.pow(beta)
    positive = labels < logits.shape[1]
    rows = positive.nonzero().squeeze(1)
    columns = labels[rows]
    target[rows, columns] = quality[rows].float()
    scale = scale.index_put((rows, columns), (quality[rows].float() - probability[rows, columns]).abs().pow(beta))
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * scale).sum()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed sigmoid focal loss (alpha 0.25, gamma 2; mmdet ``FocalLoss``); labels [M], C = background."""
    target = F.one_hot(labels, logits.shape[1] + 1)[:, :-1].float()
    probability = logits.float().sigmoid()
    p_t = probability * target + (1 - probability) * (1 - target)
    alpha_t = FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (alpha_t * (1 - p_t).pow(FOCAL_GAMMA) * bce).sum()


def detection_losses(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    target_boxes: torch.Tensor,
    positive: torch.Tensor,
    num_boxes: float,
    classification: str = "quality_focal",
    weights: tuple[float, float, float] = (1.0, 5.0, 2.0),
) -> dict[str, torch.Tensor]:
    """Classification, L1 and GIoU losses of one output set.

    logits [M, C] and boxes [M, 4] (normalised cx, cy, w, h) of all M queries; labels [M] int64
    (C = background); target_boxes [M, 4] (ignored where not positive); positive [M] bool;
    num_boxes: the normaliser (global matched count, >= 1). Returns ``{"cls", "bbox", "iou"}``
    already weighted by ``weights`` = (cls, bbox, iou).
    """
    boxes = boxes.float()
    matched = boxes[positive]
    matched_targets = target_boxes[positive].float()
    matched_xyxy = box_convert(matched, "cxcywh", "xyxy")
    targets_xyxy = box_convert(matched_targets, "cxcywh", "xyxy")
    if classification == "quality_focal":
        quality = torch.zeros(labels.shape, device=boxes.device)
        quality[positive] = box_iou(matched_xyxy.detach(), targets_xyxy).diagonal()
        cls = quality_focal_loss(logits, labels, quality)
    else:
        cls = focal_loss(logits, labels)
    bbox = (matched - matched_targets).abs().sum()
    iou = generalized_box_iou_loss(matched_xyxy, targets_xyxy, reduction="sum")
    cls_weight, bbox_weight, iou_weight = weights
    return {"cls": cls_weight * cls / num_boxes, "bbox": bbox_weight * bbox / num_boxes, "iou": iou_weight * iou / num_boxes}
