"""Which GPU architectures the CUDA kernels are compiled for: one list for the torch op (setup.py)
and the TensorRT plugin library (codetr_build.tensorrt_plugin).

``TORCH_CUDA_ARCH_LIST`` decides when set (e.g. ``9.0`` or ``8.0;9.0+PTX``). When it is unset
and a GPU is visible, torch builds for the visible GPUs. When it is unset and no GPU is visible
(a build machine, a container build), torch 2.14 dies with ``IndexError`` in
``_get_cuda_arch_flags``; codetr then builds for :data:`DEFAULT_ARCHS` that the toolkit's nvcc
supports, with PTX of the newest so later GPUs JIT-compile it.

Why that list: a GPU-less build cannot know which GPU the artifacts will run on, and Co-DETR is
deployed on every current datacenter and desktop generation (Turing T4, Ampere A100/A10/RTX 30,
Ada L4/L40/RTX 40, Hopper H100/H200, Blackwell B200/RTX 50). Each architecture adds one compile of
the MSDA kernels (about a minute on 2 cores); to build faster set ``TORCH_CUDA_ARCH_LIST`` to
the one you need (CI uses ``9.0``).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

DEFAULT_ARCHS = ("7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0")
"""Turing, Ampere (datacenter, desktop), Ada, Hopper, Blackwell (datacenter, desktop). Jetson and
Thor parts are built on request (TORCH_CUDA_ARCH_LIST)."""


def nvcc_archs(nvcc: Path) -> list[str]:
    """Architectures ``nvcc --list-gpu-arch`` reports, as "X.Y" (compute_90 -> 9.0)."""
    listed = subprocess.run([str(nvcc), "--list-gpu-arch"], check=True, capture_output=True, text=True).stdout
    digits = [match.group(1) for match in re.finditer(r"compute_(\d+)\b", listed)]
    return [f"{number[:-1]}.{number[-1]}" for number in digits]


def default_arch_list(nvcc: Path) -> str:
    """:data:`DEFAULT_ARCHS` that ``nvcc`` supports, ``;``-separated, the newest with ``+PTX``."""
    supported = set(nvcc_archs(nvcc))
    archs = [arch for arch in DEFAULT_ARCHS if arch in supported]
    if not archs:
        raise RuntimeError(f"{nvcc} supports none of {', '.join(DEFAULT_ARCHS)}; set TORCH_CUDA_ARCH_LIST")
    return ";".join([*archs[:-1], archs[-1] + "+PTX"])


def arch_list_for_build(environ: Mapping[str, str], visible_gpus: int, nvcc: Path) -> str | None:
    """The TORCH_CUDA_ARCH_LIST setup.py must set: None when the environment sets one or a GPU is
    visible (torch then decides), else :func:`default_arch_list`."""
    if environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or visible_gpus > 0:
        return None
    return default_arch_list(nvcc)


def parse_arch_list(text: str) -> list[tuple[str, bool]]:
    """``"8.0;9.0+PTX"`` -> [("80", False), ("90", True)]: nvcc arch numbers and whether PTX is kept."""
    entries = [entry for entry in re.split(r"[;\s]+", text.strip()) if entry]
    return [(entry.removesuffix("+PTX").replace(".", ""), entry.endswith("+PTX")) for entry in entries]
