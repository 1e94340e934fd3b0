"""The one interface every runtime implements: pre-processed images in, Detections out."""

from __future__ import annotations

import abc

import torch

from codetr.contract.metadata import ExportMetadata
from codetr.models import Detections


class Runtime(abc.ABC):
    """A Co-DINO model, loaded and ready to run.

    ``runtime(images, image_sizes)`` takes what ``CoDINO.forward`` takes — images [B, 3, H, W]
    float RGB 0-255 (resized and padded by :mod:`codetr.preprocess`), image_sizes [B, 2] int64
    (h, w) of the valid content — and returns :class:`~codetr.models.Detections` as CPU or
    device tensors: boxes [B, K, 4] float32 xyxy in network-input pixels, scores [B, K] float32,
    labels [B, K] int64. ``metadata`` is the export's metadata.json (None for a model that was
    not exported).
    """

    metadata: ExportMetadata | None = None

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        ...


def check_inputs(images: torch.Tensor, image_sizes: torch.Tensor, metadata: ExportMetadata | None = None) -> None:
    """Raise ValueError for inputs a runtime cannot take, before running anything: wrong ranks,
    image sizes larger than the image tensor, and (with ``metadata``) sizes or batches the export
    does not accept."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if tuple(image_sizes.shape) != (images.shape[0], 2):
        raise ValueError(f"image_sizes must be [B, 2] = [{images.shape[0]}, 2], got {tuple(image_sizes.shape)}")
    if metadata is not None:
        metadata.check_images(images.shape)
