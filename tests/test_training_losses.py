"""Loss terms against values computed by hand from their definitions (mmdet's
quality_focal_loss, sigmoid focal loss, L1, GIoU), normalised by the box count."""

from __future__ import annotations

import math

import pytest
import torch

from codetr.training.losses import detection_losses, focal_loss, quality_focal_loss


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _bce(x: float, target: float) -> float:
    p = _sigmoid(x)
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_quality_focal_loss_by_hand():
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    labels = torch.tensor([1, 2])  # query 0: class 1; query 1: background (C = 2)
    quality = torch.tensor([0.6, 0.0])
    expected = (
        _bce(0.5, 0) * _sigmoid(0.5) ** 2
        + _bce(-1.0, 0.6) * abs(0.6 - _sigmoid(-1.0)) ** 2
        + _bce(2.0, 0) * _sigmoid(2.0) ** 2
        + _bce(0.3, 0) * _sigmoid(0.3) ** 2
    )
    assert quality_focal_loss(logits, labels, quality).item() == pytest.approx(expected, rel=1e-6)


def test_focal_loss_by_hand():
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3]])
    labels = torch.tensor([0, 2])

    def term(x, positive):
        p = _sigmoid(x)
        return (0.25 * (1 - p) ** 2 * -math.log(p)) if positive else (0.75 * p**2 * -math.log(1 - p))

    expected = term(0.5, True) + term(-1.0, False) + term(2.0, False) + term(0.3, False)
    assert focal_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_detection_losses_by_hand():
    # Query 0 matches a box: pred corners (0.1, 0.1, 0.3, 0.3) vs target (0.2, 0.2, 0.4, 0.4):
    # intersection 0.01, union 0.07, hull 0.09 -> IoU 1/7, GIoU 1/7 - 0.02/0.09.
    boxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]])
    targets = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]])
    logits = torch.tensor([[1.0, -2.0], [-0.5, 0.0]])
    labels = torch.tensor([0, 2])
    positive = torch.tensor([True, False])
    num_boxes = 2.0
    losses = detection_losses(logits, boxes, labels, targets, positive, num_boxes, "quality_focal", (1.0, 5.0, 2.0))
    iou = 1 / 7
    giou = iou - (0.09 - 0.07) / 0.09
    cls = (
        _bce(1.0, iou) * abs(iou - _sigmoid(1.0)) ** 2
        + _bce(-2.0, 0) * _sigmoid(-2.0) ** 2
        + _bce(-0.5, 0) * _sigmoid(-0.5) ** 2
        + _bce(0.0, 0) * _sigmoid(0.0) ** 2
    )
    assert losses["cls"].item() == pytest.approx(1.0 * cls / num_boxes, rel=1e-5)
    assert losses["bbox"].item() == pytest.approx(5.0 * 0.2 / num_boxes, rel=1e-5)  # |0.1| + |0.1| + 0 + 0
    assert losses["iou"].item() == pytest.approx(2.0 * (1 - giou) / num_boxes, rel=1e-5)


def test_no_matches_leaves_only_background_classification():
    logits = torch.tensor([[0.0, 1.0]])
    losses = detection_losses(logits, torch.rand(1, 4), torch.tensor([2]), torch.zeros(1, 4), torch.tensor([False]), 1.0)
    assert losses["bbox"].item() == 0.0 and losses["iou"].item() == 0.0
    assert losses["cls"].item() == pytest.approx(_bce(0.0, 0) * 0.25 + _bce(1.0, 0) * _sigmoid(1.0) ** 2, rel=1e-6)
