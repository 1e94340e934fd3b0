"""Loading official Co-DETR checkpoints (and saving our own) without running pickled code.

Official files are mmcv/mmengine checkpoints: a dict whose ``state_dict`` holds the weights
(``meta``, ``optimizer`` ... beside it). We also accept ``model`` / ``ema`` wrappers, a bare
state dict, a ``module.`` (DDP) prefix, and ``.safetensors`` files (if the package is installed).

Two layouts exist and differ only in the Swin backbone:

* mmdetection 3.x (our module layout): ``backbone.stages.{i}.blocks.{j}.attn.w_msa.qkv`` ...,
  ``ffn.layers.{0.0,1}``, ``patch_embed.projection``; patch merging in ``nn.Unfold`` channel order.
* Sense-X / original Swin (mmdetection 2.x): ``backbone.layers.{i}.blocks.{j}.attn.qkv`` ...,
  ``mlp.fc{1,2}``, ``patch_embed.proj``; patch merging concatenates the 2x2 neighbours
  (0,0), (1,0), (0,1), (1,1) block-wise, so its norm and reduction weights are permuted here.

Training-only entries (auxiliary heads, denoising embeddings, ...) are logged and dropped;
derived buffers are checked or skipped; anything else that does not match is an error listing
every offending key.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from codetr.atomic import atomic_path

logger = logging.getLogger(__name__)

Layout = Literal["mmdet3", "sensex"]

TRAINING_ONLY_PREFIXES = (
    "rpn_head.",
    "roi_head.",
    "bbox_head.",
    "query_head.label_embedding.",  # Sense-X denoising label embedding
    "query_head.dn_generator.",  # mmdet 3.x denoising generator
    "query_head.downsample.",  # extra level fed to the auxiliary heads
    "query_head.transformer.aux_pos_trans",
    "query_head.transformer.pos_feats_trans",
    "query_head.transformer.pos_feats_norm",
    "query_head.transformer.head_pos_embed",
)
"""Parameters that only the training losses use; reported and dropped on load."""

_BATCH_NORM_COUNTER = "num_batches_tracked"  # absent from FrozenBatchNorm2d
_RELATIVE_POSITION_INDEX = "relative_position_index"  # derived from the window size


class CheckpointError(ValueError):
    """The checkpoint cannot be read or does not fit the model; the message says why."""


@dataclass(frozen=True)
class LoadReport:
    layout: Layout
    loaded: int
    dropped_training_only: tuple[str, ...]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` / ``.pt`` / ``.safetensors`` file, unwrapped from its container."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from error
        try:
            return dict(load_file(str(path)))
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file: {error}") from error
    # Leaving the context removes what it added: skip entries the caller allowed globally already.
    already_allowed = set(torch.serialization.get_safe_globals())
    numpy_globals = [entry for entry in _numpy_safe_globals() if entry not in already_allowed]
    with torch.serialization.safe_globals(numpy_globals):
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(_refusal_message(path, error)) from error
        except (RuntimeError, EOFError, ValueError, OSError) as error:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {error}") from error
    return _unwrap(content, path)


def _numpy_safe_globals() -> list[object]:
    """What ``torch.load(weights_only=True)`` needs beyond its defaults to rebuild the numpy scalars
    and arrays that mmcv / mmengine put in checkpoint metadata (e.g. ``meta.hook_msgs.best_score``).

    These rebuild values from raw bytes or from already-unpickled lists and run no other code.
    numpy 1.x pickles name ``numpy.core.multiarray``, numpy 2.x ``numpy._core.multiarray``; both
    names map to the installed functions. Object and structured (void) dtypes stay refused: weights
    never need them and their pickled states carry arbitrary nested layouts.
    """
    try:
        import numpy
    except ImportError:  # then no pickle holding numpy values can be read anyway
        return []
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    reconstructors = [
        (function, f"{module}.{function.__name__}")
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for function in (multiarray.scalar, multiarray._reconstruct)
    ]
    dtype_classes = {type(numpy.dtype(code)) for code in numpy.typecodes["All"] if code not in "OV"}
    return [numpy.ndarray, numpy.dtype, *dtype_classes, *reconstructors]


def _refusal_message(path: Path, error: pickle.UnpicklingError) -> str:
    try:  # lists the globals outside the allowlist that is active around this call
        refused = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (RuntimeError, ValueError, OSError):  # e.g. a legacy (non-zip) file: torch's message says it
        refused = []
    what = f"the pickled global(s) {', '.join(refused)}" if refused else f"its content ({error})"
    return (
        f"{path}: refused to unpickle {what}. Only tensors, plain containers and numpy scalars/arrays are "
        "read, so no code from the file runs. If you trust the file, re-save only its weights: "
        f"python -c \"import torch; c = torch.load({str(path)!r}, weights_only=False); "
        f"torch.save({{'state_dict': c['state_dict']}}, {str(path.with_name(path.stem + '_weights.pth'))!r})\""
    )


def _unwrap(content: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(content).__name__}")
    for wrapper in ("state_dict", "model", "ema"):
        if isinstance(content.get(wrapper), Mapping):
            content = content[wrapper]
            break
    tensors = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {sorted(map(str, content))[:10]})")
    if all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
    return tensors


def detect_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    return "sensex" if any(key.startswith("backbone.layers.") for key in state) else "mmdet3"


# (Sense-X fragment, mmdet 3.x fragment) of Swin keys; applied to "backbone." keys only.
_SWIN_RENAMES = (
    ("backbone.layers.", "backbone.stages."),
    ("backbone.patch_embed.proj.", "backbone.patch_embed.projection."),
    (".attn.", ".attn.w_msa."),
    (".mlp.fc1.", ".ffn.layers.0.0."),
    (".mlp.fc2.", ".ffn.layers.1."),
)
_MERGE_KEY = re.compile(r"^backbone\.(?:layers|stages)\.\d+\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)$")


def _neighbour_blocks_to_unfold(tensor: torch.Tensor) -> torch.Tensor:
    """Last dim 4C: Sense-X blocks [(0,0), (1,0), (0,1), (1,1)] x C -> unfold order c*4 + 2*row + col."""
    blocks = tensor.unflatten(-1, (4, tensor.shape[-1] // 4))[..., [0, 2, 1, 3], :]
    return blocks.transpose(-1, -2).flatten(-2)


def _unfold_to_neighbour_blocks(tensor: torch.Tensor) -> torch.Tensor:
    unfolded = tensor.unflatten(-1, (tensor.shape[-1] // 4, 4)).transpose(-1, -2)
    return unfolded[..., [0, 2, 1, 3], :].flatten(-2)


def _convert(state: Mapping[str, torch.Tensor], to_mmdet3: bool) -> dict[str, torch.Tensor]:
    reorder = _neighbour_blocks_to_unfold if to_mmdet3 else _unfold_to_neighbour_blocks
    converted = {}
    for key, value in state.items():
        new_key = key
        if key.startswith("backbone."):
            for sensex, mmdet3 in _SWIN_RENAMES:
                new_key = new_key.replace(sensex, mmdet3) if to_mmdet3 else new_key.replace(mmdet3, sensex)
            if _MERGE_KEY.match(key):
                value = reorder(value)
        converted[new_key] = value
    return converted


def sensex_to_mmdet3(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sense-X (mmdet 2.x) layout -> our (mmdet 3.x) layout; non-Swin keys are unchanged."""
    return _convert(state, to_mmdet3=True)


