"""The Co-DINO detector: normalisation, backbone, neck, query head and in-graph top-k.

``CoDINO.forward(images, image_sizes) -> Detections`` is the exported contract: images
[B, 3, H, W] RGB 0-255 (resized and padded on the host), image_sizes [B, 2] int64 (h, w) of the
valid content. Normalisation runs in float32 (float64 for float64 images), then the input is cast
to the parameters' dtype, so ``model.to(torch.float16)`` is all it takes to run in half precision;
scores, boxes and the final top-k stay float32 (see the precision notes of the submodules).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from codetr.config import ModelConfig, PreprocessConfig
from codetr.models.head import CoDINOHead, TrainOutputs
from codetr.models.neck import ChannelMapper
from codetr.models.resnet import ResNetBackbone
from codetr.models.swin import SwinTransformer


class Detections(NamedTuple):
    """boxes [B, K, 4] float32 (x1, y1, x2, y2) in network-input pixels; scores [B, K] float32;
    labels [B, K] int64; K = max_per_img, sorted by descending score."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


class CoDINO(nn.Module):
    def __init__(self, model: ModelConfig, preprocess: PreprocessConfig) -> None:
        super().__init__()
        if model.swin is not None:
            self.backbone: nn.Module = SwinTransformer(model.swin)
        else:
            assert model.resnet is not None
            self.backbone = ResNetBackbone(model.resnet)
        if list(self.backbone.out_channels) != list(model.neck.in_channels):
            raise ValueError(
                f"neck.in_channels {list(model.neck.in_channels)} do not match the backbone outputs "
                f"{list(self.backbone.out_channels)}"
            )
        self.neck = ChannelMapper(model.neck)
        self.query_head = CoDINOHead(model.transformer, model.num_classes)
        self.num_classes = model.num_classes
        self.max_per_img = model.max_per_img
        # Plain floats, not buffers: they come from the config (never a checkpoint) and must
        # stay float32 when the model is cast to half precision.
        self.pixel_mean = tuple(preprocess.mean)
        self.pixel_std = tuple(preprocess.std)

    @property
    def dtype(self) -> torch.dtype:
        return self.query_head.transformer.level_embeds.dtype

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        compute_dtype = torch.promote_types(images.dtype, torch.float32)
        mean = torch.tensor(self.pixel_mean, dtype=compute_dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, dtype=compute_dtype, device=images.device).view(1, 3, 1, 1)
        normalised = ((images.to(compute_dtype) - mean) / std).to(self.dtype)
        features = self.neck(self.backbone(normalised))
        logits, boxes = self.query_head(features, image_sizes, (images.shape[2], images.shape[3]))
        return select_detections(logits, boxes, image_sizes, self.max_per_img)

    def forward_train(
        self,
        images: torch.Tensor,
        image_sizes: torch.Tensor,
        dn_label_query: torch.Tensor | None = None,
        dn_box_query: torch.Tensor | None = None,
        self_attn_mask: torch.Tensor | None = None,
    ) -> TrainOutputs:
        """The training path: same inputs as :meth:`forward` plus optional denoising queries
        (see :meth:`CoDINOHead.forward_train`); returns every output the losses need."""
        features = self.neck(self.backbone(self.normalise(images)))
        size = (images.shape[2], images.shape[3])
        return self.query_head.forward_train(features, image_sizes, size, dn_label_query, dn_box_query, self_attn_mask)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(images - mean) / std in float32, cast to the parameters' dtype (as in :meth:`forward`,
        which keeps its own copy of these lines so its traced graph stays as it is)."""
        mean = torch.tensor(self.pixel_mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        return ((images.float() - mean) / std).to(self.dtype)


def select_detections(logits: torch.Tensor, boxes: torch.Tensor, image_sizes: torch.Tensor, max_per_img: int) -> Detections:
    """Top-k over queries x classes of sigmoid scores (mmdet ``CoDINOHead`` test path).

    logits [B, Q, N]; boxes [B, Q, 4] normalised (cx, cy, w, h); image_sizes [B, 2] (h, w).
    Boxes become xyxy pixels of the valid region, clamped to it.
    """
    num_classes = logits.shape[-1]
    scores, indices = logits.float().sigmoid().flatten(1).topk(max_per_img, dim=1)
    labels = indices % num_classes
    queries = torch.div(indices, num_classes, rounding_mode="floor")
    chosen = torch.gather(boxes.float(), 1, queries[..., None].expand(-1, -1, 4))
    centre, size = chosen[..., :2], chosen[..., 2:]
    corners = torch.cat([centre - 0.5 * size, centre + 0.5 * size], -1)
    height_width = image_sizes.to(torch.float32)
    scale = torch.stack([height_width[:, 1], height_width[:, 0]] * 2, -1)[:, None]
    corners = torch.minimum((corners * scale).clamp(min=0), scale)
    return Detections(corners, scores, labels)
