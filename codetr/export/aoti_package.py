"""AOTInductor package: the ExportedProgram compiled ahead of time into one ``.pt2`` file.

``torch._inductor.aoti_compile_and_package`` lowers the exported graph with Inductor (Triton
kernels on CUDA, C++/OpenMP kernels on CPU), builds a shared library holding the kernels and the
weights, and zips it into a package that Python (``torch._inductor.aoti_load_package``, see
:mod:`codetr.runtime.aoti`) or C++ (``torch::inductor::AOTIModelPackageLoader``) loads without
Python model code. ``torch.ops.codetr.msda`` stays a call into codetr's op library (the
package's proxy executor looks it up when it is loaded), so the loading process must have that
library registered (``import codetr`` in Python; link/load ``codetr/_C*.so`` in C++).

The package is specialised like the program: its device (CPU packages to the compiling CPU's
instruction set, CUDA packages to the GPU architecture), dtype, batch size and static or dynamic
height/width. Compiling needs a C++ compiler (``CXX`` or ``g++``); on CUDA also Triton.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch._inductor
from torch.export import ExportedProgram


def compile_package(
    program: ExportedProgram, path: Path, inductor_configs: Mapping[str, Any] | None = None
) -> Path:
    """Compile ``program`` (on its own device and dtype) into an AOTInductor package at ``path``.

    ``path`` must end in ``.pt2``. ``inductor_configs`` are ``torch._inductor.config`` settings
    for this compile only (e.g. ``{"max_autotune": True}``); default: Inductor's defaults. The
    package is written into a temporary folder beside ``path`` and moved into place only when
    complete, so ``path`` never holds a partial package; the archive's top folder is named after
    ``path``'s stem, as a direct call of ``aoti_compile_and_package`` would name it. Raises
    ValueError for a path without the ``.pt2`` suffix; compiler failures propagate (the export
    pipeline reports them as its "aoti package" stage).
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package path must end in .pt2, got {path}")
    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".partial", dir=path.parent))
    try:
        staged = staging / path.name
        with torch.no_grad():
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(staged), inductor_configs=dict(inductor_configs or {})
            )
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
