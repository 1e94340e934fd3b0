"""What ``float32`` means on a GPU: IEEE float32 unless TF32 is explicitly allowed.

PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa) by default on Ampere and newer GPUs,
so a "float32" run is not float32 there; on Co-DINO with random weights that alone changes most
of the top-900 query selection. codetr runs, traces and builds engines with TF32 off unless the
user passes ``--allow-tf32``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def tf32(allowed: bool) -> Iterator[None]:
    """Allow (``True``) or forbid (``False``) TF32 in CUDA matmuls and cuDNN convolutions inside
    the block, restoring the previous settings afterwards (also on error).

    Sets ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``; has
    no effect on CPU computation, which never uses TF32.
    """
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
