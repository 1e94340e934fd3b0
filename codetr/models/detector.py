"""The Co-DINO detector: normalisation, backbone, neck, query head and in-graph top-k.

``CoDINO.forward(images, image_sizes) -> Detections`` is the exported contract: images
[B, 3, H, W] RGB 0-255 (resized and padded on the host), image_sizes [B, 2] int64 (h, w) of the
valid content. Normalisation runs in float32 (float64 for float64 images), then the input is cast
to the parameters' dtype, so ``model.to(torch.float16)`` is all it takes to run in half precision;
scores, boxes and the final top-k stay float32 (see the precision notes of the submodules).

Inputs are checked in ``forward`` (:func:`check_model_inputs`, and the encoder-size check of
:meth:`CoDINO.check_input_size`) with ``torch._check_value``, so a wrong input raises ValueError
naming what is wrong, and torch.export keeps the shape checks as guards on the exported sizes.
"""

from __future__ import annotations

from typing import NamedTuple

from torch.fx.experimental.symbolic_shapes import is_concrete_int

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
        self.num_queries = model.transformer.num_queries
        if self.max_per_img > self.num_queries * self.num_classes:
            raise ValueError(
                f"max_per_img {self.max_per_img} exceeds num_queries x num_classes = {self.num_queries * self.num_classes}"
            )

    @property
    def feature_strides(self) -> list[int]:
        """Stride (input pixels per feature cell) of each level the encoder reads; a level of an
        H x W input has ceil(H / stride) x ceil(W / stride) cells."""
        return self.neck.strides(self.backbone.strides)

    def encoder_tokens(self, height: int, width: int) -> int:
        """Number of encoder tokens (feature cells over all levels) for a padded input of
        height x width pixels. Works on torch.export's symbolic sizes too."""
        return sum((-(-height // stride)) * (-(-width // stride)) for stride in self.feature_strides)

    def min_input_size(self, multiple: int = 1, height: int | None = None) -> int:
        """Smallest side, a multiple of ``multiple``, whose input gives at least ``num_queries``
        encoder tokens (the two-stage query selection takes the top num_queries of them): of a
        square input, or the smallest width for the given ``height``."""
        def enough(steps: int) -> bool:
            side = steps * multiple
            return self.encoder_tokens(side if height is None else height, side) >= self.num_queries

        high = 1  # in multiples; tokens grow with the side, so double, then bisect
        while not enough(high):
            high *= 2
        low = high // 2  # not enough (or 0)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if enough(middle) else (middle, high)
        return high * multiple

    def check_input_size(self, height: int, width: int) -> None:
        """ValueError unless a padded height x width input gives at least ``num_queries`` encoder
        tokens; the message names the smallest sizes that work. Export helpers call it up front."""
        torch._check_value(
            self.encoder_tokens(height, width) >= self.num_queries,
            lambda: (
                f"input size {height}x{width} gives {self.encoder_tokens(height, width)} encoder tokens (feature "
                f"strides {self.feature_strides}), fewer than the model's {self.num_queries} queries: the smallest "
                f"square input that works is {self.min_input_size()}x{self.min_input_size()}"
                + (f", and at height {height} the width must be at least {self.min_input_size(height=height)}"
                   if is_concrete_int(height) else "")
            ),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.query_head.transformer.level_embeds.dtype

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_model_inputs(images, image_sizes)
        self.check_input_size(images.shape[2], images.shape[3])
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


def check_model_inputs(images: torch.Tensor, image_sizes: torch.Tensor) -> None:
    """ValueError unless images is [B, 3, H, W] and image_sizes [B, 2] integer (h, w) with
    1 <= h <= H and 1 <= w <= W for every image (a larger size would place boxes outside the input).

    The shape checks hold under torch.export (guards on the symbolic sizes). The value checks read
    image_sizes, which in an exported graph would be a data-dependent assertion (and, on a GPU, a
    device sync per call): they run in eager mode only; runtimes of exported artifacts check the
    same on the host before the call.
    """
    torch._check_value(images.dim() == 4 and images.shape[1] == 3, lambda: f"images must be [B, 3, H, W], got {list(images.shape)}")
    torch._check_value(
        image_sizes.dim() == 2 and image_sizes.shape[1] == 2 and not image_sizes.is_floating_point() and not image_sizes.is_complex(),
        lambda: f"image_sizes must be [B, 2] integer (h, w), got {list(image_sizes.shape)} {image_sizes.dtype}",
    )
    torch._check_value(
        image_sizes.shape[0] == images.shape[0],
        lambda: f"image_sizes has {image_sizes.shape[0]} rows for a batch of {images.shape[0]} images",
    )
    if torch.compiler.is_compiling():
        return
    height, width = images.shape[2], images.shape[3]
    outside = (image_sizes < 1).any(1) | (image_sizes[:, 0] > height) | (image_sizes[:, 1] > width)
    torch._check_value(
        not bool(outside.any()),
        lambda: (
            f"image_sizes must lie in [1, {height}] x [1, {width}] (the images tensor is {height}x{width}); "
            f"got {image_sizes[outside].tolist()} for image(s) {outside.nonzero().flatten().tolist()}"
        ),
    )


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
