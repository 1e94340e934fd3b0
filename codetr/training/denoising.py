"""DINO's contrastive denoising queries (mmdet 3.x ``CdnQueryGenerator``).

Co-DINO sets ``dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0,
group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100))`` (mmdetection 3.x
``projects/CO-DETR/configs/codino/co_dino_5scale_r50_lsj_8xb2_1x_coco.py``). With G the largest
number of ground-truth boxes of an image in the (global) batch there are
``max(1, 100 // G)`` groups of 2G queries: G positives (the boxes with noise inside half their
size) then G negatives (noise between one half and one times their size); each label is
replaced by a random class with probability label_noise_scale / 2. Boxes are perturbed as
corners: xyxy + u * (w, h, w, h) * box_noise_scale / 2, u uniform with a random sign, |u| in
[0, 1) for positives and [1, 2) for negatives, clamped to [0, 1]. Slots beyond an image's own
boxes stay zero queries and count as background. The attention mask keeps the matching queries
from seeing any denoising query and each group from seeing the others.

Noise is drawn per image from its own generator, so a sample gets the same noise whichever
process or batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import box_convert

from codetr.models.common import inverse_sigmoid


@dataclass(frozen=True)
class DenoisingSettings:
    label_noise_scale: float = 0.5
    box_noise_scale: float = 1.0
    num_dn_queries: int = 100


@dataclass
class DenoisingQueries:
    """label_query [B, N_dn, C]; box_query [B, N_dn, 4] inverse-sigmoid (cx, cy, w, h);
    attn_mask [N_dn + Q, N_dn + Q] bool (True = blocked); N_dn = num_groups * 2 * group_targets.
    Query g * 2 * group_targets + j (j < n_b) is group g's positive for image b's box j."""

    label_query: torch.Tensor
    box_query: torch.Tensor
    attn_mask: torch.Tensor
    num_groups: int
    group_targets: int

    @property
    def num_queries(self) -> int:
        return self.num_groups * 2 * self.group_targets

    def positive_indices(self, num_targets: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(query indices, gt indices) of an image's positive queries, all groups."""
        boxes = torch.arange(num_targets, device=device)
        starts = torch.arange(self.num_groups, device=device)[:, None] * 2 * self.group_targets
        return (starts + boxes).flatten(), boxes.repeat(self.num_groups)


def make_denoising_queries(
    gt_labels: list[torch.Tensor],
    gt_boxes: list[torch.Tensor],
    label_embedding: nn.Embedding,
    num_matching_queries: int,
    settings: DenoisingSettings,
    generators: list[torch.Generator],
    group_targets: int,
) -> DenoisingQueries | None:
    """Builds the denoising queries of a batch.

    gt_labels [n_b] int64 and gt_boxes [n_b, 4] normalised (cx, cy, w, h) per image;
    generators: one CPU generator per image; group_targets: the largest n_b of the global batch
    (all ranks), so every process builds groups of the same size. None when no image has a box.
    """
    if group_targets == 0:
        return None
    num_groups = max(1, settings.num_dn_queries // group_targets)
    num_classes, dims = label_embedding.weight.shape
    device = label_embedding.weight.device
    batch = len(gt_labels)
    size = num_groups * 2 * group_targets
    labels = torch.zeros(batch, num_groups, 2, group_targets, dtype=torch.int64)
    boxes = torch.zeros(batch, num_groups, 2, group_targets, 4)
    valid = torch.zeros(batch, num_groups, 2, group_targets, dtype=torch.bool)
    for b, (image_labels, image_boxes, generator) in enumerate(zip(gt_labels, gt_boxes, generators)):
        count = len(image_labels)
        if count == 0:
            continue
        noisy_labels = image_labels.cpu().expand(num_groups, 2, count).clone()
        replace = torch.rand(noisy_labels.shape, generator=generator) < settings.label_noise_scale * 0.5
        random_labels = torch.randint(0, num_classes, noisy_labels.shape, generator=generator)
        labels[b, :, :, :count] = torch.where(replace, random_labels, noisy_labels)
        clean = image_boxes.cpu().float()
        corners = box_convert(clean, "cxcywh", "xyxy").expand(num_groups, 2, count, 4)
        magnitude = torch.rand(corners.shape, generator=generator)
        magnitude[:, 1] += 1.0
        sign = torch.randint(0, 2, corners.shape, generator=generator).float() * 2 - 1
        whwh = clean[:, 2:].repeat(1, 2)
        noisy = (corners + sign * magnitude * whwh * settings.box_noise_scale / 2).clamp(0, 1)
        boxes[b, :, :, :count] = box_convert(noisy, "xyxy", "cxcywh")
        valid[b, :, :, :count] = True
    labels = labels.view(batch, size).to(device)
    valid = valid.view(batch, size, 1).to(device)
    label_query = label_embedding(labels) * valid
    box_query = inverse_sigmoid(boxes.view(batch, size, 4).to(device)) * valid
    return DenoisingQueries(label_query, box_query, _attention_mask(num_groups, group_targets, num_matching_queries, device), num_groups, group_targets)


def _attention_mask(num_groups: int, group_targets: int, num_matching: int, device: torch.device) -> torch.Tensor:
    group_size = 2 * group_targets
    num_dn = num_groups * group_size
    total = num_dn + num_matching
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True  # matching queries do not see the answers
    group = torch.arange(num_dn, device=device) // group_size
    mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
    return mask
