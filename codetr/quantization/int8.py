"""INT8 post-training quantization: calibrate with NVIDIA ModelOpt, deploy as Q/DQ modules.

ModelOpt (``modelopt.torch.quantization``) owns the algorithm: it inserts TensorQuantizers into
a copy of the model and records the "max" calibration statistics (amax: the largest magnitude
seen, per tensor for activations, per output channel for weights). codetr then rebuilds the
model with :mod:`codetr.quantization.qdq` modules holding those amax values: unlike ModelOpt's
own fake-quant (a data-dependent Python path on CPU, a TensorRT-only op on CUDA) they run in
PyTorch on any device, torch.export keeps them, and they become ONNX QuantizeLinear /
DequantizeLinear.

What is quantized: the inputs and weights of every nn.Linear and nn.Conv2d that runs during
calibration, except the excluded ones. MSDA itself has no weights and stays in floating point.
Not quantized either: nn.MultiheadAttention's projections (the decoder self-attention calls them
through ``F.multi_head_attention_forward``, not as modules), normalisation layers and
element-wise ops.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from codetr.atomic import atomic_path
from codetr.config import PreprocessConfig
from codetr.quantization.calibration import CalibrationSet, forward_loop
from codetr.quantization.qdq import QUANT_MAX, QUANT_MIN, SCALE_DIVISOR, quantized_module

logger = logging.getLogger("codetr.quantization")

DEFAULT_EXCLUDE = (
    "backbone.conv1",  # ResNet's first convolution: 3 input channels, little compute, raw pixels
    "backbone.patch_embed",  # Swin's patch embedding, the same role
    "*.sampling_offsets",  # MSDA sampling-location projections: an error moves the sampled pixel
    "*.attention_weights",  # MSDA attention logits, fed to a softmax
    "query_head.cls_branches",  # classification logits: scores and their ranking
    "query_head.reg_branches",  # box deltas, added in inverse-sigmoid space
)
"""Module-name patterns kept in floating point by default (see :func:`matches`). Sources: the
issue's analysis of RT-DETR's ModelOpt INT8 failure (deformable-attention inputs) and the
sensitivity table of ``codetr quantize-sensitivity``."""

AMAX_FILE_NAME = "int8_amax.json"
INSTALL_HINT = "pip install 'codetr[int8]'"


class ModelOptUnavailableError(ValueError):
    """NVIDIA ModelOpt cannot be imported; the message says how to install it."""


@dataclasses.dataclass(frozen=True)
class LayerAmax:
    """Calibrated ranges of one layer: ``input`` (scalar, per tensor) and ``weight`` ([C_out])."""

    input: float
    weight: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class QuantizationReport:
    """What :func:`quantize_int8` did.

    ``quantized``: module names now INT8 (inputs and weights); ``excluded``: quantizable modules
    kept in floating point by ``exclude_patterns``; ``not_run``: Linear/Conv2d modules that did
    not run as modules during calibration (kept floating point); ``amax``: the calibration
    statistics of every module that ran (quantized or not).
    """

    quantized: tuple[str, ...]
    excluded: tuple[str, ...]
    not_run: tuple[str, ...]
    exclude_patterns: tuple[str, ...]
    amax: dict[str, LayerAmax]
    calibration: CalibrationSet | None
    device: str

    def to_json(self) -> dict[str, object]:
        """The metadata.json ``quantization`` section (without the amax values, see :func:`write_amax`)."""
        return {
            "method": "post-training quantization, NVIDIA ModelOpt max calibration",
            "config": {
                "weights": "int8 symmetric, per output channel (axis 0)",
                "activations": "int8 symmetric, per tensor",
                "scale": f"amax / {SCALE_DIVISOR:g}",
                "range": [QUANT_MIN, QUANT_MAX],
                "zero_point": 0,
                "modules": "inputs and weights of nn.Linear and nn.Conv2d",
            },
            "exclude_patterns": list(self.exclude_patterns),
            "quantized_modules": list(self.quantized),
            "excluded_modules": list(self.excluded),
            "not_run_modules": list(self.not_run),
            "calibration": self.calibration.to_json() if self.calibration else None,
            "calibration_device": self.device,
            "amax_file": AMAX_FILE_NAME,
        }


@dataclasses.dataclass
class QuantizationResult:
    """``model``: a copy of the input model with Q/DQ modules (float32, on the calibration
    device, eval mode); ``report``: what was quantized and the statistics."""

    model: nn.Module
    report: QuantizationReport


def import_modelopt():
    """``modelopt.torch.quantization``, or :class:`ModelOptUnavailableError` naming the extra."""
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as error:
        raise ModelOptUnavailableError(
            f"INT8 quantization needs NVIDIA ModelOpt (nvidia-modelopt >= 0.47, which also imports "
            f"requests and huggingface_hub): {INSTALL_HINT} ({error})"
        ) from None
    return mtq


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The nn.Linear and nn.Conv2d modules of ``model`` by name, in definition order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))}


def matches(name: str, pattern: str) -> bool:
    """Whether module ``name`` or one of its parents matches the fnmatch ``pattern``
    ("query_head.reg_branches" covers query_head.reg_branches.0.2)."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:end]), pattern) for end in range(1, len(parts) + 1))


