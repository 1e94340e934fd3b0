"""``metadata.json``: what a deployment needs to feed an exported model and read its outputs.

The export writes it beside its artifacts (:func:`write_metadata`); every runtime reads it
(:func:`read_metadata`) for the input geometry, pre- and post-processing and class names, so a
user passes the model file and nothing else. The document (format ``codetr-export/2``)::

    format          "codetr-export/2"
    model           config, config_file, checkpoint, random_weights, num_classes, class_names,
                    category_ids (COCO category id of each label)
    input           batch_size; height and width as {min, opt, max} pixels (min == max: static);
                    multiple (every size is a multiple of it); dtype of ``images`` (float32)
    inputs/outputs  name, shape (ints or a dimension name), dtype, description per tensor
    preprocessing   the codetr.config.PreprocessConfig fields that produce that input
    postprocessing  the codetr.config.TestConfig fields the host applies (score threshold, NMS)
    postprocess     what the graph itself does after the top-k: mode none | threshold | nms,
                    score_threshold, iou_threshold, max_detections, note
                    (:mod:`codetr.contract.postprocess`; outputs then [1, num_detections, ...])
    precision       dtype, allow_tf32, notes on the parts kept in float32
    msda            plugin | nvidia | decomposed (the form MSDA takes in the ONNX file)
    onnx            {opset, ir_version} read back from the written file, or null
    files           artifact -> file name, for each artifact built
    aoti            {codetr_ops: {op: calls}} of the program the AOTInductor package compiled
                    (its encoder calls codetr::msda_from_offsets), or null
    skipped         artifact -> why it was not built
    stages          per export stage: seconds, and the file it wrote with its bytes and sha256
                    (hex), which the runtime checks when it loads that file
    options, versions

Input shapes are checked against it before a runtime runs (:meth:`ExportMetadata.check_images`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codetr.atomic import atomic_path

METADATA_NAME = "metadata.json"
METADATA_FORMAT = "codetr-export/2"


class MetadataError(ValueError):
    """metadata.json is missing a key, has a wrong value or another format; the message names the
    file and the key."""


@dataclasses.dataclass(frozen=True)
class SizeRange:
    """An input side in pixels: ``min == max`` for a static export; ``opt`` is the traced size."""

    min: int
    opt: int
    max: int

    @property
    def is_static(self) -> bool:
        return self.min == self.max


@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """The parts of metadata.json that runtimes act on; ``document`` is the whole file."""

    path: Path | None
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    random_weights: bool
    batch_size: int
    height: SizeRange
    width: SizeRange
    multiple: int
    dtype: str
    allow_tf32: bool
    msda: str
    preprocessing: Mapping[str, Any]
    postprocessing: Mapping[str, Any]
    files: Mapping[str, str]
    skipped: Mapping[str, str]
    versions: Mapping[str, str]
    document: Mapping[str, Any]

    def check_images(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless an ``images`` tensor of ``shape`` [B, 3, H, W] fits the export:
        the batch of a static-batch export, H and W inside the exported ranges and multiples of
        ``multiple``. The message names the allowed values."""
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(shape)}")
        batch, _, height, width = (int(size) for size in shape)
        if batch != self.batch_size:
            raise ValueError(
                f"this model was exported for batch size {self.batch_size}, got a batch of {batch}; "
                f"run {self.batch_size} image(s) at a time or re-export with --batch-size {batch}"
            )
        for name, size, extent in (("height", height, self.height), ("width", width, self.width)):
            if not extent.min <= size <= extent.max:
                allowed = f"exactly {extent.min}" if extent.is_static else f"{extent.min} to {extent.max}"
                raise ValueError(
                    f"input {name} {size} is outside what this model was exported for ({allowed} pixels); "
                    "use the model's pre-processing (metadata.json 'preprocessing') or re-export with "
                    f"--dynamic-{name}"
                )
            if size % self.multiple:
                raise ValueError(f"input {name} {size} must be a multiple of {self.multiple}")


def file_sha256(path: Path) -> str:
    """SHA-256 of the file at ``path``, hex, as ``stages`` records it (hashlib reads ~1 GB/s:
    ~0.1 s for an R50 model, ~0.5 s for a Swin-L package)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_path_for(artifact: Path) -> Path:
    """Where an artifact's metadata lies: ``metadata.json`` in the artifact's folder."""
    return Path(artifact).with_name(METADATA_NAME)


def write_metadata(document: Mapping[str, Any], path: Path) -> ExportMetadata:
    """Check ``document`` with the reader, then write it to ``path`` atomically. Returns what a
    reader will see, so a writer can never produce a file its readers refuse."""
    parsed = parse_metadata(document, path)
    with atomic_path(Path(path)) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")
    return parsed


def read_metadata(path: Path) -> ExportMetadata:
    """Read and check ``path``; FileNotFoundError if absent, MetadataError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no export metadata at {path} (codetr export writes it beside the model)")
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MetadataError(f"{path}: not valid JSON ({error})") from None
    return parse_metadata(document, path)


def parse_metadata(document: Mapping[str, Any], path: Path | None = None) -> ExportMetadata:
    """The checked :class:`ExportMetadata` of a metadata document (see the module docstring)."""
    where = str(path) if path else "metadata"

    def get(key: str, kind: type | tuple[type, ...]) -> Any:
        value: Any = document
        for part in key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise MetadataError(f"{where}: missing key {key}")
            value = value[part]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise MetadataError(f"{where}: {key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    if not isinstance(document, Mapping):
        raise MetadataError(f"{where}: expected a JSON object")
    found_format = document.get("format")
    if found_format != METADATA_FORMAT:
        raise MetadataError(
            f"{where}: format {found_format!r}, this codetr reads {METADATA_FORMAT!r}; re-export the model "
            "with this codetr version"
        )

    def size_range(key: str) -> SizeRange:
        extent = get(key, dict)
        try:
            low, opt, high = (int(extent[name]) for name in ("min", "opt", "max"))
        except (KeyError, TypeError, ValueError):
            raise MetadataError(f"{where}: {key} must be {{min, opt, max}} in pixels, got {extent!r}") from None
        if not 1 <= low <= opt <= high:
            raise MetadataError(f"{where}: {key} must satisfy 1 <= min <= opt <= max, got {extent!r}")
        return SizeRange(low, opt, high)

    class_names = tuple(get("model.class_names", list))
    category_ids = tuple(get("model.category_ids", list))
    if len(category_ids) != len(class_names):
        raise MetadataError(f"{where}: model.category_ids must have one id per class name")
    return ExportMetadata(
        path=Path(path) if path else None,
        class_names=class_names,
        category_ids=category_ids,
        random_weights=get("model.random_weights", bool),
        batch_size=get("input.batch_size", int),
        height=size_range("input.height"),
        width=size_range("input.width"),
        multiple=get("input.multiple", int),
        dtype=get("precision.dtype", str),
        allow_tf32=get("precision.allow_tf32", bool),
        msda=get("msda", str),
        preprocessing=get("preprocessing", dict),
        postprocessing=get("postprocessing", dict),
        files=get("files", dict),
        skipped=get("skipped", dict),
        versions=get("versions", dict),
        document=document,
    )
