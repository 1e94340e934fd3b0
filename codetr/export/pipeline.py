"""The export run: check, torch.export, .pt2, ONNX, TensorRT engine, AOTInductor package,
Torch-TensorRT, metadata.

An export is one unit. Every stage writes into a temporary folder beside the output folder
(``.<name>.partial-<pid>``); only when every stage succeeded is that folder swapped in whole for
the output folder. A failed or interrupted export removes it and leaves the output folder as it
was (or absent), never a mix of old and new files; what a killed process left beside it is
removed by the next export into that folder.

The output folder may be missing, empty, or hold a previous codetr export (its ``metadata.json``
and artifact files only), which is replaced whole. Any other non-empty folder is refused unless
``overwrite``, which replaces it and everything in it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from codetr.atomic import atomic_dir, atomic_path, check_replaceable_dir
from codetr.config import Config
from codetr.contract.artifacts import ARTIFACTS, Artifact, CompileMode
from codetr.contract.metadata import METADATA_NAME, write_metadata
from codetr.contract.versions import library_versions
from codetr.export.aoti_package import compile_package
from codetr.export.metadata import build_metadata
from codetr.export.onnx_model import save_onnx, to_onnx
from codetr.export.options import ExportOptions
from codetr.export.postprocess import wrap_for_export
from codetr.export.program import check_input_sizes, export_program, prepare_model, set_msda_fusion
from codetr.export.stages import StageLog
from codetr.export.tensorrt_engine import ShapeProfile, build_engine
from codetr.export.torch_tensorrt_program import compile_and_save
from codetr.quantization.calibration import CalibrationSet
from codetr.quantization.engine_check import check_int8_engine
from codetr.quantization.int8 import AMAX_FILE_NAME, QuantizationReport, write_amax
from codetr.quantization.onnx_qdq import check_opset
from codetr.tensorrt.plugin import read_plugin_library_info
from codetr.tensorrt.torch_tensorrt import Partition


EXPORT_FILE_NAMES = frozenset({METADATA_NAME, AMAX_FILE_NAME, *(spec.file_name for spec in ARTIFACTS.values())})
PLUGIN_VERSION_KEY = "codetr_msda_plugin"
"""``versions`` key of the MSDA plugin library's version, checked by the TensorRT runtime."""


@dataclasses.dataclass
class ExportResult:
    """Where the files went and how long each stage took; ``partition`` is the Torch-TensorRT
    compile's split (None without ``options.torch_tensorrt``)."""

    output_dir: Path
    files: dict[Artifact, Path]
    metadata: Path
    stages: StageLog
    partition: Partition | None = None


