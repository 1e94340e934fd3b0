"""The ``metadata.json`` document of an export (format ``codetr-export/2``, specified and
checked in :mod:`codetr.contract.metadata`, which also writes it).

It describes the exported model exactly: the input ranges and multiple, the pre-processing that
produces such an input (not the config's own, which may resize and pad to another canvas), the
opset actually in the ONNX file, which artifacts were built and which were skipped and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from torch.export import ExportedProgram

from codetr.config import Config, PreprocessConfig
from codetr.contract.artifacts import Artifact
from codetr.contract.io import INPUT_NAMES, OUTPUT_NAMES
from codetr.contract.metadata import METADATA_FORMAT
from codetr.contract.onnx_graph import default_opset
from codetr.export.options import ExportOptions
from codetr.export.postprocess import host_postprocessing, output_dim, postprocess_metadata
from codetr.contract.postprocess import POSTPROCESS_KEY
from codetr.tensorrt.torch_tensorrt import Partition

PRECISION_NOTES = (
    "Weights and feature maps use the export dtype. Kept float32: input normalisation; "
    "positional encodings (cast to the export dtype afterwards); MSDA sampling offsets, "
    "attention-weight softmax and sampling locations (MSDA values stay in the export dtype); "
    "reference points, proposals, boxes and everything through sigmoid/inverse-sigmoid; class "
    "logits, the proposal top-k and the final score top-k; Swin window-attention softmax. "
    "GroupNorm/LayerNorm run in the export dtype with float32 statistics (PyTorch). Why: half "
    "precision loses ~1e-3 relative precision on coordinates (pixels on a 1k image) and would "
    "reorder near-equal scores."
)
TF32_NOTES = {
    False: "float32 layers are IEEE float32: TF32 was off while tracing and in the engine builder.",
    True: "float32 layers may use TF32 (10-bit mantissa) on GPUs that have it (--allow-tf32).",
}
NOT_REQUESTED = "not requested"


def export_preprocessing(preprocess: PreprocessConfig, options: ExportOptions) -> PreprocessConfig:
    """The config's pre-processing changed so that :func:`codetr.preprocess.make_batch` produces
    inputs this export accepts, for an image of any size and orientation.

    Static: the resize limits become the canvas's long and short sides (the config's own limits are
    kept where they are smaller) and the image pads to exactly (height, width); make_batch shrinks
    an image that would overflow the canvas (a portrait image on a landscape canvas) to fit.
    Dynamic: the keep-ratio resize limits are orientation-free (mmdet: long and short edge), so
    every image fits only when both limits are at most the smallest allowed maximum side; padded to
    the next multiple of the size divisor (the exported multiple), and at least to the ranges'
    minimum (``pad_min_size``), so a landscape photo's short side never falls below the range.
    """
    if not options.is_dynamic:
        long_side, short_side = max(options.height, options.width), min(options.height, options.width)
        scale = (min(max(preprocess.scale), long_side), min(min(preprocess.scale), short_side))
        return dataclasses.replace(preprocess, scale=scale, pad_size=(options.height, options.width))
    heights, widths = options.height_range, options.width_range
    largest = min(heights.max, widths.max)
    scale = (min(max(preprocess.scale), largest), min(min(preprocess.scale), largest))
    return dataclasses.replace(preprocess, scale=scale, pad_size=None, pad_min_size=(heights.min, widths.min))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _input_specs(options: ExportOptions) -> list[dict[str, object]]:
    height: int | str = "height" if options.dynamic_height else options.height
    width: int | str = "width" if options.dynamic_width else options.width
    return [
        {
            "name": INPUT_NAMES[0],
            "shape": [options.batch_size, 3, height, width],
            "dtype": "float32",
            "description": "RGB 0-255, resized and padded on the host (see preprocessing)",
        },
        {
            "name": INPUT_NAMES[1],
            "shape": [options.batch_size, 2],
            "dtype": "int64",
            "description": "(height, width) of the valid, unpadded content of each image",
        },
    ]


def _output_specs(program: ExportedProgram) -> list[dict[str, object]]:
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    values = [argument.meta["val"] for argument in output_node.args[0]]
    descriptions = (
        "(x1, y1, x2, y2) in network-input pixels",
        "sigmoid class scores, descending",
        "class indices into class_names",
    )
    return [
        {"name": name, "shape": [output_dim(size) for size in value.shape], "dtype": _dtype_name(value.dtype),
         "description": description}
        for name, value, description in zip(OUTPUT_NAMES, values, descriptions, strict=True)
    ]


def _input_geometry(options: ExportOptions, multiple: int) -> dict[str, object]:
    def extent(traced: int, allowed) -> dict[str, int]:
        return {"min": allowed.min, "opt": traced, "max": allowed.max}

    return {
        "batch_size": options.batch_size,
        "height": extent(options.height, options.height_range),
        "width": extent(options.width, options.width_range),
        "multiple": multiple,
        "dtype": "float32",
    }


def onnx_facts(path: Path) -> dict[str, int]:
    """{opset, ir_version} as written in the ONNX file at ``path`` (weights not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return {"opset": default_opset(model), "ir_version": int(model.ir_version)}


def codetr_op_counts(program: ExportedProgram) -> dict[str, int]:
    """How often the program calls each codetr op, e.g. {"codetr::msda": 6,
    "codetr::msda_from_offsets": 6}: what the package's op library must provide."""
    counts: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "codetr":
            counts[node.target.name()] = counts.get(node.target.name(), 0) + 1
    return dict(sorted(counts.items()))


def build_metadata(
    config: Config,
    options: ExportOptions,
    program: ExportedProgram,
    *,
    files: Mapping[Artifact, Path],
    stages: list[dict[str, object]],
    checkpoint: Path | None,
    versions: Mapping[str, str],
    partition: Partition | None = None,
    package_program: ExportedProgram | None = None,
) -> dict[str, object]:
    """The metadata document (plain JSON values). ``files`` are the artifacts built (their
    names are recorded; the ONNX file is read back for its opset and IR version); every other
    artifact of the table is listed under ``skipped`` with ``options.skipped``'s reason or
    "not requested". ``partition`` is the Torch-TensorRT compile's; ``package_program`` the
    program the AOTInductor package compiled (its codetr ops are listed under ``aoti``)."""
    preprocessing = export_preprocessing(config.preprocess, options)
    skipped = {
        artifact.value: options.skipped.get(artifact, NOT_REQUESTED) for artifact in Artifact if artifact not in files
    }
    return {
        "format": METADATA_FORMAT,
        "model": {
            "config": config.name,
            "config_file": config.source,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "random_weights": checkpoint is None,
            "num_classes": config.model.num_classes,
            "class_names": list(config.class_names),
            "category_ids": list(config.coco_category_ids),
        },
        "input": _input_geometry(options, preprocessing.size_divisor),
        "inputs": _input_specs(options),
        "outputs": _output_specs(program),
        "preprocessing": dataclasses.asdict(preprocessing),
        "postprocessing": host_postprocessing(config, options.postprocess, options.score_threshold),
        POSTPROCESS_KEY: postprocess_metadata(config, options.postprocess, options.score_threshold),
        "precision": {
            "dtype": _dtype_name(options.dtype),
            "allow_tf32": options.allow_tf32,
            "notes": f"{PRECISION_NOTES} {TF32_NOTES[options.allow_tf32]}",
        },
        "msda": options.msda.value,
        "onnx": onnx_facts(files[Artifact.ONNX]) if Artifact.ONNX in files else None,
        "files": {artifact.value: path.name for artifact, path in files.items()},
        "skipped": skipped,
        "options": options.to_json(),
        "aoti": None if package_program is None else {"codetr_ops": codetr_op_counts(package_program)},
        "torch_tensorrt": None if partition is None else {
            "mode": options.torch_tensorrt.value,
            "tensorrt_segments": partition.tensorrt_segments,
            "pytorch_segments": partition.pytorch_segments,
            "pytorch_ops": list(partition.pytorch_ops),
        },
        "stages": stages,
        "versions": dict(versions),
    }
