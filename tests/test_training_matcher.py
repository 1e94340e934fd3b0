"""Hungarian matching: the assignment is the brute-force optimum; the costs follow mmdet's
FocalLossCost / BBoxL1Cost / IoUCost formulas, recomputed here in float64 by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from codetr.training.matcher import MatchCosts, hungarian_match, match_batch, match_cost


def _random_case(seed: int, queries: int, targets: int, classes: int = 4):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(queries, classes, generator=generator) * 2
    centres = torch.rand(queries, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(queries, 2, generator=generator) * 0.3 + 0.05
    gt_labels = torch.randint(0, classes, (targets,), generator=generator)
    gt_centres = torch.rand(targets, 2, generator=generator) * 0.6 + 0.2
    gt_sizes = torch.rand(targets, 2, generator=generator) * 0.3 + 0.05
    return logits, torch.cat([centres, sizes], 1), gt_labels, torch.cat([gt_centres, gt_sizes], 1)


def _corners(box):
    cx, cy, w, h = box
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _giou(a, b) -> float:
    ax1, ay1, ax2, ay2 = _corners(a)
    bx1, by1, bx2, by2 = _corners(b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def test_cost_is_the_official_formula():
    logits, boxes, gt_labels, gt_boxes = _random_case(0, 4, 3)
    costs = MatchCosts(cls=2.0, bbox=5.0, iou=2.0)
    cost = match_cost(logits, boxes, gt_labels, gt_boxes, costs)
    for q in range(4):
        for g in range(3):
            p = 1 / (1 + math.exp(-float(logits[q, gt_labels[g]])))
            positive = -math.log(p + 1e-12) * 0.25 * (1 - p) ** 2
            negative = -math.log(1 - p + 1e-12) * 0.75 * p**2
            l1 = sum(abs(float(boxes[q, i]) - float(gt_boxes[g, i])) for i in range(4))
            giou = _giou(boxes[q].tolist(), gt_boxes[g].tolist())
            expected = 2.0 * (positive - negative) + 5.0 * l1 - 2.0 * giou
            assert cost[q, g].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed,queries,targets", [(1, 5, 3), (2, 6, 4), (3, 4, 4), (4, 6, 1), (5, 3, 5)])
def test_assignment_equals_brute_force(seed, queries, targets):
    logits, boxes, gt_labels, gt_boxes = _random_case(seed, queries, targets)
    cost = match_cost(logits, boxes, gt_labels, gt_boxes, MatchCosts()).double()
    rows, cols = hungarian_match(cost)
    assert len(rows) == min(queries, targets)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    best = math.inf
    if targets <= queries:
        for chosen in itertools.permutations(range(queries), targets):
            best = min(best, sum(cost[q, g].item() for g, q in enumerate(chosen)))
    else:
        for chosen in itertools.permutations(range(targets), queries):
            best = min(best, sum(cost[q, g].item() for q, g in enumerate(chosen)))
    assert cost[rows, cols].sum().item() == pytest.approx(best, rel=1e-9)


def test_batch_matching_matches_each_set_alone():
    sets, batch, queries = 3, 2, 6
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(sets, batch, queries, 4, generator=generator)
    boxes = torch.rand(sets, batch, queries, 4, generator=generator) * 0.4 + 0.1
    gt_labels = [torch.tensor([0, 2]), torch.tensor([3, 1, 1])]
    gt_boxes = [torch.rand(2, 4, generator=generator) * 0.4 + 0.1, torch.rand(3, 4, generator=generator) * 0.4 + 0.1]
    matched = match_batch(logits, boxes, gt_labels, gt_boxes, MatchCosts())
    for s in range(sets):
        for b in range(batch):
            alone = hungarian_match(match_cost(logits[s, b], boxes[s, b], gt_labels[b], gt_boxes[b], MatchCosts()))
            assert torch.equal(matched[s][b][0], alone[0]) and torch.equal(matched[s][b][1], alone[1])