def is_codetr_export(folder: Path) -> bool:
    """Whether ``folder`` holds a codetr export and nothing else: a metadata.json of any
    ``codetr-export/`` format and only file names from the artifact table."""
    names = {entry.name for entry in folder.iterdir()}
    if METADATA_NAME not in names or not names <= EXPORT_FILE_NAMES:
        return False
    try:
        document = json.loads((folder / METADATA_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(document, dict) and str(document.get("format", "")).startswith("codetr-export/")


def check_output_dir(
    output_dir: Path, overwrite: bool = False, argument: str = "output_dir", inputs: Sequence[Path] = (),
) -> Path:
    """Raise a clear OSError / ValueError naming ``argument`` unless an export can be swapped in at
    ``output_dir`` (see the module docstring and :func:`codetr.atomic.check_replaceable_dir`):
    never a folder holding one of ``inputs`` (the files the export reads; see
    :func:`export_inputs`), which replacing it would delete. Creates nothing. Returns the
    absolute path."""
    return check_replaceable_dir(output_dir, overwrite, argument=argument, inputs=inputs,
                                 replaceable=is_codetr_export, replaceable_name="a codetr export")


def export_inputs(
    config: Config, options: ExportOptions, checkpoint: Path | None = None, calibration: CalibrationSet | None = None,
) -> list[Path]:
    """The files and folders an export reads, which its output folder must not hold: the
    checkpoint, the config file, the plugin library, the TensorRT timing cache (read and updated)
    and the INT8 calibration data (the folder given, its annotation file and the folders holding
    the images used, e.g. a COCO dataset's ``val/``)."""
    image_folders = sorted({path.parent for path in calibration.paths}) if calibration is not None else []
    candidates = (
        checkpoint, Path(config.source) if config.source else None, options.plugin_library, options.timing_cache,
        calibration.source if calibration is not None else None,
        calibration.annotation_file if calibration is not None else None,
        *image_folders,
    )
    return [Path(path) for path in candidates if path is not None]


def engine_profiles(options: ExportOptions) -> dict[str, ShapeProfile]:
    """The TensorRT optimisation profile of the images input (empty for a static export)."""
    if not options.is_dynamic:
        return {}
    heights, widths, batch = options.height_range, options.width_range, options.batch_size
    return {
        "images": ShapeProfile(
            min=(batch, 3, heights.min, widths.min),
            opt=(batch, 3, options.height, options.width),
            max=(batch, 3, heights.max, widths.max),
        )
    }


def export_model(
    model: torch.nn.Module | Callable[[], torch.nn.Module],
    config: Config,
    options: ExportOptions,
    output_dir: Path,
    *,
    checkpoint: Path | None = None,
    overwrite: bool = False,
    quantization: QuantizationReport | None = None,
) -> ExportResult:
    """Export ``model`` (built from ``config``, weights loaded) into ``output_dir`` as one unit.

    ``model`` may be a function that builds it, called after every check so that a mistake in
    the options or the output folder is reported before weights load. Writes the artifacts named
    in ``options``, the Torch-TensorRT program if asked, and ``metadata.json``. Raises ValueError
    / OSError for sizes or an output folder that cannot work (before any work) and
    :class:`~codetr.export.stages.ExportError` naming the stage that failed; in both cases, and
    on KeyboardInterrupt, ``output_dir`` is left as it was. ``output_dir`` must not hold a file
    the export reads (:func:`export_inputs`; ValueError). ``quantization``: the report of
    :func:`codetr.quantization.quantize_int8` when ``model`` is its INT8 Q/DQ model; recorded in
    metadata.json (``quantization``), its amax statistics in int8_amax.json.
    """
    check_input_sizes(config, options)
    if quantization is not None:
        check_opset(options.onnx_opset, options.dtype)
    output_dir = check_output_dir(output_dir, overwrite, inputs=export_inputs(config, options, checkpoint, quantization.calibration if quantization else None))
    with atomic_dir(output_dir) as staging:
        if not isinstance(model, torch.nn.Module):
            model = model()
        result = _export_into(staging, model, config, options, checkpoint, quantization)
    return _moved(result, output_dir)


def _export_into(
    folder: Path, model: torch.nn.Module, config: Config, options: ExportOptions, checkpoint: Path | None,
    quantization: QuantizationReport | None,
) -> ExportResult:
    stages = StageLog()
    files: dict[Artifact, Path] = {}
    versions = library_versions(("onnx", "onnxscript"))

    def path_of(artifact: Artifact) -> Path:
        return folder / ARTIFACTS[artifact].file_name

    # The AOTInductor package compiles a program whose encoder calls codetr::msda_from_offsets;
    # every other artifact needs plain codetr::msda. Traced once when the package is all.
    package_only = set(options.artifacts) == {Artifact.AOTI} and options.torch_tensorrt is None
    with stages.stage("torch.export"):
        model = prepare_model(model, options, fuse_msda_inputs=package_only)
        model = wrap_for_export(model, options.postprocess, options.score_threshold, config.test.nms.iou_threshold)
        program = export_program(model, options, config.preprocess.size_divisor)

    if Artifact.EXPORTED_PROGRAM in options.artifacts:
        with stages.stage("save exported program") as record:
            record.path = files[Artifact.EXPORTED_PROGRAM] = path_of(Artifact.EXPORTED_PROGRAM)
            with atomic_path(record.path) as temporary:
                torch.export.save(program, temporary)

    if Artifact.ONNX in options.artifacts:
        with stages.stage("onnx") as record:
            onnx_model = to_onnx(program, options)
            record.path = files[Artifact.ONNX] = path_of(Artifact.ONNX)
            save_onnx(onnx_model, record.path)
            del onnx_model

    engine_check = None  # the INT8 engine's layer check (codetr.quantization.engine_check)
    if Artifact.ENGINE in options.artifacts:
        with stages.stage("tensorrt engine") as record:
            build = build_engine(
                files[Artifact.ONNX],
                path_of(Artifact.ENGINE),
                optimization_level=options.optimization_level,
                profiles=engine_profiles(options),
                plugin_library=options.plugin_library,
                embed_plugin=options.embed_plugin,
                timing_cache=options.timing_cache,
                allow_tf32=options.allow_tf32,
            )
            record.path = files[Artifact.ENGINE] = path_of(Artifact.ENGINE)
            versions[build.backend] = build.version
            if build.plugin is not None:
                versions[PLUGIN_VERSION_KEY] = build.plugin.version
            if quantization is not None:
                engine_check = check_int8_engine(files[Artifact.ONNX], build.log)

    package_program = None
    if Artifact.AOTI in options.artifacts:
        with stages.stage("aoti package") as record:
            record.path = files[Artifact.AOTI] = path_of(Artifact.AOTI)
            package_program = program
            if not package_only:
                set_msda_fusion(model, options, enabled=True)
                package_program = export_program(model, options, config.preprocess.size_divisor)
                set_msda_fusion(model, options, enabled=False)
            compile_package(package_program, record.path, options.aoti_configs)

    partition = None
    if options.torch_tensorrt is not None:
        with stages.stage(f"torch-tensorrt {options.torch_tensorrt.value}") as record:
            record.path = path_of(Artifact.TORCH_TENSORRT)
            partition = compile_and_save(program, options, record.path, engine_profiles(options).get("images"))
            files[Artifact.TORCH_TENSORRT] = record.path
            if options.torch_tensorrt is CompileMode.FULL:
                versions[PLUGIN_VERSION_KEY] = read_plugin_library_info(options.plugin_library).version

    if quantization is not None:
        with stages.stage("int8 amax") as record:
            record.path = folder / AMAX_FILE_NAME
            write_amax(quantization, record.path)

    metadata_path = folder / METADATA_NAME
    with stages.stage("metadata") as record:
        record.path = metadata_path
        document = build_metadata(
            config, options, program, files=files, stages=stages.to_json(), checkpoint=checkpoint,
            versions=versions, partition=partition, package_program=package_program,
        )
        if quantization is not None:
            document["quantization"] = {**quantization.to_json(), "engine": engine_check}
        write_metadata(document, metadata_path)
    return ExportResult(folder, files, metadata_path, stages, partition)


def _moved(result: ExportResult, output_dir: Path) -> ExportResult:
    """``result`` with its paths pointing into ``output_dir`` instead of the staging folder."""
    for record in result.stages.records:
        if record.path is not None:
            record.path = output_dir / record.path.name
    files = {artifact: output_dir / path.name for artifact, path in result.files.items()}
    return dataclasses.replace(result, output_dir=output_dir, files=files, metadata=output_dir / METADATA_NAME)
