"""What ``codetr bench`` measures: exported artifacts and the eager model, each as a Predictor.

A target is named on the command line by an artifact path (anything
:func:`codetr.runtime.load_runtime` runs, with its ``metadata.json`` beside it), or by ``eager``
(the PyTorch model of ``--config`` in ``--dtype``) or ``eager:DTYPE`` (one of
:data:`codetr.models.DTYPES`). Artifacts whose runtime can replay a CUDA graph (CUDA AOTInductor
packages, TensorRT engines) are measured with, without, or both ways (``cuda_graph``); the
others are measured once, without.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import torch

from codetr.contract.artifacts import Artifact, identify_artifact
from codetr.contract.metadata import metadata_path_for, read_metadata
from codetr.models import DTYPES
from codetr.runtime.aoti import package_device_type
from codetr.runtime.predictor import Predictor

EAGER = "eager"
CUDA_GRAPH_ARTIFACTS = frozenset({Artifact.AOTI, Artifact.ENGINE})
"""Artifacts whose runtime takes ``cuda_graph=True`` (AOTInductor packages compiled for CUDA only)."""


class CudaGraphMode(str, enum.Enum):
    """Whether CUDA-graph-capable artifacts are measured without (OFF), with (ON) or both ways."""

    OFF = "off"
    ON = "on"
    BOTH = "both"


@dataclasses.dataclass(frozen=True)
class Target:
    """One thing to measure: an artifact file (``path``, identified as ``artifact``) or the eager
    model in ``dtype`` (``path`` None). ``name`` is how the command line named it."""

    name: str
    path: Path | None = None
    artifact: Artifact | None = None
    dtype: str | None = None
    cuda_graph: bool = False

    @property
    def label(self) -> str:
        """The name in tables and plots: the path or ``eager DTYPE``, ``+ CUDA graph`` when replayed."""
        base = f"{EAGER} {self.dtype}" if self.path is None else self.name
        return f"{base} + CUDA graph" if self.cuda_graph else base


def parse_targets(names: list[str], default_dtype: str, cuda_graph: CudaGraphMode) -> list[Target]:
    """The targets named by ``names`` (see the module docstring), in order; an artifact that can
    replay a CUDA graph gives two targets with ``cuda_graph`` BOTH. Raises FileNotFoundError for a
    missing artifact file and ValueError for an unknown dtype or a file that is no artifact
    (:func:`codetr.contract.artifacts.identify_artifact`)."""
    targets: list[Target] = []
    for name in names:
        if name == EAGER or name.startswith(f"{EAGER}:"):
            dtype = name.partition(":")[2] or default_dtype
            if dtype not in DTYPES:
                raise ValueError(f"{name}: eager dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
            targets.append(Target(name, dtype=dtype))
            continue
        path = Path(name)
        metadata_path = metadata_path_for(path)
        files = read_metadata(metadata_path).files if metadata_path.is_file() else None
        artifact = identify_artifact(path, files)
        modes = [False]
        if can_replay_cuda_graphs(path, artifact):
            modes = {CudaGraphMode.OFF: [False], CudaGraphMode.ON: [True], CudaGraphMode.BOTH: [False, True]}[cuda_graph]
        targets.extend(Target(name, path, artifact, cuda_graph=mode) for mode in modes)
    return targets


def can_replay_cuda_graphs(path: Path, artifact: Artifact) -> bool:
    """Whether the runtime of ``artifact`` at ``path`` can replay CUDA graphs: TensorRT engines
    and AOTInductor packages compiled for CUDA (a CPU package has no graph to capture)."""
    if artifact is Artifact.AOTI:
        return package_device_type(path) == "cuda"
    return artifact in CUDA_GRAPH_ARTIFACTS


def load_target(
    target: Target,
    *,
    config: Path | None,
    checkpoint: Path | None,
    device: str | None,
    allow_tf32: bool = False,
) -> Predictor:
    """The :class:`~codetr.runtime.predictor.Predictor` of ``target``. ``device`` None: an
    artifact's own device, the eager model on CUDA when a GPU is visible. The eager model needs
    ``config`` (ValueError without it); ``checkpoint`` None gives it random weights, which time
    the same as trained ones."""
    if target.path is not None:
        options = {"cuda_graph": True} if target.cuda_graph else {}
        return Predictor.from_artifact(target.path, device=device, **options)
    if config is None:
        raise ValueError(f"{target.name}: the eager model needs --config (and --checkpoint for trained weights)")
    eager_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Predictor.from_config(config, checkpoint, device=eager_device, dtype=target.dtype, allow_tf32=allow_tf32)


def input_size(predictor: Predictor, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) of the random model inputs: the given sides, else the exported (traced)
    size from the metadata, else the config's fixed ``pad_size``. ValueError when none of them
    gives a side (a config that pads to the batch's largest image)."""
    metadata = predictor.runtime.metadata
    if metadata is not None:
        default = (metadata.height.opt, metadata.width.opt)
    else:
        default = predictor.preprocess.pad_size
    if default is None and (height is None or width is None):
        raise ValueError(
            "--height and --width are needed: the model has no fixed input size (no export metadata, and "
            "the config pads to the largest image of each batch)"
        )
    return (height or default[0], width or default[1])


def unsupported_batch(predictor: Predictor, batch_size: int) -> str | None:
    """Why ``predictor`` cannot run ``batch_size`` images at once (None when it can): an export
    has a static batch size."""
    if predictor.batch_size is not None and predictor.batch_size != batch_size:
        return (
            f"exported for batch size {predictor.batch_size} (static); re-export with "
            f"--batch-size {batch_size} to measure batch {batch_size}"
        )
    return None