def mmdet3_to_sensex(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`sensex_to_mmdet3` (Swin models only change)."""
    return _convert(state, to_mmdet3=False)


def load_checkpoint(model: nn.Module, path: str | Path) -> LoadReport:
    """Loads an official (either layout) or our own checkpoint into ``model``, strictly."""
    state = read_state_dict(path)
    return load_state_dict(model, state, source=str(path))


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> LoadReport:
    layout = detect_layout(state)
    if layout == "sensex":
        state = sensex_to_mmdet3(state)
    expected = model.state_dict()
    derived = {name: buffer for name, buffer in model.named_buffers() if name.endswith(_RELATIVE_POSITION_INDEX)}

    # A model built for training (e.g. with the denoising label embedding) keeps what it has.
    training_only = sorted(key for key in state if key.startswith(TRAINING_ONLY_PREFIXES) and key not in expected)
    usable = {}
    problems = []
    for key, value in state.items():
        if key in training_only or key.endswith(_BATCH_NORM_COUNTER):
            continue
        if key in derived:
            if not torch.equal(value.to(derived[key].device), derived[key]):
                problems.append(f"{key}: stored window index differs from the one this window size implies")
            continue
        if key not in expected:
            problems.append(f"unexpected key {key} {tuple(value.shape)}")
        elif value.shape != expected[key].shape:
            problems.append(f"shape mismatch {key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
        else:
            usable[key] = value
    problems.extend(f"missing key {key}" for key in expected if key not in state)
    if problems:
        listing = "\n  ".join(problems)
        raise CheckpointError(f"{source} ({layout} layout) does not fit the model, {len(problems)} problem(s):\n  {listing}")
    if training_only:
        groups = sorted({".".join(key.split(".")[:2]) for key in training_only})
        logger.info("%s: dropped %d training-only entries (%s)", source, len(training_only), ", ".join(groups))
    model.load_state_dict(usable, strict=True)
    return LoadReport(layout=layout, loaded=len(usable), dropped_training_only=tuple(training_only))


def save_checkpoint(model: nn.Module, path: str | Path, layout: Layout = "mmdet3") -> None:
    """Writes ``{"state_dict": ...}`` in the given official layout (atomically: temp file + rename)."""
    path = Path(path)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    if layout == "sensex":
        state = mmdet3_to_sensex(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(temporary))
        else:
            torch.save({"state_dict": state}, temporary)
