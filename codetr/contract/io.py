"""Names of the exported model's inputs and outputs, the same in every artifact.

Inputs: ``images`` [B, 3, H, W] float32 RGB 0-255 (resized and padded on the host),
``image_sizes`` [B, 2] int64 (h, w) of the valid content. Outputs: ``boxes`` [B, K, 4] float32
(x1, y1, x2, y2) in network-input pixels, ``scores`` [B, K] float32 sigmoid scores, descending,
``labels`` [B, K] int64 class indices; K = the config's ``max_per_img``.
"""

from __future__ import annotations

import torch

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels")


def check_model_inputs(images: torch.Tensor, image_sizes: torch.Tensor) -> None:
    """Raise ValueError unless ``images`` and ``image_sizes`` are inputs every
    artifact accepts: images [B, 3, H, W] floating point, image_sizes [B, 2] integer with each
    (h, w) in 1..H, 1..W (the valid content lies inside the tensor; a larger size would place
    boxes and sampling locations outside the input). The one check the model and every runtime run.

    Reads image_sizes' values, so on a GPU it synchronises; call it outside traced code.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor (RGB 0-255), got {images.dtype}")
    batch, _, height, width = images.shape
    if tuple(image_sizes.shape) != (batch, 2):
        raise ValueError(f"image_sizes must be [B, 2] = [{batch}, 2], got {tuple(image_sizes.shape)}")
    if image_sizes.is_floating_point() or image_sizes.is_complex() or image_sizes.dtype == torch.bool:
        raise ValueError(f"image_sizes must be an integer tensor of (h, w) pixels, got {image_sizes.dtype}")
    for index, (size_h, size_w) in enumerate(image_sizes.tolist()):
        if not (1 <= size_h <= height and 1 <= size_w <= width):
            raise ValueError(
                f"image_sizes[{index}] = ({size_h}, {size_w}) does not fit the {height}x{width} images tensor: "
                f"each (h, w) is the valid content of its image, 1 <= h <= {height} and 1 <= w <= {width}"
            )
