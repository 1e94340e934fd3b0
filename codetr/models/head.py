"""Co-DINO query head (inference path): masks, positional encodings, transformer, final branches.

Layout (prefix ``query_head.``): ``transformer.*`` (see :mod:`codetr.models.transformer`),
``cls_branches.{0..D}`` (Linear C -> num_classes) and ``reg_branches.{0..D}.{0,2,4}``
(Linear-ReLU-Linear-ReLU-Linear C -> 4), D = number of decoder layers: branch i < D follows
decoder layer i, branch D scores the encoder proposals. The denoising label embedding
``label_embedding`` ([num_classes, C], Sense-X's name) exists only after
:meth:`CoDINOHead.add_label_embedding` (training); the aux-head feature ``downsample`` and the
ATSS / RPN / RoI heads are not built (Co-DINO's auxiliary heads are out of scope).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from typing import NamedTuple

from torch import nn

from codetr.config import TransformerConfig
from codetr.models.common import inverse_sigmoid
from codetr.models.positional_encoding import sine_mask_encoding
from codetr.models.transformer import CoDinoTransformer


def _reg_branch(dims: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dims, dims), nn.ReLU(), nn.Linear(dims, dims), nn.ReLU(), nn.Linear(dims, 4))


def padding_masks(image_sizes: torch.Tensor, height: int, width: int, feature_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Per-level padding masks [B, H_l, W_l] bool (True = padding), nearest-downsampled from the
    pixel mask of the valid (h, w) region as mmdet does. image_sizes [B, 2] int64 (h, w)."""
    device = image_sizes.device
    rows = torch.arange(height, device=device)[None, :, None] >= image_sizes[:, 0, None, None]
    cols = torch.arange(width, device=device)[None, None, :] >= image_sizes[:, 1, None, None]
    pixel_mask = (rows | cols).float()[None]
    return [F.interpolate(pixel_mask, size=size, mode="nearest")[0].bool() for size in feature_sizes]


class TrainOutputs(NamedTuple):
    """What the training losses need, all float32; boxes are sigmoid (cx, cy, w, h) normalised
    by each image's valid size. N_dn denoising queries come before the Q matching queries.

    logits [D, B, N_dn + Q, num_classes] and boxes [D, B, N_dn + Q, 4]: every decoder layer;
    enc_logits [B, Q, num_classes] and enc_boxes [B, Q, 4]: the selected encoder proposals.
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    enc_logits: torch.Tensor
    enc_boxes: torch.Tensor


class CoDINOHead(nn.Module):
    def __init__(self, config: TransformerConfig, num_classes: int) -> None:
        super().__init__()
        dims = config.embed_dims
        self.pos_temperature = config.pos_temperature
        self.transformer = CoDinoTransformer(config)
        self.cls_branches = nn.ModuleList(nn.Linear(dims, num_classes) for _ in range(config.decoder_layers + 1))
        self.reg_branches = nn.ModuleList(_reg_branch(dims) for _ in range(config.decoder_layers + 1))
        self.num_classes = num_classes
        self.label_embedding: nn.Embedding | None = None

    def add_label_embedding(self) -> nn.Embedding:
        """Creates the denoising label embedding (training only; inference never builds it)."""
        if self.label_embedding is None:
            weight = self.transformer.level_embeds
            self.label_embedding = nn.Embedding(self.num_classes, weight.shape[1], device=weight.device, dtype=weight.dtype)
        return self.label_embedding

    def forward(self, features: list[torch.Tensor], image_sizes: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, C, H_l, W_l]; image_sizes [B, 2] int64 (h, w); input_size = padded (H, W).

        Returns class logits [B, Q, num_classes] float32 and boxes [B, Q, 4] float32, normalised
        (cx, cy, w, h) relative to each image's valid size.
        """
        masks = padding_masks(image_sizes, input_size[0], input_size[1], [(f.shape[2], f.shape[3]) for f in features])
        positions = [sine_mask_encoding(mask, features[0].shape[1] // 2, self.pos_temperature) for mask in masks]
        state, boxes_in, _, _ = self.transformer(features, masks, positions, self.cls_branches, self.reg_branches)
        last = len(self.transformer.decoder.layers) - 1
        logits = self.cls_branches[last](state).float()
        boxes = (self.reg_branches[last](state).float() + inverse_sigmoid(boxes_in)).sigmoid()
        return logits, boxes

    def forward_train(
        self,
        features: list[torch.Tensor],
        image_sizes: torch.Tensor,
        input_size: tuple[int, int],
        dn_label_query: torch.Tensor | None = None,
        dn_box_query: torch.Tensor | None = None,
        self_attn_mask: torch.Tensor | None = None,
    ) -> TrainOutputs:
        """Training path (mmdet ``DINOHead.forward`` + ``DINO.pre_decoder``); arguments as in
        :meth:`forward` plus the denoising queries of
        :meth:`codetr.models.transformer.CoDinoTransformer.forward_train`."""
        masks = padding_masks(image_sizes, input_size[0], input_size[1], [(f.shape[2], f.shape[3]) for f in features])
        positions = [sine_mask_encoding(mask, features[0].shape[1] // 2, self.pos_temperature) for mask in masks]
        states, references, enc_logits, enc_boxes = self.transformer.forward_train(
            features, masks, positions, self.cls_branches, self.reg_branches, dn_label_query, dn_box_query, self_attn_mask
        )
        logits = torch.stack([self.cls_branches[i](state).float() for i, state in enumerate(states)])
        boxes = torch.stack(
            [(self.reg_branches[i](state).float() + inverse_sigmoid(references[i])).sigmoid() for i, state in enumerate(states)]
        )
        return TrainOutputs(logits, boxes, enc_logits.float(), enc_boxes.float())
