"""The training objective of Co-DINO's query head: matching plus losses over every output set.

Terms (mmdet ``DINOHead`` names): ``enc_loss_*`` on the selected encoder proposals (two-stage),
``d{i}.loss_*`` on decoder layer i < D-1 and ``loss_*`` on the last, ``d{i}.dn_loss_*`` /
``dn_loss_*`` on the denoising queries of each layer, each with * in cls, bbox, iou. Matching
queries are matched per output set by :func:`codetr.training.matcher.match_batch`; denoising
positives are assigned by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from codetr.config import TrainConfig
from codetr.models import CoDINO
from codetr.training.denoising import DenoisingSettings, make_denoising_queries
from codetr.training.losses import detection_losses
from codetr.training.matcher import MatchCosts, match_batch


@dataclass(frozen=True)
class GlobalCounts:
    """Batch-wide counts all processes agree on (all-reduced by the trainer): the number of
    ground-truth boxes of the global batch, the number of processes, the largest box count
    of one image (the denoising group size)."""

    num_boxes: int
    world_size: int
    group_targets: int


class TrainingObjective(nn.Module):
    """Wraps the deployment :class:`CoDINO` (run in train mode) so that DDP sees one forward
    that returns the loss. ``forward(...) -> (total loss, {term: value})``; each rank's terms
    are normalised by the global box count / world size, so averaging gradients over ranks
    equals one process on the whole batch."""

    def __init__(self, model: CoDINO, train: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.label_embedding = model.query_head.add_label_embedding()
        self.costs = MatchCosts(train.match_cls_weight, train.match_bbox_weight, train.match_iou_weight)
        self.weights = (train.loss_cls_weight, train.loss_bbox_weight, train.loss_iou_weight)
        self.classification = train.classification_loss
        self.denoising = DenoisingSettings(train.label_noise_scale, train.box_noise_scale, train.num_dn_queries)

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: torch.Tensor,
        gt_labels: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
        seeds: list[int],
        counts: GlobalCounts,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        num_queries = self.model.query_head.transformer.num_queries
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        dn = make_denoising_queries(
            gt_labels, gt_boxes, self.label_embedding, num_queries, self.denoising, generators, counts.group_targets
        )
        if dn is None:
            outputs = self.model.forward_train(images, image_sizes)
            num_dn = 0
        else:
            outputs = self.model.forward_train(images, image_sizes, dn.label_query, dn.box_query, dn.attn_mask)
            num_dn = dn.num_queries
        normaliser = max(counts.num_boxes, 1) / counts.world_size
        match_logits = torch.cat([outputs.logits[:, :, num_dn:], outputs.enc_logits[None]])
        match_boxes = torch.cat([outputs.boxes[:, :, num_dn:], outputs.enc_boxes[None]])
        matches = match_batch(match_logits, match_boxes, gt_labels, gt_boxes, self.costs)
        num_layers = outputs.logits.shape[0]
        terms: dict[str, torch.Tensor] = {}
        for index, set_matches in enumerate(matches):
            prefix = "enc_" if index == num_layers else ("" if index == num_layers - 1 else f"d{index}.")
            losses = self._set_losses(match_logits[index], match_boxes[index], set_matches, gt_labels, gt_boxes, normaliser)
            terms.update({f"{prefix}loss_{name}": value for name, value in losses.items()})
        if dn is not None:
            device = images.device
            dn_matches = [dn.positive_indices(len(labels), device) for labels in gt_labels]
            dn_normaliser = normaliser * dn.num_groups
            for index in range(num_layers):
                prefix = "" if index == num_layers - 1 else f"d{index}."
                losses = self._set_losses(
                    outputs.logits[index, :, :num_dn], outputs.boxes[index, :, :num_dn], dn_matches, gt_labels, gt_boxes, dn_normaliser
                )
                terms.update({f"{prefix}dn_loss_{name}": value for name, value in losses.items()})
        total = sum(terms.values())
        if dn is None:  # keep every parameter in the graph for DDP
            total = total + 0.0 * self.label_embedding.weight.sum()
        return total, terms

    def _set_losses(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        matches: list[tuple[torch.Tensor, torch.Tensor]],
        gt_labels: list[torch.Tensor],
        gt_boxes: list[torch.Tensor],
        normaliser: float,
    ) -> dict[str, torch.Tensor]:
        """logits [B, Q, C], boxes [B, Q, 4]; matches per image (query idx, gt idx)."""
        batch, queries, num_classes = logits.shape
        device = logits.device
        flat_queries = torch.cat([q.to(device) + b * queries for b, (q, _) in enumerate(matches)])
        labels = torch.full((batch * queries,), num_classes, dtype=torch.int64, device=device)
        labels[flat_queries] = torch.cat([gt_labels[b][g.to(device)] for b, (_, g) in enumerate(matches)])
        target_boxes = torch.zeros(batch * queries, 4, device=device)
        target_boxes[flat_queries] = torch.cat([gt_boxes[b][g.to(device)].float() for b, (_, g) in enumerate(matches)])
        positive = torch.zeros(batch * queries, dtype=torch.bool, device=device)
        positive[flat_queries] = True
        return detection_losses(
            logits.reshape(-1, num_classes), boxes.reshape(-1, 4), labels, target_boxes, positive, normaliser, self.classification, self.weights
        )
