"""``torch.ops.codetr.select_detections``: score threshold and greedy NMS as one op.

It is the in-graph post-processing of an export (``codetr export --postprocess``): one op that
torch.export keeps as a node with a data-dependent output size and that the exporter writes as
one ONNX ``NonMaxSuppression`` (its ``score_threshold`` input does the threshold), which
TensorRT's ONNX parser maps to an ``INMSLayer``. A separate threshold would need ONNX
``NonZero``, which TensorRT-RTX's parser can only import through a plugin it does not ship.
Registered when :mod:`codetr.ops` is imported, so a saved program that holds it loads anywhere.
"""

from __future__ import annotations

import torch
import torchvision


@torch.library.custom_op("codetr::select_detections", mutates_args=())
def select_detections(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float) -> torch.Tensor:
    """Indices (int64 [N]) of the boxes greedy NMS keeps whose score is above ``score_threshold``,
    in descending score order.

    boxes [K, 4] float32 (x1, y1, x2, y2); scores [K] float32. A box is suppressed by a kept
    higher-scoring box when their IoU is greater than ``iou_threshold`` (ONNX NonMaxSuppression,
    torchvision ``nms``); ``iou_threshold`` 1.0 suppresses nothing (IoU never exceeds 1), which
    leaves the threshold alone. Class-wise NMS: shift each class's boxes apart first (see
    :func:`codetr.export.postprocess.class_wise_offsets`).
    """
    keep = torchvision.ops.nms(boxes, scores, iou_threshold)
    return keep[scores[keep] > score_threshold]


@select_detections.register_fake
def _select_detections_fake(boxes, scores, iou_threshold, score_threshold):
    count = torch.library.get_ctx().new_dynamic_size(max=boxes.shape[0])
    return boxes.new_empty((count,), dtype=torch.int64)
