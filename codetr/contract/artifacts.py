"""The artifact table: every file an export can write, and how a runtime recognises it.

One table drives both sides: :mod:`codetr.export` writes ``ARTIFACTS[a].file_name`` for each
artifact ``a`` it builds, and :func:`codetr.runtime.load_runtime` identifies a file with
:func:`identify_artifact` and picks the runtime registered for that artifact.

An ExportedProgram and an AOTInductor package are both ``.pt2`` zip archives; they are told apart
by the export's ``metadata.json`` when one lies beside the file, else by content (a package holds
an ``aotinductor`` folder), never by guessing. A Torch-TensorRT program is an ExportedProgram with
engines inside; only its metadata entry (or its file name) says so.
"""

from __future__ import annotations

import dataclasses
import enum
import zipfile
from collections.abc import Mapping
from pathlib import Path


class Artifact(str, enum.Enum):
    """Files an export can write, in the order they are produced."""

    EXPORTED_PROGRAM = "exported_program"
    ONNX = "onnx"
    ENGINE = "engine"
    AOTI = "aoti"
    TORCH_TENSORRT = "torch_tensorrt"


@dataclasses.dataclass(frozen=True)
class ArtifactSpec:
    """What one artifact is: its file name in an export folder and a one-line description."""

    artifact: Artifact
    file_name: str
    description: str


ARTIFACTS: dict[Artifact, ArtifactSpec] = {
    spec.artifact: spec
    for spec in (
        ArtifactSpec(Artifact.EXPORTED_PROGRAM, "model.pt2", "torch.export ExportedProgram (PyTorch runs it)"),
        ArtifactSpec(Artifact.ONNX, "model.onnx", "ONNX model (ONNX Runtime, TensorRT's parser)"),
        ArtifactSpec(Artifact.ENGINE, "model.engine", "serialized TensorRT engine"),
        ArtifactSpec(Artifact.AOTI, "model_aoti.pt2", "AOTInductor package (compiled; Python or C++ runs it)"),
        ArtifactSpec(Artifact.TORCH_TENSORRT, "model_torch_tensorrt.pt2", "ExportedProgram compiled by Torch-TensorRT"),
    )
}

_SUFFIXES = {".onnx": Artifact.ONNX, ".engine": Artifact.ENGINE, ".plan": Artifact.ENGINE}


class MsdaMode(str, enum.Enum):
    """How multiscale deformable attention appears in the exported graphs.

    PLUGIN: one ``torch.ops.codetr.msda`` node; in ONNX one ``codetr::CodetrMSDA`` node that
    TensorRT maps to our plugin. NVIDIA: the same ExportedProgram, but the ONNX nodes are
    NVIDIA's stock ``MultiscaleDeformableAttnPlugin_TRT`` (libnvinfer_plugin). DECOMPOSED: the
    pure-PyTorch reference (``grid_sample``), standard ONNX ops only.
    """

    PLUGIN = "plugin"
    NVIDIA = "nvidia"
    DECOMPOSED = "decomposed"


class CompileMode(str, enum.Enum):
    """Torch-TensorRT compilation: HYBRID keeps ``torch.ops.codetr.msda`` in PyTorch between
    TensorRT segments; FULL converts it to our plugin so the model becomes one engine."""

    HYBRID = "hybrid"
    FULL = "full"


def identify_artifact(path: Path, files: Mapping[str, str] | None = None) -> Artifact:
    """The artifact ``path`` holds.

    ``files`` is the ``files`` table of the export's metadata (artifact value -> file name), when
    one lies beside ``path``. Raises FileNotFoundError if ``path`` is not a file and ValueError
    when it is none of the artifacts (the message lists what is accepted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    for value, name in (files or {}).items():
        if name == path.name and value in Artifact._value2member_map_:
            return Artifact(value)
    suffix = path.suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if suffix == ".pt2":
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a .pt2 archive (not a zip file); was it fully written?")
        if path.name == ARTIFACTS[Artifact.TORCH_TENSORRT].file_name:
            return Artifact.TORCH_TENSORRT
        with zipfile.ZipFile(path) as archive:
            if any("/aotinductor/" in f"/{name}" for name in archive.namelist()):
                return Artifact.AOTI
        return Artifact.EXPORTED_PROGRAM
    accepted = ", ".join(f"{spec.file_name} ({spec.description})" for spec in ARTIFACTS.values())
    raise ValueError(f"{path}: unknown model file type {suffix or '(no suffix)'!r}; accepted: {accepted}")
