"""Denoising queries: group layout, noise ranges of positives and negatives, the attention
mask, and per-image determinism (the same sample gets the same noise in any batch)."""

from __future__ import annotations

import torch
from torch import nn

from codetr.models.common import inverse_sigmoid
from codetr.training.denoising import DenoisingSettings, make_denoising_queries


def _targets():
    labels = [torch.tensor([1, 3, 0]), torch.tensor([2])]
    boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.1], [0.6, 0.5, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]]), torch.tensor([[0.4, 0.6, 0.2, 0.2]])]
    return labels, boxes


def _make(labels, boxes, seeds, settings=DenoisingSettings(), group_targets=3):
    torch.manual_seed(0)
    embedding = nn.Embedding(4, 8)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return embedding, make_denoising_queries(labels, boxes, embedding, 5, settings, generators, group_targets)


def test_layout_and_attention_mask():
    labels, boxes = _targets()
    _, dn = _make(labels, boxes, [0, 1])
    assert dn.num_groups == 100 // 3 and dn.group_targets == 3
    size = dn.num_groups * 6
    assert dn.label_query.shape == (2, size, 8) and dn.box_query.shape == (2, size, 4)
    mask = dn.attn_mask
    assert mask.shape == (size + 5, size + 5)
    assert mask[size:, :size].all() and not mask[size:, size:].any()  # matching queries never see denoising ones
    assert not mask[:size, size:].any()  # denoising queries see the matching ones
    group = torch.arange(size) // 6
    assert torch.equal(mask[:size, :size], group[:, None] != group[None, :])
    # image 1 has one box: slots 1, 2 (positives) and 4, 5 (negatives) of each group are zero padding
    padded = dn.label_query[1].view(dn.num_groups, 6, 8)[:, [1, 2, 4, 5]]
    assert not padded.any() and not dn.box_query[1].view(dn.num_groups, 6, 4)[:, [1, 2, 4, 5]].any()
    queries, targets = dn.positive_indices(3, torch.device("cpu"))
    assert queries[:3].tolist() == [0, 1, 2] and queries[3:6].tolist() == [6, 7, 8] and targets[:6].tolist() == [0, 1, 2] * 2


def test_box_noise_ranges():
    labels, boxes = _targets()
    labels, boxes = labels[:1], boxes[:1]
    _, dn = _make(labels, boxes, [3], DenoisingSettings(label_noise_scale=0.0, box_noise_scale=0.4))
    noisy = dn.box_query[0].sigmoid().view(dn.num_groups, 2, 3, 4)
    clean = boxes[0]
    corners = lambda b: torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)  # noqa: E731
    limit = clean[:, 2:].repeat(1, 2) * 0.4 / 2  # box_noise_scale * (w, h, w, h) / 2
    shift = (corners(noisy) - corners(clean)).abs() / limit
    inside = (corners(noisy) > 1e-3) & (corners(noisy) < 1 - 1e-3)  # not clamped at the border
    tolerance = 2e-3  # inverse_sigmoid / sigmoid round trip
    assert (shift[:, 0][inside[:, 0]] <= 1 + tolerance).all()
    negatives = shift[:, 1][inside[:, 1]]
    assert (negatives >= 1 - tolerance).all() and (negatives <= 2 + tolerance).all()


def test_label_noise_rate_and_embedding():
    labels = [torch.zeros(10, dtype=torch.int64)]
    boxes = [torch.full((10, 4), 0.3)]
    embedding, dn = _make(labels, boxes, [5], DenoisingSettings(label_noise_scale=1.0, num_dn_queries=1000), group_targets=10)
    queries = dn.label_query[0].view(-1, 8)
    kept = (queries == embedding.weight[0]).all(-1).float().mean().item()
    # replaced with probability 0.5 by a uniform class of 4 -> label kept with p = 0.5 + 0.5 / 4
    assert abs(kept - 0.625) < 0.05
    assert torch.allclose(dn.box_query[0, 0], inverse_sigmoid(dn.box_query[0, 0].sigmoid()), atol=1e-4)


def test_noise_depends_only_on_the_sample_seed():
    labels, boxes = _targets()
    _, together = _make(labels, boxes, [11, 12])
    _, alone = _make(labels[1:], boxes[1:], [12])
    assert torch.equal(together.box_query[1], alone.box_query[0])
    assert torch.equal(together.label_query[1], alone.label_query[0])
    _, other_seed = _make(labels[1:], boxes[1:], [13])
    assert not torch.equal(other_seed.box_query[0], alone.box_query[0])


def test_no_boxes_no_queries():
    _, dn = _make([torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, 4)], [0], group_targets=0)
    assert dn is None
