"""Finding the CUDA toolkit for the builds of the torch op and the TensorRT plugin."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def find_cuda_home() -> Path | None:
    """CUDA_HOME or CUDA_PATH, else the toolkit around nvcc, else /usr/local/cuda; the first of
    them that holds bin/nvcc and include/cuda_runtime.h, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc on the PATH may be a wrapper script (/usr/local/bin/nvcc), so the folder above it
        # is only a guess that the checks below confirm or reject.
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for candidate in filter(None, candidates):
        home = Path(candidate)
        if (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime.h").is_file():
            return home
    return None


def static_cudart_dir(cuda_home: Path) -> Path | None:
    """The folder of libcudart_static.a inside the toolkit, or None."""
    for lib_dir in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
        if (cuda_home / lib_dir / "libcudart_static.a").is_file():
            return cuda_home / lib_dir
    return None
