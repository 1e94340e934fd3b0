"""Host-side pre-processing matching the official Co-DETR test pipelines.

``Resize(scale, keep_ratio=True)``: the image is scaled by
min(long_limit / long_edge, short_limit / short_edge), sizes rounded as mmcv does
(``int(x * s + 0.5)``), bilinear (``align_corners=False``, no antialias, like cv2.INTER_LINEAR),
rounded back to integer intensities like the uint8 cv2 output. Then the batch is padded
bottom/right to the fixed LSJ size or to the largest image rounded up to ``size_divisor``, with
the config's pad colour (``"mean"`` pads with the normalisation mean, i.e. 0 after normalising).
Mean/std normalisation is not done here: it is inside the model, which takes RGB 0-255.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codetr.config import PreprocessConfig


@dataclass(frozen=True)
class Batch:
    """images [B, 3, H, W] float32 RGB 0-255, padded; image_sizes [B, 2] int64 (h, w) handed to
    the model (the resized content, or the whole canvas when the config does not mask padding);
    scale_factors [B, 2] float64 (w_scale, h_scale) = resized / original; original_sizes [B, 2]
    int64 (h, w)."""

    images: torch.Tensor
    image_sizes: torch.Tensor
    scale_factors: torch.Tensor
    original_sizes: torch.Tensor


def rescaled_size(height: int, width: int, scale: tuple[int, int], canvas: tuple[int, int] | None = None) -> tuple[int, int]:
    """mmcv ``rescale_size`` with keep_ratio: the largest (h, w) fitting the (long, short) limits
    of ``scale``, and, when a fixed ``canvas`` (h, w) is given, fitting inside it too.

    The limits are orientation-free, so on a non-square canvas (a static export of 768x1152, say)
    a portrait image would overflow what a landscape one fills: it is shrunk further to fit. With
    the official configs (scale equal to a square canvas) the canvas never shrinks anything.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    if canvas is not None:
        factor = min(factor, canvas[0] / height, canvas[1] / width)
    resized = int(height * factor + 0.5), int(width * factor + 0.5)
    if canvas is not None:
        resized = min(resized[0], canvas[0]), min(resized[1], canvas[1])
    return max(resized[0], 1), max(resized[1], 1)


def resize_keep_ratio(image: torch.Tensor, scale: tuple[int, int], canvas: tuple[int, int] | None = None) -> torch.Tensor:
    """[3, H, W] uint8 or float 0-255 -> [3, h, w] float32 with integer intensities, (h, w) from
    :func:`rescaled_size`."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    height, width = rescaled_size(image.shape[1], image.shape[2], scale, canvas)
    resized = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].round().clamp(0, 255)


def make_batch(images: Sequence[torch.Tensor], config: PreprocessConfig) -> Batch:
    """Resizes and pads a list of [3, H_i, W_i] RGB images (any sizes) into one batch."""
    if not images:
        raise ValueError("make_batch needs at least one image")
    resized = [resize_keep_ratio(image, config.scale, config.pad_size) for image in images]
    heights = [image.shape[1] for image in resized]
    widths = [image.shape[2] for image in resized]
    if config.pad_size is not None:
        canvas_height, canvas_width = config.pad_size
    else:
        divisor = config.size_divisor
        canvas_height = -(-max(heights) // divisor) * divisor
        canvas_width = -(-max(widths) // divisor) * divisor
        if config.pad_min_size is not None:
            canvas_height, canvas_width = max(canvas_height, config.pad_min_size[0]), max(canvas_width, config.pad_min_size[1])
    pad_colour = torch.tensor(config.pad_colour, dtype=torch.float32).view(3, 1, 1)
    batch = pad_colour.expand(len(images), 3, canvas_height, canvas_width).clone()
    for index, image in enumerate(resized):
        batch[index, :, : image.shape[1], : image.shape[2]] = image
    resized_sizes = torch.tensor(list(zip(heights, widths)), dtype=torch.int64)
    original_sizes = torch.tensor([(image.shape[1], image.shape[2]) for image in images], dtype=torch.int64)
    scale_factors = (resized_sizes.double() / original_sizes.double()).flip(-1)
    if config.mask_padding:
        image_sizes = resized_sizes
    else:
        image_sizes = torch.tensor([[canvas_height, canvas_width]] * len(images), dtype=torch.int64)
    return Batch(batch, image_sizes, scale_factors, original_sizes)
