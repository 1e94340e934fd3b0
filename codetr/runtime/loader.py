"""``load_runtime(path)``: the runtime for any exported artifact, chosen by the artifact table."""

from __future__ import annotations

import importlib
from pathlib import Path

from codetr.contract.artifacts import Artifact, identify_artifact
from codetr.contract.metadata import ExportMetadata, file_sha256, metadata_path_for, read_metadata
from codetr.runtime.base import Runtime

RUNTIMES: dict[Artifact, str] = {
    Artifact.EXPORTED_PROGRAM: "codetr.runtime.exported_program:ExportedProgramRuntime",
    Artifact.ONNX: "codetr.runtime.onnxruntime:OnnxRuntime",
    Artifact.ENGINE: "codetr.runtime.tensorrt:TensorRTRuntime",
    Artifact.AOTI: "codetr.runtime.aoti:AOTIRuntime",
    Artifact.TORCH_TENSORRT: "codetr.runtime.torch_tensorrt:TorchTensorRTRuntime",
}
"""The runtime class of each artifact, imported only when such a file is loaded (each needs its own
optional packages). Every artifact of the table has one (tests/test_runtime.py checks)."""


def load_runtime(path: str | Path, **options) -> Runtime:
    """The runtime for the exported file at ``path``; ``options`` go to its constructor (every
    runtime takes ``device``; see each class for the others).

    The export's ``metadata.json`` beside the file, when present, identifies the artifact and is
    handed to the runtime, which then checks every input against it. Raises FileNotFoundError for
    a missing file, ValueError for a file that is none of the artifacts, and :class:`~codetr.contract.metadata.MetadataError` (a ValueError) for a malformed or
    outdated metadata.json.
    """
    path = Path(path)
    metadata = _metadata_beside(path)
    artifact = identify_artifact(path, metadata.files if metadata else None)
    module_name, class_name = RUNTIMES[artifact].split(":")
    runtime_class = getattr(importlib.import_module(module_name), class_name)
    return runtime_class(path, metadata=metadata, **options)


def _metadata_beside(path: Path) -> ExportMetadata | None:
    metadata_path = metadata_path_for(path)
    if not metadata_path.is_file():
        return None
    metadata = read_metadata(metadata_path)
    _check_exported_file(metadata, path)
    return metadata


def _check_exported_file(metadata: ExportMetadata, path: Path) -> None:
    """ValueError unless ``path`` is the file its export wrote: the size and SHA-256 its stage
    recorded (metadata.json ``stages``; exports before the hash have only the size). A file
    truncated or damaged since (a flipped byte in a package's compiled library would crash the
    process), or a metadata.json copied from another export with the same file names, would
    otherwise load and be described wrongly. A file the metadata does not list at all (``files``)
    is not described by it either."""
    if path.name not in metadata.files.values():
        listed = ", ".join(sorted(metadata.files.values())) or "none"
        raise ValueError(
            f"{metadata.path} does not describe {path}: its export wrote {listed}; the metadata.json is another "
            "export's, or the file was renamed; keep each export's files together under their names, or re-export"
        )
    for stage in metadata.document.get("stages", ()):
        if stage.get("file") != path.name or not path.is_file():
            continue
        recorded, size = stage.get("bytes"), path.stat().st_size
        if recorded is not None and size != recorded:
            raise ValueError(
                f"{path} has {size} bytes but {metadata.path} recorded {recorded} when it was exported: "
                "the file was changed (truncated, or replaced by another export's) or the metadata.json "
                "was copied from another export; keep each export's files together, or re-export"
            )
        recorded_hash = stage.get("sha256")
        if recorded_hash is not None and file_sha256(path) != recorded_hash:
            raise ValueError(
                f"{path} is not the file its export wrote: its SHA-256 differs from the one {metadata.path} "
                "recorded (same size, different content): the file was damaged or changed, or the metadata.json "
                "was copied from another export; restore the file or re-export"
            )
