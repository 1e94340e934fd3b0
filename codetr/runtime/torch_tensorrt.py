"""Running a Torch-TensorRT compiled program (``model_torch_tensorrt.pt2``) on a CUDA GPU.

The file is an ExportedProgram whose TensorRT segments are serialized engines (saved by
:func:`codetr.tensorrt.torch_tensorrt.save_compiled`). Loading it needs ``torch-tensorrt``; a
program compiled in FULL mode also needs our MSDA plugin library registered before its engines
deserialize, a HYBRID one needs ``torch.ops.codetr.msda`` (registered by importing codetr.ops).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

import codetr.ops  # noqa: F401  registers torch.ops.codetr.msda, which hybrid programs call
from codetr.contract.metadata import ExportMetadata
from codetr.models import Detections
from codetr.models.precision import tf32
from codetr.runtime.base import Runtime, check_inputs, resolve_device, unreadable
from codetr.tensorrt.backend import import_tensorrt
from codetr.tensorrt.plugin import register_available_plugin


class TorchTensorRTRuntime(Runtime):
    """A Torch-TensorRT program, loaded and ready to call on ``device`` (default: the current GPU).

    ``plugin_library``: our MSDA plugin library (default: the package's copy, registered when
    present). Raises FileNotFoundError for a missing file, ValueError for a damaged one or without a GPU and
    ImportError without ``torch-tensorrt``.
    """

    def __init__(
        self,
        path: str | Path,
        metadata: ExportMetadata | None = None,
        *,
        device: str | torch.device | None = None,
        plugin_library: str | Path | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no Torch-TensorRT program at {path}")
        if not zipfile.is_zipfile(path):
            raise unreadable(path, "Torch-TensorRT program", "not a zip archive")
        if not torch.cuda.is_available():
            raise ValueError("a Torch-TensorRT program needs a CUDA GPU; none is visible to torch")
        self.device = resolve_device(device or "cuda")
        if self.device.type != "cuda":
            raise ValueError(f"device must be a CUDA device for a Torch-TensorRT program, got {self.device}")
        try:
            import torch_tensorrt
        except ImportError as error:
            raise ImportError(f"running {path} needs torch-tensorrt (pip install torch-tensorrt): {error}") from None
        register_available_plugin(import_tensorrt(), plugin_library)
        self.metadata = metadata
        self.allow_tf32 = bool(metadata and metadata.allow_tf32)
        with torch.cuda.device(self.device):
            self.module = torch_tensorrt.load(str(path)).module()

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes, self.metadata)
        with torch.no_grad(), torch.cuda.device(self.device), tf32(self.allow_tf32):
            boxes, scores, labels = self.module(
                images.to(self.device, torch.float32), image_sizes.to(self.device, torch.int64)
            )
        return Detections(boxes.float(), scores.float(), labels.long())
