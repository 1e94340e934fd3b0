"""The one interface every runtime implements: pre-processed images in, Detections out."""

from __future__ import annotations

import abc
from pathlib import Path

import torch

from codetr.contract.metadata import ExportMetadata
from codetr.models import Detections, check_model_inputs


class Runtime(abc.ABC):
    """A Co-DINO model, loaded and ready to run.

    ``runtime(images, image_sizes)`` takes what ``CoDINO.forward`` takes — images [B, 3, H, W]
    float RGB 0-255 (resized and padded by :mod:`codetr.preprocess`), image_sizes [B, 2] int64
    (h, w) of the valid content — and returns :class:`~codetr.models.Detections` as CPU or
    device tensors: boxes [B, K, 4] float32 xyxy in network-input pixels, scores [B, K] float32,
    labels [B, K] int64. Inputs are checked with :func:`check_inputs` first (ValueError naming
    the allowed values). ``metadata`` is the export's metadata.json (None for a model that was
    not exported, or an artifact loaded without its metadata); ``device`` is where it computes.
    """

    metadata: ExportMetadata | None = None
    device: torch.device = torch.device("cpu")

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        ...


def check_inputs(images: torch.Tensor, image_sizes: torch.Tensor, metadata: ExportMetadata | None = None) -> None:
    """Raise ValueError for inputs a runtime cannot take, before running anything: wrong ranks or
    dtypes, image sizes outside the image tensor (:func:`codetr.models.check_model_inputs`),
    and with ``metadata`` a batch, height or width the export does not accept
    (:meth:`ExportMetadata.check_images`: the message names the allowed batch, range or multiple)."""
    check_model_inputs(images, image_sizes)
    if metadata is not None:
        metadata.check_images(images.shape)


InputSpec = tuple[str, str, list[int | str]]
"""An input as a model declares it: name, dtype name ("float32", "int64"), shape (a dynamic
dimension as a name)."""


def check_described_inputs(metadata: ExportMetadata, inputs: list[InputSpec], where: str) -> None:
    """Raise ValueError naming ``where`` and the metadata.json unless the model's ``inputs`` are the
    ones metadata.json lists (its ``inputs``: names in order, dtypes, each dimension it fixes or
    leaves dynamic), so a metadata.json copied from another export is caught at load time, not
    by the model's own error at the first run. A dimension the model leaves dynamic accepts any
    size the metadata fixes; one the metadata leaves dynamic must be dynamic in the model too.
    Nothing to check when the metadata lists no inputs."""
    described = [(spec.get("name"), spec.get("dtype"), list(spec.get("shape", ())))
                 for spec in metadata.document.get("inputs", ())]
    if not described:
        return
    fits = [name for name, _, _ in inputs] == [name for name, _, _ in described] and all(
        dtype == expected_dtype and len(shape) == len(expected_shape)
        and all(isinstance(have, str) or (isinstance(want, int) and have == want) for have, want in zip(shape, expected_shape))
        for (_, dtype, shape), (_, expected_dtype, expected_shape) in zip(inputs, described)
    )
    if not fits:
        def listing(specs: list[InputSpec]) -> str:
            return ", ".join(f"{name} {dtype} {shape}" for name, dtype, shape in specs)

        raise ValueError(
            f"{metadata.path or 'metadata.json'} does not describe {where}: the metadata lists inputs "
            f"{listing(described)} but the model takes {listing(inputs)}; was metadata.json copied from "
            "another export? Keep each export's files together"
        )


def unreadable(path: Path, what: str, reason: object) -> ValueError:
    """The error of a model file that exists but cannot be read as ``what`` (e.g. "ONNX model"):
    names the file, guesses the usual cause, and keeps the first line of the library's ``reason``."""
    short = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return ValueError(f"{path} is not a readable {what} (truncated or damaged?): {short}; re-export it or copy it again")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device with an index for CUDA (default: cuda if a GPU is visible, else
    cpu). ValueError naming the device when it asks for a GPU that is not there."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {str(device)!r} is not a device name (e.g. cpu, cuda, cuda:1): {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: no CUDA GPU is visible to torch (torch {torch.__version__}); use --device cpu")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise ValueError(f"device {device}: codetr runs on cpu or cuda")
    return device
