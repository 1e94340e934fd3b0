"""``codetr export`` (and ``export.py``): options -> model -> :func:`codetr.export.export_model`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from codetr.checkpoint import load_checkpoint
from codetr.cli.int8_options import add_int8_arguments, calibration_from_args
from codetr.config import Config, load_config
from codetr.contract.artifacts import Artifact, CompileMode, MsdaMode
from codetr.export.options import DimRange, ExportOptions
from codetr.export.pipeline import export_model, prepare_output_dir
from codetr.export.program import largest_feature_stride
from codetr.export.stages import ExportError
from codetr.export.tensorrt_engine import tensorrt_available
from codetr.export.torch_tensorrt_program import torch_tensorrt_unavailable_reason
from codetr.models import DTYPES, build_model
from codetr.quantization.int8 import quantize_int8
from codetr.quantization.onnx_qdq import MIN_HALF_OPSET, check_opset

logger = logging.getLogger("codetr.export")

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "co_dino_5scale_r50_lsj_8xb2_1x_coco.toml"
DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "codetr" / "tensorrt_timing.cache"
AUTO_ARTIFACTS = "auto"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ExportedProgram, ONNX, TensorRT engine, ...",
        description="Export a Co-DINO model to an ExportedProgram (.pt2), ONNX and a TensorRT engine.",
    )
    parser.add_argument("--output", type=Path, required=True, help="output directory (created if missing)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="model config TOML (default: %(default)s)")
    parser.add_argument(
        "--checkpoint", type=Path,
        help="official Co-DETR (mmdet 2.x/3.x) or codetr checkpoint; without it the weights are random",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16")
    parser.add_argument("--optimization-level", type=int, choices=range(6), default=3, metavar="{0..5}",
                        help="TensorRT builder optimisation level (default: %(default)s)")
    parser.add_argument("--height", type=int, help="input height; default: the config's pad_size")
    parser.add_argument("--width", type=int, help="input width; default: the config's pad_size")
    parser.add_argument("--dynamic-height", metavar="MIN:MAX",
                        help="export a dynamic height in [MIN, MAX]; --height is the size TensorRT tunes for")
    parser.add_argument("--dynamic-width", metavar="MIN:MAX", help="as --dynamic-height, for the width")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--artifacts", default=AUTO_ARTIFACTS,
        help="comma-separated subset of " + ",".join(a.value for a in Artifact)
        + " (default: auto = all, the engine only when TensorRT and, for --msda plugin, the plugin library are found)",
    )
    parser.add_argument("--msda", choices=[mode.value for mode in MsdaMode], default=MsdaMode.PLUGIN.value,
                        help="plugin: one codetr::CodetrMSDA node (our TensorRT plugin); nvidia: NVIDIA's "
                        "MultiscaleDeformableAttnPlugin_TRT; decomposed: standard ONNX ops (GridSample)")
    parser.add_argument("--torch-tensorrt", choices=[mode.value for mode in CompileMode],
                        help="also compile the ExportedProgram with Torch-TensorRT (needs torch-tensorrt and "
                        "a CUDA GPU): hybrid keeps MSDA in PyTorch between TensorRT segments; full maps it to "
                        "our plugin (one engine). Default: off")
    parser.add_argument("--plugin-library", type=Path,
                        help="libcodetr_msda_trt.so for the engine build (default: the package's copy)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to trace on (default: %(default)s)")
    parser.add_argument("--opset", type=int,
                        help="ONNX opset (default: 18; 19 with --int8, the first with float16 QuantizeLinear)")
    parser.add_argument("--timing-cache", type=Path, default=DEFAULT_TIMING_CACHE,
                        help="TensorRT timing cache, reused and updated (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights used without --checkpoint")
    add_int8_arguments(parser, with_switch=True)
    return parser


def _default_size(config: Config, given: int | None, axis: int, name: str) -> int:
    if given is not None:
        return given
    if config.preprocess.pad_size is None:
        raise ValueError(f"--{name} is required: config {config.name} has no fixed pad_size")
    return config.preprocess.pad_size[axis]


def _artifacts(text: str, msda: MsdaMode, plugin_library: Path | None) -> tuple[Artifact, ...]:
    if text != AUTO_ARTIFACTS:
        names = [name.strip() for name in text.split(",") if name.strip()]
        known = {artifact.value: artifact for artifact in Artifact}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(f"--artifacts: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
        artifacts = tuple(artifact for artifact in Artifact if artifact.value in names)
        if Artifact.ENGINE in artifacts and not tensorrt_available():
            raise ValueError(
                "--artifacts engine: no TensorRT builder; pip install tensorrt (or tensorrt-rtx-cu13-libs "
                "tensorrt-rtx-cu13-bindings)"
            )
        return artifacts
    artifacts = (Artifact.EXPORTED_PROGRAM, Artifact.ONNX)
    reason = _engine_unavailable_reason(msda, plugin_library)
    if reason:
        logger.info("not building a TensorRT engine: %s", reason)
        return artifacts
    return (*artifacts, Artifact.ENGINE)


def _engine_unavailable_reason(msda: MsdaMode, plugin_library: Path | None) -> str | None:
    if not tensorrt_available():
        return "no TensorRT builder installed"
    from codetr.tensorrt.backend import import_tensorrt, is_tensorrt_rtx

    if msda is MsdaMode.NVIDIA and is_tensorrt_rtx(import_tensorrt()):
        return "TensorRT-RTX does not ship MultiscaleDeformableAttnPlugin_TRT"
    if msda is MsdaMode.PLUGIN:
        from codetr.tensorrt.plugin import plugin_library_path

        try:
            plugin_library_path(plugin_library)
        except FileNotFoundError as error:
            return str(error)
    return None


def _torch_tensorrt_mode(text: str | None, device: torch.device) -> CompileMode | None:
    """The requested Torch-TensorRT mode; like an explicitly requested engine, it is an error
    (before any work) when it cannot be produced here."""
    if text is None:
        return None
    reason = torch_tensorrt_unavailable_reason()
    if reason:
        raise ValueError(f"--torch-tensorrt {text}: {reason}")
    if device.type != "cuda":
        raise ValueError(f"--torch-tensorrt {text}: Torch-TensorRT compiles on a CUDA GPU; use --device cuda")
    return CompileMode(text)


def options_from_args(args: argparse.Namespace, config: Config) -> ExportOptions:
    msda = MsdaMode(args.msda)
    device = torch.device(args.device)
    return ExportOptions(
        dtype=DTYPES[args.dtype],
        height=_default_size(config, args.height, 0, "height"),
        width=_default_size(config, args.width, 1, "width"),
        dynamic_height=DimRange.parse(args.dynamic_height, "--dynamic-height") if args.dynamic_height else None,
        dynamic_width=DimRange.parse(args.dynamic_width, "--dynamic-width") if args.dynamic_width else None,
        batch_size=args.batch_size,
        artifacts=_artifacts(args.artifacts, msda, args.plugin_library),
        msda=msda,
        optimization_level=args.optimization_level,
        device=device,
        opset=args.opset if args.opset is not None else (MIN_HALF_OPSET if args.int8 else 18),
        plugin_library=args.plugin_library,
        timing_cache=args.timing_cache,
        torch_tensorrt=_torch_tensorrt_mode(args.torch_tensorrt, device),
    )


def _warn_random_weights(seed: int) -> None:
    message = (
        f"NO --checkpoint GIVEN: exporting DETERMINISTIC RANDOM WEIGHTS (seed {seed}). "
        "The artifacts run but detect nothing meaningful; pass --checkpoint for a real model."
    )
    banner = "!" * len(message)
    logger.warning("\n%s\n%s\n%s", banner, message, banner)
    warnings.warn(message, stacklevel=2)


RESTARTED_FOR_RTX = "CODETR_EXPORT_RESTARTED_FOR_RTX"


def _restart_with_rtx_link_dir(options: ExportOptions, process_argv: Sequence[str] | None) -> None:
    """Make TensorRT-RTX's ONNX parser able to import our plugin nodes.

    The parser dlopens ``libtensorrt_rtx.so`` (unversioned; the wheel ships only ``.so.1``)
    and aborts the process when that fails. The loader reads LD_LIBRARY_PATH only at process
    start and a preloaded ``.so.1`` does not satisfy the unversioned name, so export.py
    restarts itself once with a folder holding that symlink (:func:`rtx_link_dir`) on the path.
    """
    if Artifact.ENGINE not in options.artifacts or options.msda is not MsdaMode.PLUGIN:
        return
    from codetr.tensorrt.backend import check_plugin_nodes_parsable, import_tensorrt, rtx_link_dir

    try:
        check_plugin_nodes_parsable(import_tensorrt())
    except RuntimeError:
        if process_argv is None or os.environ.get(RESTARTED_FOR_RTX):
            raise  # called as a function, or the restart did not help: report the reason
        library_path = os.pathsep.join(filter(None, [str(rtx_link_dir()), os.environ.get("LD_LIBRARY_PATH")]))
        logger.info("restarting with LD_LIBRARY_PATH=%s for TensorRT-RTX's ONNX parser", library_path)
        environment = dict(os.environ, LD_LIBRARY_PATH=library_path, **{RESTARTED_FOR_RTX: "1"})
        os.execve(sys.executable, [sys.executable, "-m", "codetr", *process_argv], environment)


def run(args: argparse.Namespace) -> int:
    try:
        if args.checkpoint is not None and not args.checkpoint.is_file():
            raise FileNotFoundError(f"--checkpoint: no such file {args.checkpoint}")
        config = load_config(args.config)
        options = options_from_args(args, config)
        options.check_sizes(config.preprocess.size_divisor, largest_feature_stride(config))
        if options.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device available; use --device cpu")
        calibration = calibration_from_args(args, config, enabled=args.int8)
        if args.int8:
            check_opset(options.opset, options.dtype)
        prepare_output_dir(args.output)
        _restart_with_rtx_link_dir(options, args.process_argv)
    except RuntimeError as error:
        raise ValueError(str(error)) from None

    try:
        model = build_model(config, seed=args.seed)
        if args.checkpoint is None:
            _warn_random_weights(args.seed)
        else:
            load_checkpoint(model, args.checkpoint)
        quantization = None
        if args.int8:
            quantized = quantize_int8(model, calibration, config.preprocess, exclude=args.int8_exclude,
                                      default_exclude=not args.int8_no_default_exclude, device=options.device,
                                      progress=True)
            model, quantization = quantized.model, quantized.report
        result = export_model(model, config, options, args.output, checkpoint=args.checkpoint,
                              quantization=quantization)
    except (ExportError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    total = sum(record.seconds for record in result.stages.records)
    precision = f"{args.dtype} + int8" if args.int8 else args.dtype
    print(f"exported {config.name} ({precision}, msda {options.msda.value}) to {result.output_dir} in {total:.1f} s:")
    for record in result.stages.records:
        written = f"  {record.path.name} {record.bytes / 1e6:.1f} MB" if record.path else ""
        print(f"  {record.name:<24} {record.seconds:7.1f} s{written}")
    if result.partition is not None:
        print(f"Torch-TensorRT {options.torch_tensorrt.value}: {result.partition}")
    return 0
