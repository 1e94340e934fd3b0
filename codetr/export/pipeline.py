"""The export run: validate, torch.export, save .pt2, ONNX, TensorRT engine, Torch-TensorRT, metadata.

Every stage is timed and logged; a failing stage raises :class:`ExportError` naming it and
leaves no partial file (each file is written to a temporary name and moved into place).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from codetr.config import Config
from codetr.export.metadata import build_metadata, library_versions, write_metadata
from codetr.export.onnx_model import save_onnx, to_onnx
from codetr.export.options import Artifact, DimRange, ExportOptions
from codetr.export.program import export_program, largest_feature_stride, prepare_model
from codetr.atomic import atomic_path
from codetr.export.stages import StageLog
from codetr.export.tensorrt_engine import ShapeProfile, build_engine
from codetr.export.torch_tensorrt_program import compile_and_save
from codetr.quantization.engine_check import check_int8_engine
from codetr.quantization.int8 import AMAX_FILE_NAME, QuantizationReport, write_amax
from codetr.quantization.onnx_qdq import check_opset
from codetr.tensorrt.torch_tensorrt import Partition

logger = logging.getLogger("codetr.export")

FILE_NAMES = {
    Artifact.EXPORTED_PROGRAM: "model.pt2",
    Artifact.ONNX: "model.onnx",
    Artifact.ENGINE: "model.engine",
}
TORCH_TENSORRT_NAME = "model_torch_tensorrt.pt2"
METADATA_NAME = "metadata.json"


@dataclasses.dataclass
class ExportResult:
    """Where the files went and how long each stage took; ``partition`` is the Torch-TensorRT
    compile's split (None without ``options.torch_tensorrt``), saved as ``compiled_program``."""

    output_dir: Path
    files: dict[Artifact, Path]
    metadata: Path
    stages: StageLog
    compiled_program: Path | None = None
    partition: Partition | None = None


def prepare_output_dir(output_dir: Path) -> Path:
    """Create ``output_dir`` if needed; raise a clear error if it cannot be written."""
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output: {output_dir} exists and is not a directory")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(f"output: cannot create directory {output_dir}: {error.strerror}") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"output: directory {output_dir} is not writable")
    return output_dir


def engine_profiles(options: ExportOptions) -> dict[str, ShapeProfile]:
    """The TensorRT optimisation profile of the images input (empty for a static export)."""
    if not options.is_dynamic:
        return {}
    heights = options.dynamic_height or DimRange(options.height, options.height)
    widths = options.dynamic_width or DimRange(options.width, options.width)
    batch = options.batch_size
    return {
        "images": ShapeProfile(
            min=(batch, 3, heights.min, widths.min),
            opt=(batch, 3, options.height, options.width),
            max=(batch, 3, heights.max, widths.max),
        )
    }


def export_model(
    model: torch.nn.Module,
    config: Config,
    options: ExportOptions,
    output_dir: Path,
    *,
    checkpoint: Path | None = None,
    quantization: QuantizationReport | None = None,
) -> ExportResult:
    """Export ``model`` (built from ``config``, weights already loaded) into ``output_dir``.

    Writes the artifacts named in ``options`` plus ``metadata.json``; see the module docstring.
    ``quantization``: the report of :func:`codetr.quantization.quantize_int8` when ``model`` is its
    INT8 Q/DQ model; recorded in metadata.json, its amax statistics in int8_amax.json.
    """
    options.check_sizes(config.preprocess.size_divisor, largest_feature_stride(config))
    if quantization is not None:
        check_opset(options.opset, options.dtype)
    output_dir = prepare_output_dir(Path(output_dir))
    stages = StageLog()
    files: dict[Artifact, Path] = {}
    versions = library_versions()

    with stages.stage("torch.export"):
        model = prepare_model(model, options)
        program = export_program(model, options, config.preprocess.size_divisor)

    if Artifact.EXPORTED_PROGRAM in options.artifacts:
        with stages.stage("save exported program") as record:
            record.path = files[Artifact.EXPORTED_PROGRAM] = output_dir / FILE_NAMES[Artifact.EXPORTED_PROGRAM]
            with atomic_path(record.path) as temporary:
                torch.export.save(program, temporary)

    if Artifact.ONNX in options.artifacts:
        with stages.stage("onnx") as record:
            onnx_model = to_onnx(program, options)
            record.path = files[Artifact.ONNX] = output_dir / FILE_NAMES[Artifact.ONNX]
            save_onnx(onnx_model, record.path)
            del onnx_model

    engine_check = None  # the INT8 engine's layer check (codetr.quantization.engine_check)
    if Artifact.ENGINE in options.artifacts:
        with stages.stage("tensorrt engine") as record:
            path = output_dir / FILE_NAMES[Artifact.ENGINE]
            build = build_engine(
                files[Artifact.ONNX],
                path,
                optimization_level=options.optimization_level,
                profiles=engine_profiles(options),
                plugin_library=options.plugin_library,
                timing_cache=options.timing_cache,
            )
            record.path = files[Artifact.ENGINE] = path
            versions[build.backend] = build.version
            if quantization is not None:
                engine_check = check_int8_engine(files[Artifact.ONNX], build.log)

    compiled_program, partition = None, None
    if options.torch_tensorrt is not None:
        with stages.stage(f"torch-tensorrt {options.torch_tensorrt.value}") as record:
            path = output_dir / TORCH_TENSORRT_NAME
            partition = compile_and_save(program, options, path, engine_profiles(options).get("images"))
            record.path = compiled_program = path

    amax_path = None
    if quantization is not None:
        with stages.stage("int8 amax") as record:
            record.path = amax_path = output_dir / AMAX_FILE_NAME
            write_amax(quantization, amax_path)

    metadata_path = output_dir / METADATA_NAME
    with stages.stage("metadata") as record:
        record.path = metadata_path
        file_names = {artifact.value: path.name for artifact, path in files.items()}
        if compiled_program is not None:
            file_names["torch_tensorrt"] = compiled_program.name
        if amax_path is not None:
            file_names["int8_amax"] = amax_path.name
        metadata = build_metadata(
            config,
            options,
            program,
            files=file_names,
            stages=stages.to_json(),
            checkpoint=checkpoint,
            versions=versions,
            partition=partition,
        )
        if quantization is not None:
            metadata["quantization"] = {**quantization.to_json(), "engine": engine_check}
        write_metadata(metadata, metadata_path)
    return ExportResult(output_dir, files, metadata_path, stages, compiled_program, partition)
