"""Loading official Co-DETR checkpoints (and saving our own) without running pickled code.

Official files are mmcv/mmengine checkpoints: a dict whose ``state_dict`` holds the weights
(``meta``, ``optimizer`` ... beside it). We also accept ``model`` / ``ema`` wrappers, a bare
state dict, a ``module.`` (DDP) prefix, and ``.safetensors`` files (if the package is installed).

Exponential-moving-average (EMA) copies come in two forms; by default the main weights load and
the copy is reported as dropped, ``use_ema=True`` loads the copy instead:

* mmdet 2.x ``BaseEMAHook`` (``ExpMomentumEMAHook`` ...) registers one buffer per state-dict
  entry, named ``ema_`` + the entry's name with ``.`` replaced by ``_``
  (``backbone.conv1.weight`` -> ``ema_backbone_conv1_weight``), saved beside the weights.
* mmengine ``EMAHook`` (mmdet 3.x ``ExpMomentumEMA``) saves ``ema_state_dict`` beside
  ``state_dict``: the averaged model's own state, ``module.<name>`` entries plus its update
  counter ``steps``.

Both hooks swap the two copies before a checkpoint is written (mmengine always; mmdet 2.x at the
end of each epoch of an epoch-based run), so in the files they write the main weights are the
averaged ones and the EMA-named copy holds the raw training weights (the hooks' docstrings: "the
original model parameters are actually saved in ema field"). ``use_ema=True`` therefore means "load
the copy stored under the EMA names", whatever it holds.

Files that are not checkpoints (an image, text, an HTML error page, a Git LFS pointer ...) are told
apart from checkpoints whose pickle names classes outside the allowlist: only the latter get the
advice to re-save the weights from a trusted copy.

Two layouts exist and differ only in the Swin backbone:

* mmdetection 3.x (our module layout): ``backbone.stages.{i}.blocks.{j}.attn.w_msa.qkv`` ...,
  ``ffn.layers.{0.0,1}``, ``patch_embed.projection``; patch merging in ``nn.Unfold`` channel order.
* Sense-X / original Swin (mmdetection 2.x): ``backbone.layers.{i}.blocks.{j}.attn.qkv`` ...,
  ``mlp.fc{1,2}``, ``patch_embed.proj``; patch merging concatenates the 2x2 neighbours
  (0,0), (1,0), (0,1), (1,1) block-wise, so its norm and reduction weights are permuted here.

Training-only entries (auxiliary heads, denoising embeddings, ...) are logged and dropped;
derived buffers are checked or skipped; anything else that does not match is an error that first
says which model the checkpoint looks like (backbone, classes, queries) and the counts of matched,
missing, unexpected and mismatched keys, then lists the first keys of each kind.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import re
from collections.abc import Mapping
import zipfile
from dataclasses import dataclass, replace
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
class CheckpointWeights:
    """The tensors chosen from a checkpoint file (still in the file's layout) and what was left out.

    ``dropped``: one phrase per group of entries not chosen (e.g. ``"EMA copy (168 ema_* entries)"``).
    """

    state: dict[str, torch.Tensor]
    dropped: tuple[str, ...] = ()
    use_ema: bool = False


@dataclass(frozen=True)
class LoadReport:
    """``loaded``: tensors copied into the model; ``dropped_training_only``: keys of the training
    heads left out; ``dropped``: other groups left out (see :class:`CheckpointWeights`);
    ``use_ema``: whether the EMA-named copy was loaded."""

    layout: Layout
    loaded: int
    dropped_training_only: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    use_ema: bool = False


def read_checkpoint(path: str | Path, use_ema: bool = False) -> CheckpointWeights:
    """Tensors of a ``.pth`` / ``.pt`` / ``.safetensors`` file, unwrapped from its container.

    ``use_ema``: take the EMA-named copy (see the module docstring) instead of the main weights.
    Raises FileNotFoundError, or CheckpointError when the file is not a checkpoint (naming what it
    looks like), is damaged, names pickled classes outside the allowlist (naming them), or holds
    no EMA copy although ``use_ema`` asks for one.
    """
    path = Path(path)
    if path.is_file() and identify_file(path) == _SAFETENSORS:
        content: object = _read_safetensors(path)
    else:
        content = load_torch_file(path)
    return select_weights(content, str(path), use_ema)


def load_torch_file(path: str | Path) -> object:
    """Everything a ``torch.save`` file holds (e.g. a training checkpoint with its optimizer
    state), unpickled weights-only. Raises FileNotFoundError, or CheckpointError when the file is
    not a checkpoint (naming what it looks like), is damaged, or names pickled classes outside the
    allowlist (naming them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    kind = identify_file(path)
    if kind not in (_TORCH_ZIP, _TORCH_PICKLE):
        raise CheckpointError(
            f"{path} is not a checkpoint: it looks like {kind}. Expected a file written by torch.save "
            "(.pth / .pt: a zip archive or a pickle) or a .safetensors file."
        )
    return _torch_load(path)


def read_state_dict(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tensors :func:`read_checkpoint` chooses, without the account of what it left out."""
    return read_checkpoint(path, use_ema).state


# ---- what a file is -----------------------------------------------------------------------------

_TORCH_ZIP = "a PyTorch zip checkpoint"
_TORCH_PICKLE = "a legacy PyTorch pickle checkpoint"
_SAFETENSORS = "a safetensors file"
# torch.save's legacy (non-zip) format starts with pickle protocol 2 and this magic number
# (torch/serialization.py: MAGIC_NUMBER = 0x1950A86A20F9469CFC6C, pickled as a 10-byte LONG1).
_TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_SIGNATURES = (  # leading bytes of common files that end up renamed to .pth (file(1)'s magic numbers)
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"RIFF", "a RIFF file (WebP image, WAV or AVI)"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"BZh", "a bzip2 archive (unpack it first)"),
    (b"\xfd7zXZ\x00", "an xz archive (unpack it first)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (unpack it first)"),
    (b"Rar!", "a RAR archive (unpack it first)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. a Keras model)"),
    (b"\x7fELF", "an ELF executable or shared library"),
    (b"version https://git-lfs", "a Git LFS pointer: the real file was never downloaded (run `git lfs pull`)"),
)


def identify_file(path: str | Path) -> str:
    """What a file looks like from its first bytes: one of the three checkpoint kinds this module
    reads, or a phrase naming something else ("a JPEG image", "text starting 'hello'", ...)."""
    path = Path(path)
    with path.open("rb") as file:
        head = file.read(512)
    if not head:
        return "an empty file"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _identify_zip(path)
    if head.startswith(_TORCH_LEGACY_HEAD):
        return _TORCH_PICKLE
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle that torch.save did not write (no PyTorch magic number)"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return _SAFETENSORS
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    text = _as_text(head)
    if text is None:
        return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        return "an HTML page (a download that returned a web page instead of the file?)"
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"text starting {first_line[:60]!r}"


def _identify_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):  # a damaged zip: torch.load says what is wrong with it
        return _TORCH_ZIP
    if any(name.endswith("/constants.pkl") for name in names):  # torch.jit.save's archive
        return "a TorchScript program (torch.jit.save), not a checkpoint"
    if any(name.endswith("/models/model.json") for name in names):  # torch.export.save's archive
        return "an ExportedProgram (.pt2, torch.export.save), not a checkpoint"
    if any(name.endswith("data.pkl") for name in names):
        return _TORCH_ZIP
    return "a zip archive that torch.save did not write (no data.pkl inside)"


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at the end of the sample is fine
        if error.start < len(head) - 3:
            return None
        text = head[: error.start].decode("utf-8")
    printable = sum(character.isprintable() or character in "\t\r\n" for character in text)
    return text if text and printable == len(text) else None


# ---- reading ------------------------------------------------------------------------------------

def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from error
    try:
        return dict(load_file(str(path)))
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file: {error}") from error


def _torch_load(path: Path) -> object:
    # Leaving the context removes what it added: skip entries the caller allowed globally already.
    already_allowed = set(torch.serialization.get_safe_globals())
    numpy_globals = [entry for entry in _numpy_safe_globals() if entry not in already_allowed]
    with torch.serialization.safe_globals(numpy_globals):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            refused = _refused_globals(path, error)
            if refused:
                raise CheckpointError(_trust_message(path, refused)) from error
            raise CheckpointError(f"{path}: damaged PyTorch checkpoint, its pickle does not parse ({_unpickler_reason(error)})") from error
        except Exception as error:  # damaged bytes surface as RuntimeError, EOFError, KeyError, IndexError ...
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or damaged?): {type(error).__name__}: {error}") from error


# What torch's weights-only unpickler says when it meets something outside its allowlist (as
# opposed to bytes that are no valid pickle): the global or the class it refused.
_REFUSED_BY_ALLOWLIST = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def _refused_globals(path: Path, error: pickle.UnpicklingError) -> list[str]:
    """The pickled globals outside the allowlist active around this call (empty: the pickle is
    damaged rather than untrusted)."""
    try:
        refused = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) files are not supported there; torch's message names the first one
        refused = set()
    refused.update(name for match in _REFUSED_BY_ALLOWLIST.findall(str(error)) for name in match if name)
    return sorted(refused)


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """The unpickler's own words, without torch's advice to disable weights_only (unsafe, and
    pointless for a damaged file)."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split()) or type(error).__name__


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


def _trust_message(path: Path, refused: list[str]) -> str:
    return (
        f"{path}: refused to unpickle the pickled global(s) {', '.join(refused)}. Only tensors, plain containers "
        "and numpy scalars/arrays are read, so no code from the file runs. If you trust the file, re-save only "
        f"its weights: python -c \"import torch; c = torch.load({str(path)!r}, weights_only=False); "
        f"torch.save({{'state_dict': c['state_dict']}}, {str(path.with_name(path.stem + '_weights.pth'))!r})\""
    )


# ---- choosing the weights -----------------------------------------------------------------------

_MAIN_WRAPPERS = ("state_dict", "model")
_EMA_WRAPPERS = ("ema_state_dict", "ema")  # mmengine EMAHook; other trainers' EMA copies
_DDP_PREFIX = "module."  # DistributedDataParallel, and mmengine's averaged model (BaseAveragedModel.module)
_AVERAGED_MODEL_COUNTER = "steps"  # BaseAveragedModel's update counter, beside its module.* entries


def select_weights(content: object, source: str, use_ema: bool = False) -> CheckpointWeights:
    """Chooses the weights in a loaded checkpoint ``content`` (see the module docstring)."""
    if not isinstance(content, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(content).__name__}")
    main = next((key for key in _MAIN_WRAPPERS if isinstance(content.get(key), Mapping)), None)
    ema = next((key for key in _EMA_WRAPPERS if isinstance(content.get(key), Mapping)), None)
    dropped = []
    chosen, left = (ema, main) if (use_ema or main is None) and ema is not None else (main, ema)
    if left is not None:
        count = sum(isinstance(value, torch.Tensor) for value in content[left].values())
        dropped.append(f"'{left}' ({count} tensors)")
    tensors = _tensors(content[chosen] if chosen is not None else content, source, dropped)

    copies = {key: _ema_buffer_name(key) for key in tensors if _ema_buffer_name(key) in tensors}
    if copies:
        ema_names = set(copies.values())
        if use_ema:
            tensors = {key: tensors[copies.get(key, key)] for key in tensors if key not in ema_names}
            dropped.append(f"main weights ({len(copies)} entries, replaced by their ema_* copies)")
        else:
            tensors = {key: value for key, value in tensors.items() if key not in ema_names}
            dropped.append(f"EMA copy ({len(copies)} ema_* entries)")
    elif use_ema and chosen not in _EMA_WRAPPERS:
        raise CheckpointError(
            f"{source}: use_ema asks for the EMA copy, but the file holds none (looked for "
            f"{' / '.join(repr(key) for key in _EMA_WRAPPERS)} beside the weights and ema_<name> entries); "
            "load it without use_ema / --use-ema"
        )
    return CheckpointWeights(tensors, tuple(dropped), use_ema=use_ema)


def _ema_buffer_name(key: str) -> str:
    """mmdet 2.x BaseEMAHook's buffer name for a state-dict entry ("." is not allowed in buffer names)."""
    return "ema_" + key.replace(".", "_")


def _tensors(state: Mapping, source: str, dropped: list[str]) -> dict[str, torch.Tensor]:
    """The tensor entries, without a ``module.`` prefix (and an averaged model's counter beside it)."""
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: no tensors found (top-level keys: {sorted(map(str, state))[:10]})")
    prefixed = [key for key in tensors if key.startswith(_DDP_PREFIX)]
    if not prefixed:
        return tensors
    counter = tensors.get(_AVERAGED_MODEL_COUNTER)
    if counter is not None and counter.dim() == 0 and not counter.is_floating_point():
        del tensors[_AVERAGED_MODEL_COUNTER]
        dropped.append(f"'{_AVERAGED_MODEL_COUNTER}' (the update counter of an averaged model)")
    unprefixed = {key.removeprefix(_DDP_PREFIX): value for key, value in tensors.items()}
    if len(unprefixed) < len(tensors):
        twice = sorted(key for key in tensors if key.startswith(_DDP_PREFIX) and key.removeprefix(_DDP_PREFIX) in tensors)
        raise CheckpointError(f"{source}: {len(twice)} entries are stored both with and without the 'module.' prefix, e.g. {twice[0]}")
    return unprefixed


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


def load_checkpoint(model: nn.Module, path: str | Path, use_ema: bool = False) -> LoadReport:
    """Loads an official (either layout) or our own checkpoint into ``model``, strictly.

    ``use_ema``: load the EMA-named copy instead of the main weights (see the module docstring).
    What was left out is logged in one line and returned in the report.
    """
    weights = read_checkpoint(path, use_ema)
    report = load_state_dict(model, weights.state, source=str(path))
    if weights.dropped:
        copy = "EMA-named copy" if use_ema else "weights"
        logger.info("%s: loaded the %s; dropped %s", path, copy, "; ".join(weights.dropped))
    return replace(report, dropped=weights.dropped, use_ema=use_ema)


_LISTED_PER_KIND = 20  # keys listed per kind of problem; the counts cover the rest


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> LoadReport:
    """Loads ``state`` (either layout) into ``model`` strictly; CheckpointError lists what does not fit."""
    layout = detect_layout(state)
    if layout == "sensex":
        state = sensex_to_mmdet3(state)
    expected = model.state_dict()
    derived = {name: buffer for name, buffer in model.named_buffers() if name.endswith(_RELATIVE_POSITION_INDEX)}

    # A model built for training (e.g. with the denoising label embedding) keeps what it has.
    training_only = sorted(key for key in state if key.startswith(TRAINING_ONLY_PREFIXES) and key not in expected)
    usable = {}
    unexpected, mismatched = [], []
    for key, value in state.items():
        if key in training_only or key.endswith(_BATCH_NORM_COUNTER):
            continue
        if key in derived:
            if not torch.equal(value.to(derived[key].device), derived[key]):
                mismatched.append(f"{key}: stored window index differs from the one this window size implies")
            continue
        if key not in expected:
            unexpected.append(f"unexpected key {key} {tuple(value.shape)}")
        elif value.shape != expected[key].shape:
            mismatched.append(f"shape mismatch {key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
        else:
            usable[key] = value
    missing = [f"missing key {key}" for key in expected if key not in state]
    problems = len(unexpected) + len(mismatched) + len(missing)
    if problems:
        summary = (
            f"{source} ({layout} layout) does not fit the model, {problems} problem(s): the checkpoint looks like "
            f"{describe_state(state)}; the model is {describe_state(expected)}. Keys: {len(usable)} match, "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mismatched."
        )
        listing = [*_capped(missing, "missing"), *_capped(unexpected, "unexpected"), *_capped(mismatched, "mismatched")]
        raise CheckpointError("\n  ".join([summary, *listing]))
    if training_only:
        groups = sorted({".".join(key.split(".")[:2]) for key in training_only})
        logger.info("%s: dropped %d training-only entries (%s)", source, len(training_only), ", ".join(groups))
    model.load_state_dict(usable, strict=True)
    return LoadReport(layout=layout, loaded=len(usable), dropped_training_only=tuple(training_only))


def _capped(lines: list[str], kind: str) -> list[str]:
    if len(lines) <= _LISTED_PER_KIND:
        return lines
    return [*lines[:_LISTED_PER_KIND], f"... and {len(lines) - _LISTED_PER_KIND} more {kind}"]


# ---- which model a state dict belongs to ---------------------------------------------------------

# (embed_dims, depths) -> name, from the Swin paper's Table 1 (Liu et al. 2021, arXiv:2103.14030).
_SWIN_NAMES = {
    (96, (2, 2, 6, 2)): "Swin-T",
    (96, (2, 2, 18, 2)): "Swin-S",
    (128, (2, 2, 18, 2)): "Swin-B",
    (192, (2, 2, 18, 2)): "Swin-L",
}
# (bottleneck blocks, blocks per stage) -> name, from the ResNet paper's Table 1 (He et al. 2016).
_RESNET_NAMES = {
    (False, (2, 2, 2, 2)): "ResNet-18",
    (False, (3, 4, 6, 3)): "ResNet-34",
    (True, (3, 4, 6, 3)): "ResNet-50",
    (True, (3, 4, 23, 3)): "ResNet-101",
    (True, (3, 8, 36, 3)): "ResNet-152",
}
_DETECTOR_PREFIXES = ("backbone.", "neck.", "query_head.")


def describe_state(state: Mapping[str, torch.Tensor]) -> str:
    """One phrase naming the detector a state dict (our layout) belongs to: backbone, number of
    classes (rows of ``cls_branches.0``), queries and encoder/decoder layers."""
    if not any(key.startswith(_DETECTOR_PREFIXES) for key in state):
        return f"no Co-DETR detector (first keys: {', '.join(list(state)[:5])})"
    parts = [_describe_backbone(state)]
    classes = state.get("query_head.cls_branches.0.weight")
    if classes is not None:
        parts.append(f"{classes.shape[0]} classes")
    queries = state.get("query_head.transformer.query_embed.weight")
    if queries is not None:
        parts.append(f"{queries.shape[0]} queries")
    for part in ("encoder", "decoder"):
        layers = _indices(state, f"query_head.transformer.{part}.layers.")
        if layers:
            parts.append(f"{len(layers)} {part} layers")
    return ", ".join(parts)


def _indices(state: Mapping[str, torch.Tensor], prefix: str) -> set[int]:
    """The numbers that follow ``prefix`` in the keys (module list indices)."""
    return {int(key[len(prefix):].split(".")[0]) for key in state if key.startswith(prefix) and key[len(prefix):].split(".")[0].isdigit()}


def _describe_backbone(state: Mapping[str, torch.Tensor]) -> str:
    patch_embed = state.get("backbone.patch_embed.projection.weight")
    if patch_embed is not None:
        stages = sorted(_indices(state, "backbone.stages."))
        depths = tuple(len(_indices(state, f"backbone.stages.{stage}.blocks.")) for stage in stages)
        name = _SWIN_NAMES.get((patch_embed.shape[0], depths), f"Swin (embed_dims {patch_embed.shape[0]}, depths {list(depths)})")
        return f"a {name} backbone"
    if "backbone.conv1.weight" in state:
        stages = [len(_indices(state, f"backbone.layer{stage}.")) for stage in range(1, 5)]
        bottleneck = "backbone.layer1.0.conv3.weight" in state
        name = _RESNET_NAMES.get((bottleneck, tuple(stages)), f"ResNet ({'bottleneck' if bottleneck else 'basic'} blocks {stages})")
        return f"a {name} backbone"
    components = sorted({key.split(".")[1] for key in state if key.startswith("backbone.")})
    return f"an unknown backbone (backbone.{{{', '.join(components[:5])}}})" if components else "no backbone"


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
