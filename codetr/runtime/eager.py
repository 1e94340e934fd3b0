"""The PyTorch model itself as a runtime: a :class:`~codetr.models.CoDINO` in eager mode."""

from __future__ import annotations

import torch

from codetr.models import DTYPES, CoDINO, Detections
from codetr.models.precision import tf32
from codetr.runtime.base import Runtime, check_inputs, resolve_device


class EagerRuntime(Runtime):
    """Runs ``model`` eagerly on ``device`` in ``dtype`` (a :data:`codetr.models.DTYPES` name or a
    torch dtype; default float32).

    ``device`` None: cuda when a GPU is visible, else cpu. ``allow_tf32`` (default False): float32
    means IEEE float32 on the GPU too; True lets CUDA matmuls and convolutions use TF32 (about
    10-bit mantissa; see :mod:`codetr.models.precision`). The model is moved to ``device`` and
    ``dtype`` in place. Any batch size and image size the model supports are accepted; inputs are
    checked with :func:`codetr.runtime.base.check_inputs`.
    """

    def __init__(
        self,
        model: CoDINO,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = torch.float32,
        allow_tf32: bool = False,
    ) -> None:
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            dtype = DTYPES[dtype]
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        self.device = resolve_device(device)
        self.dtype = dtype
        self.allow_tf32 = allow_tf32
        self.model = model.to(device=self.device, dtype=dtype).eval()

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes)
        with torch.inference_mode(), tf32(self.allow_tf32):
            return self.model(images.to(self.device, torch.float32), image_sizes.to(self.device, torch.int64))