def excluded_names(names: Iterable[str], patterns: Sequence[str], required: Sequence[str] = ()) -> set[str]:
    """The names matching any of ``patterns``; ValueError naming each of ``required`` (the
    patterns a user gave) that matches none, with a few of the names it could match."""
    names = list(names)
    unmatched = [pattern for pattern in required if not any(matches(name, pattern) for name in names)]
    if unmatched:
        examples = ", ".join(names[:3] + ["..."] + names[-2:]) if len(names) > 5 else ", ".join(names)
        raise ValueError(
            "--int8-exclude: " + ", ".join(repr(pattern) for pattern in unmatched)
            + f" match(es) no Linear/Conv2d module of the model (module names look like: {examples})"
        )
    return {name for name in names if any(matches(name, pattern) for pattern in patterns)}


def calibrate(model: nn.Module, images: CalibrationSet, preprocess: PreprocessConfig, device: torch.device,
              progress: bool = False) -> dict[str, LayerAmax]:
    """ModelOpt max calibration of every Linear/Conv2d of a float32 copy of ``model`` on ``device``.

    Returns the amax of each module that ran (modules never called as modules are absent).
    ``model`` itself is not changed.
    """
    mtq = import_modelopt()
    calibrated = copy.deepcopy(model).eval().requires_grad_(False).to(device=device, dtype=torch.float32)
    names = quantizable_modules(calibrated)
    # Everything off, then 8-bit input (per tensor) and weight (per output channel) quantizers on
    # exactly the Linear/Conv2d modules: ModelOpt's INT8 defaults, without its LLM-specific rules.
    quant_cfg: list[dict] = [{"quantizer_name": "*", "enable": False}]
    for name in names:
        quant_cfg.append({"quantizer_name": f"{name}.input_quantizer", "cfg": {"num_bits": 8, "axis": None}})
        quant_cfg.append({"quantizer_name": f"{name}.weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}})
    calibrated = mtq.quantize(calibrated, {"quant_cfg": quant_cfg, "algorithm": "max"},
                              forward_loop(images, preprocess, device, progress))
    amax = {}
    for name, module in calibrated.named_modules():
        if name not in names:
            continue
        input_amax, weight_amax = module.input_quantizer.amax, module.weight_quantizer.amax
        if input_amax is None or weight_amax is None:
            continue  # never called as a module (e.g. nn.MultiheadAttention.out_proj)
        amax[name] = LayerAmax(float(input_amax), tuple(weight_amax.detach().float().flatten().cpu().tolist()))
    return amax


def apply_amax(model: nn.Module, amax: dict[str, LayerAmax], names: Iterable[str]) -> nn.Module:
    """A copy of ``model`` with each module in ``names`` replaced by its Q/DQ version, using
    ``amax``; KeyError naming a module without statistics."""
    quantized = copy.deepcopy(model)
    for name in names:
        stats = amax[name]
        parent_name, _, child = name.rpartition(".")
        parent = quantized.get_submodule(parent_name)
        original = getattr(parent, child)
        device = original.weight.device
        setattr(parent, child, quantized_module(
            original, torch.tensor(stats.input, device=device), torch.tensor(stats.weight, device=device)
        ))
    return quantized


def quantize_int8(
    model: nn.Module,
    calibration: CalibrationSet,
    preprocess: PreprocessConfig,
    *,
    exclude: Sequence[str] = (),
    default_exclude: bool = True,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> QuantizationResult:
    """INT8 post-training quantization of ``model`` (a CoDINO; not changed).

    ``calibration``: the images (:func:`codetr.quantization.calibration.calibration_set`),
    pre-processed with ``preprocess`` (the export's). ``exclude``: module-name patterns kept in
    floating point on top of :data:`DEFAULT_EXCLUDE` (or instead of it, ``default_exclude=False``);
    each must match a Linear/Conv2d module (ValueError naming it). ``device``: where calibration
    runs, default CUDA when available, else CPU. Raises :class:`ModelOptUnavailableError` without
    ModelOpt. The errors come before any calibration work.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    import_modelopt()
    modules = quantizable_modules(model)
    patterns = (*(DEFAULT_EXCLUDE if default_exclude else ()), *exclude)
    excluded = excluded_names(modules, patterns, required=exclude)
    amax = calibrate(model, calibration, preprocess, device, progress)
    quantized = [name for name in modules if name in amax and name not in excluded]
    report = QuantizationReport(
        quantized=tuple(quantized),
        excluded=tuple(name for name in modules if name in excluded),
        not_run=tuple(name for name in modules if name not in amax),
        exclude_patterns=patterns,
        amax=amax,
        calibration=calibration,
        device=str(device),
    )
    qdq_model = apply_amax(model, amax, quantized).eval().requires_grad_(False).to(device=device, dtype=torch.float32)
    logger.info("INT8: %d modules quantized, %d excluded, %d not run as modules",
                len(report.quantized), len(report.excluded), len(report.not_run))
    return QuantizationResult(qdq_model, report)


def amax_to_json(amax: dict[str, LayerAmax]) -> dict[str, dict[str, object]]:
    return {name: {"input": stats.input, "weight": list(stats.weight)} for name, stats in amax.items()}


def amax_from_json(data: dict[str, dict[str, object]]) -> dict[str, LayerAmax]:
    return {name: LayerAmax(float(stats["input"]), tuple(float(v) for v in stats["weight"])) for name, stats in data.items()}


def write_amax(report: QuantizationReport, path: Path) -> None:
    """The amax statistics file: {"format", "quantized": [...], "amax": {module: {"input": float,
    "weight": [per output channel]}}}, written atomically."""
    document = {"format": "codetr-int8-amax/1", "quantized": list(report.quantized), "amax": amax_to_json(report.amax)}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document) + "\n")
