"""The one interface every runtime implements: pre-processed images in, Detections out."""

from __future__ import annotations

import abc
from pathlib import Path

import torch

from codetr.models import Detections


class Runtime(abc.ABC):
    """An exported Co-DINO, loaded and ready to run.

    ``runtime(images, image_sizes)`` takes what ``CoDINO.forward`` takes — images [B, 3, H, W]
    float RGB 0-255 (resized and padded by :mod:`codetr.preprocess`), image_sizes [B, 2] int64
    (h, w) of the valid content — and returns :class:`~codetr.models.Detections` as CPU or
    device tensors: boxes [B, K, 4] float32 xyxy in network-input pixels, scores [B, K] float32,
    labels [B, K] int64.
    """

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        ...


def check_inputs(images: torch.Tensor, image_sizes: torch.Tensor) -> None:
    """Raise a clear error for inputs no runtime can take."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if tuple(image_sizes.shape) != (images.shape[0], 2):
        raise ValueError(f"image_sizes must be [B, 2] = [{images.shape[0]}, 2], got {tuple(image_sizes.shape)}")


def load_runtime(path: str | Path, **options) -> Runtime:
    """The runtime for an exported file, chosen by its suffix.

    ``.pt2``: :class:`~codetr.runtime.exported_program.ExportedProgramRuntime`; ``.onnx``:
    :class:`~codetr.runtime.onnxruntime.OnnxRuntime`; ``.engine``/``.plan``: the TensorRT runner
    (:mod:`codetr.runtime.tensorrt`). ``options`` go to the runtime's constructor.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        from codetr.runtime.exported_program import ExportedProgramRuntime

        return ExportedProgramRuntime(path, **options)
    if suffix == ".onnx":
        from codetr.runtime.onnxruntime import OnnxRuntime

        return OnnxRuntime(path, **options)
    if suffix in (".engine", ".plan"):
        from codetr.runtime.tensorrt import TensorRTRuntime

        return TensorRTRuntime(path, **options)
    raise ValueError(f"{path}: unknown model file type {suffix!r}; expected .pt2, .onnx or .engine")
