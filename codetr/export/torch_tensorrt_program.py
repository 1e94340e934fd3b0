"""The Torch-TensorRT stage of an export: compile the ExportedProgram (hybrid or full, see
:mod:`codetr.tensorrt.torch_tensorrt`), report its partition and save it.

``torch-tensorrt`` is optional; this module imports it only when the stage runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.export import ExportedProgram

from codetr.export.options import ExportOptions
from codetr.export.program import example_inputs
from codetr.export.tensorrt_engine import ShapeProfile
from codetr.tensorrt.torch_tensorrt import (
    Partition,
    compile_program,
    partition_of,
    save_compiled,
    torch_tensorrt_unavailable_reason,
)

logger = logging.getLogger("codetr.export")


def _compile_inputs(options: ExportOptions, images_profile: ShapeProfile | None) -> list[object]:
    """Example tensors for a static export; for a dynamic one, the images' shape range
    (``torch_tensorrt.Input``) so the engines accept every size the program does."""
    images, image_sizes = example_inputs(options)
    if images_profile is None:
        return [images, image_sizes]
    import torch_tensorrt

    ranged_images = torch_tensorrt.Input(
        min_shape=images_profile.min, opt_shape=images_profile.opt, max_shape=images_profile.max, dtype=torch.float32
    )
    return [ranged_images, image_sizes]


def compile_and_save(
    program: ExportedProgram, options: ExportOptions, path: Path, images_profile: ShapeProfile | None
) -> Partition:
    """Compile ``program`` in ``options.torch_tensorrt`` mode and save it atomically to ``path``.

    ``images_profile`` is the images' shape range of a dynamic export (None: static).
    Raises RuntimeError when torch_tensorrt is not installed.
    """
    reason = torch_tensorrt_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    inputs = _compile_inputs(options, images_profile)
    compiled = compile_program(
        program, inputs, options.torch_tensorrt,
        optimization_level=options.optimization_level, plugin_library=options.plugin_library,
        allow_tf32=options.allow_tf32,
    )
    partition = partition_of(compiled)
    logger.info("Torch-TensorRT %s partition: %s", options.torch_tensorrt.value, partition)
    save_compiled(compiled, path, inputs)
    return partition
