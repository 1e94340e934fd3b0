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

One graph pass of codetr's own runs in the compile (:class:`LinearReLUEpilogue`): every
``relu(linear(x))`` (the encoder and decoder FFNs' expand layers, the box branches) becomes one
``aten._addmm_activation`` call, which cuBLASLt computes with the bias and the ReLU in the GEMM's
epilogue. Inductor alone cannot fuse a pointwise op into an external (cuBLAS) GEMM, so it would
write the expanded activations, 2048 channels per encoder token, once more for the ReLU.
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
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch.export import ExportedProgram

aten = torch.ops.aten


class LinearReLUEpilogue(CustomGraphPass):
    """Inductor post-grad pass: ``relu(addmm(b, x, w))`` -> ``_addmm_activation(b, x, w)``.

    Runs before Inductor's own post-grad patterns (``post_grad_custom_pre_pass``), on the graph
    where ``nn.Linear`` has become ``addmm`` (2-D input) or ``reshape(addmm(...))`` (the FFN's
    [B, tokens, C] input). The ReLU may follow the reshape: relu commutes with a reshape. Only
    an ``addmm`` whose one user leads to the ReLU is rewritten, so no other consumer loses the
    pre-activation values. Exact: the GEMM is the same and ReLU is applied to its rounded result
    (CUDA: cuBLASLt ``CUBLASLT_EPILOGUE_RELU_BIAS``; CPU: ATen's addmm followed by ReLU).
    ``aten._addmm_activation`` has no autograd formula: the pass is for inference compiles only.
    """

    def __call__(self, graph: torch.fx.Graph) -> None:
        for relu in list(graph.find_nodes(op="call_function", target=aten.relu.default)):
            producer = relu.args[0]
            reshape = None
            if producer.target in (aten.reshape.default, aten.view.default) and len(producer.users) == 1:
                reshape, producer = producer, producer.args[0]
            if producer.target is not aten.addmm.default or len(producer.users) != 1:
                continue
            producer.target = aten._addmm_activation.default
            relu.replace_all_uses_with(reshape if reshape is not None else producer)
            graph.erase_node(relu)

    def uuid(self) -> bytes:
        # Inductor's compile cache keys on this: a change to this file is a different pass.
        return get_hash_for_files((__file__,))


def compile_package(
    program: ExportedProgram, path: Path, inductor_configs: Mapping[str, Any] | None = None
) -> Path:
    """Compile ``program`` (on its own device and dtype) into an AOTInductor package at ``path``.

    ``path`` must end in ``.pt2``. ``inductor_configs`` are ``torch._inductor.config`` settings
    for this compile only (e.g. ``{"max_autotune": True}``), on top of Inductor's defaults and
    :class:`LinearReLUEpilogue`. The
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
            configs = {"post_grad_custom_pre_pass": LinearReLUEpilogue(), **(inductor_configs or {})}
            torch._inductor.aoti_compile_and_package(program, package_path=str(staged), inductor_configs=configs)
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
