"""metadata.json: what a deployment needs to feed the exported model and read its outputs."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
from pathlib import Path

import torch
from torch.export import ExportedProgram

import codetr
from codetr.config import Config
from codetr.export.options import ExportOptions
from codetr.contract.io import INPUT_NAMES, OUTPUT_NAMES
from codetr.atomic import atomic_path
from codetr.tensorrt.torch_tensorrt import Partition

METADATA_FORMAT = "codetr-export/1"

PRECISION_NOTE = (
    "Weights and feature maps use the export dtype. Kept float32: input normalisation; "
    "positional encodings (cast to the export dtype afterwards); MSDA sampling offsets, "
    "attention-weight softmax and sampling locations (MSDA values stay in the export dtype); "
    "reference points, proposals, boxes and everything through sigmoid/inverse-sigmoid; class "
    "logits, the proposal top-k and the final score top-k; Swin window-attention softmax. "
    "GroupNorm/LayerNorm run in the export dtype with float32 statistics (PyTorch). Why: half "
    "precision loses ~1e-3 relative precision on coordinates (pixels on a 1k image) and would "
    "reorder near-equal scores."
)


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
        {"name": name, "shape": [int(size) for size in value.shape], "dtype": _dtype_name(value.dtype),
         "description": description}
        for name, value, description in zip(OUTPUT_NAMES, values, descriptions, strict=True)
    ]


def library_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Versions of Python, codetr and the export toolchain."""
    versions = {"python": platform.python_version(), "codetr": codetr.__version__, "torch": torch.__version__}
    for package in ("onnx", "onnxscript"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    versions.update(extra or {})
    return versions


def build_metadata(
    config: Config,
    options: ExportOptions,
    program: ExportedProgram,
    *,
    files: dict[str, str],
    stages: list[dict[str, object]],
    checkpoint: Path | None,
    versions: dict[str, str],
    partition: Partition | None = None,
) -> dict[str, object]:
    """The metadata document (plain JSON values); ``partition`` is the Torch-TensorRT compile's."""
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
        "inputs": _input_specs(options),
        "outputs": _output_specs(program),
        "preprocessing": {
            **dataclasses.asdict(config.preprocess),
            "note": "resize keeping the aspect ratio into scale, pad (codetr.preprocess); "
            "mean/std normalisation happens inside the model",
        },
        "postprocessing": dataclasses.asdict(config.test),
        "precision": {"dtype": _dtype_name(options.dtype), "float32_parts": PRECISION_NOTE},
        "msda": options.msda.value,
        "options": options.to_json(),
        "torch_tensorrt": None if partition is None else {
            "mode": options.torch_tensorrt.value,
            "tensorrt_segments": partition.tensorrt_segments,
            "pytorch_segments": partition.pytorch_segments,
            "pytorch_ops": list(partition.pytorch_ops),
        },
        "files": files,
        "stages": stages,
        "versions": versions,
    }


def write_metadata(metadata: dict[str, object], path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(metadata, indent=2) + "\n")
