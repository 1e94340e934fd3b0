"""Hungarian matching of predictions to ground truth (mmdet ``HungarianAssigner``).

Costs as Co-DINO's ``train_cfg`` sets them (mmdetection 3.x
``projects/CO-DETR/configs/codino/co_dino_5scale_r50_lsj_8xb2_1x_coco.py``): ``FocalLossCost``
(weight 2, alpha 0.25, gamma 2, eps 1e-12), ``BBoxL1Cost`` on normalised (cx, cy, w, h)
(weight 5, box_format 'xywh') and ``IoUCost`` with GIoU (weight 2, cost = -GIoU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
_FOCAL_EPS = 1e-12


@dataclass(frozen=True)
class MatchCosts:
    cls: float = 2.0
    bbox: float = 5.0
    iou: float = 2.0


def match_cost(
    logits: torch.Tensor, boxes: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor, costs: MatchCosts
) -> torch.Tensor:
    """Cost of assigning each prediction to each ground-truth box.

    logits [..., Q, num_classes]; boxes [..., Q, 4] normalised (cx, cy, w, h); gt_labels [G]
    int64; gt_boxes [G, 4] normalised (cx, cy, w, h). Returns [..., Q, G] float32.
    """
    probability = logits.float().sigmoid()[..., gt_labels]
    negative = -(1 - probability + _FOCAL_EPS).log() * (1 - FOCAL_ALPHA) * probability.pow(FOCAL_GAMMA)
    positive = -(probability + _FOCAL_EPS).log() * FOCAL_ALPHA * (1 - probability).pow(FOCAL_GAMMA)
    boxes = boxes.float()
    l1 = torch.cdist(boxes, gt_boxes.expand(*boxes.shape[:-2], -1, -1).float(), p=1)
    pred_xyxy = box_convert(boxes.reshape(-1, 4), "cxcywh", "xyxy")
    giou = generalized_box_iou(pred_xyxy, box_convert(gt_boxes.float(), "cxcywh", "xyxy")).view(l1.shape)
    return costs.cls * (positive - negative) + costs.bbox * l1 - costs.iou * giou


def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of a [Q, G] cost matrix (scipy).

    Returns (query indices, gt indices), int64 CPU tensors of length min(Q, G), sorted by query.
    """
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(cols.astype(np.int64))


@torch.no_grad()
def match_batch(
    logits: torch.Tensor, boxes: torch.Tensor, gt_labels: list[torch.Tensor], gt_boxes: list[torch.Tensor], costs: MatchCosts
) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Matches every output set of a batch: logits [S, B, Q, N], boxes [S, B, Q, 4] (S sets,
    e.g. decoder layers) against each image's targets. Moves all cost matrices to the host in
    one copy. Returns [S][B] (query indices, gt indices)."""
    sets, batch = logits.shape[:2]
    matrices = [match_cost(logits[:, b], boxes[:, b], gt_labels[b], gt_boxes[b], costs) for b in range(batch)]
    host = torch.cat([m.flatten() for m in matrices]).cpu().split([m.numel() for m in matrices])
    result: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(sets)]
    for b, (flat, matrix) in enumerate(zip(host, matrices)):
        flat = flat.view(matrix.shape)
        for s in range(sets):
            result[s].append(hungarian_match(flat[s]))
    return result
