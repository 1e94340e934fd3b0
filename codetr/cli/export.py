"""``codetr export`` (and ``export.py``): options -> model -> :func:`codetr.export.export_model`.

Every check that needs no model runs before the model is built or a weight is loaded; the export
itself is one unit (see :mod:`codetr.export.pipeline`): when it fails or is interrupted, the
output folder is left as it was and one line says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch

from codetr.checkpoint import load_checkpoint
from codetr.cli.int8_options import add_int8_arguments, calibration_from_args
from codetr.cli.common import (
    CONFIG_HELP, FLOAT16_ON_CPU, USE_EMA_HELP, check_use_ema, default_device, device_type, interrupted, left_as_it_was,
    warn_random_weights,
)
from codetr.config import Config, load_config
from codetr.contract.artifacts import ARTIFACTS, Artifact, CompileMode, MsdaMode
from codetr.contract.cache import cache_dir
from codetr.contract.postprocess import PostprocessMode
from codetr.export.options import BUILT_ARTIFACTS, DEFAULT_ARTIFACTS, MAX_OPSET, MIN_OPSET_FOR_DTYPE, DimRange, ExportOptions
from codetr.export.msda_choice import AUTO, MSDA_CHOICES, MsdaChoice, choose_msda
from codetr.export.pipeline import check_output_dir, export_inputs, export_model
from codetr.export.program import check_input_sizes
from codetr.export.postprocess import score_threshold_for
from codetr.export.stages import ExportError
from codetr.models import DTYPES, build_model
from codetr.quantization.int8 import quantize_int8
from codetr.quantization.onnx_qdq import MIN_HALF_OPSET, check_opset
from codetr.tensorrt.backend import import_tensorrt, is_tensorrt_rtx, restart_for_rtx_parser, tensorrt_unavailable_reason
from codetr.tensorrt.plugin import plugin_library_path
from codetr.tensorrt.stock_plugin import stock_plugin_missing_reason
from codetr.tensorrt.torch_tensorrt import torch_tensorrt_unavailable_reason

logger = logging.getLogger("codetr.export")

DEFAULT_CONFIG = "co_dino_5scale_r50_lsj_8xb2_1x_coco"
"""The shipped config of the official Co-DINO R50 LSJ model (see codetr.config.shipped_configs)."""
DEFAULT_TIMING_CACHE = cache_dir("tensorrt_timing.cache")
AUTO_ARTIFACTS = "auto"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ExportedProgram, ONNX, TensorRT engine, Torch-TensorRT, AOTInductor package",
        description="Export a Co-DINO model to an ExportedProgram (.pt2), ONNX, a TensorRT engine, Torch-TensorRT "
        "and an AOTInductor package (--artifacts), with "
        "metadata.json describing the input, pre-processing and classes. The export is one unit: it is "
        "built aside and replaces the output folder only when every stage succeeded.",
    )
    parser.add_argument("--output", type=Path, required=True,
                        help="output folder: new, empty, or a previous codetr export (replaced whole)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder that holds other files, and everything in it (default: refuse)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"{CONFIG_HELP} (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path,
                        help="official Co-DETR (mmdet 2.x/3.x) or codetr checkpoint (default: none, random weights)")
    parser.add_argument("--use-ema", action="store_true", help=USE_EMA_HELP)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random weights used without --checkpoint (default: %(default)s)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16",
                        help="precision of weights and features (default: %(default)s, the GPU deployment "
                        f"precision; infer defaults to float32 because it may run on a CPU). {FLOAT16_ON_CPU}")
    parser.add_argument("--allow-tf32", action="store_true",
                        help="let float32 layers use TF32 on the GPU (tracing, engine); default: off, float32 "
                        "is IEEE float32")
    parser.add_argument("--height", type=int, help="input height (default: the config's pad_size)")
    parser.add_argument("--width", type=int, help="input width (default: the config's pad_size)")
    parser.add_argument("--dynamic-height", metavar="MIN:MAX",
                        help="export a dynamic height in [MIN, MAX]; --height is the size TensorRT tunes for "
                        "(default: static)")
    parser.add_argument("--dynamic-width", metavar="MIN:MAX", help="as --dynamic-height, for the width (default: static)")
    parser.add_argument("--batch-size", type=int, default=1, help="static batch size (default: %(default)s)")
    parser.add_argument(
        "--artifacts", default=AUTO_ARTIFACTS,
        help="comma-separated subset of " + ",".join(a.value for a in BUILT_ARTIFACTS)
        + " (default: auto = exported_program,onnx,engine, the engine only when TensorRT and, for --msda plugin, the "
        "plugin library are found; aoti, an AOTInductor package for --device, compiles for minutes)",
    )
    parser.add_argument("--msda", choices=MSDA_CHOICES, default=AUTO,
                        help="plugin: one codetr::CodetrMSDA node (our TensorRT plugin); nvidia: NVIDIA's "
                        "MultiscaleDeformableAttnPlugin_TRT v2 (TensorRT >= 10.11's plugin library); decomposed: "
                        "standard ONNX ops (GridSample, also in the PyTorch programs); plugin and nvidia differ in the ONNX "
                        "model and engine only, so nvidia needs onnx among --artifacts; auto: plugin when its library is "
                        "built or no ONNX model is requested, else nvidia when TensorRT has it (default: %(default)s)")
    parser.add_argument("--torch-tensorrt", choices=[mode.value for mode in CompileMode],
                        help="also compile the ExportedProgram with Torch-TensorRT (needs torch-tensorrt and "
                        "a CUDA GPU): hybrid keeps MSDA in PyTorch between TensorRT segments; full maps it to "
                        "our plugin (one engine) (default: off)")
    parser.add_argument("--postprocess", choices=[mode.value for mode in PostprocessMode], default="none",
                        help="post-processing inside the graph: threshold keeps scores above --score-threshold, nms "
                        "also runs hard class-wise NMS at the config's IoU threshold (the in-engine stand-in for "
                        "soft-NMS); both give a data-dependent number of detections and need --batch-size 1 "
                        "(default: %(default)s, the host post-processes)")
    parser.add_argument("--score-threshold", type=float,
                        help="score threshold of --postprocess threshold/nms (default: the config's test score_threshold)")
    parser.add_argument("--plugin-library", type=Path,
                        help="libcodetr_msda_trt.so for the engine build (default: the package's copy)")
    parser.add_argument("--embed-plugin", action="store_true",
                        help="serialize the plugin library into the engine, so deployment needs no separate "
                        ".so (default: off)")
    parser.add_argument("--optimization-level", type=int, choices=range(6), default=3, metavar="{0..5}",
                        help="TensorRT builder optimisation level (default: %(default)s)")
    parser.add_argument("--device", type=device_type, default=default_device(),
                        help="device to trace on (default: %(default)s)")
    parser.add_argument("--opset", type=int,
                        help="ONNX opset (default: the lowest the dtype allows: "
                        + ", ".join(f"{str(dtype).removeprefix('torch.')} {opset}"
                                    for dtype, opset in MIN_OPSET_FOR_DTYPE.items())
                        + f"; with --int8 and a half dtype at least {MIN_HALF_OPSET}; at most {MAX_OPSET})")
    parser.add_argument("--aoti-config", action="append", default=[], metavar="KEY=VALUE",
                        help="a torch._inductor.config setting for the AOTInductor compile, e.g. freezing=true or "
                        "max_autotune=true (repeatable; values true/false, numbers or text) (default: Inductor's)")
    parser.add_argument("--timing-cache", type=Path, default=DEFAULT_TIMING_CACHE,
                        help="TensorRT timing cache, reused and updated (default: %(default)s)")
    add_int8_arguments(parser, for_export=True)
    return parser


def _default_size(config: Config, given: int | None, axis: int, name: str) -> int:
    if given is not None:
        return given
    if config.preprocess.pad_size is None:
        raise ValueError(f"--{name} is required: config {config.name} has no fixed pad_size")
    return config.preprocess.pad_size[axis]


def _requested_artifacts(text: str) -> tuple[Artifact, ...]:
    """``--artifacts`` as named (``auto``: :data:`DEFAULT_ARTIFACTS`, what it builds at most)."""
    if text == AUTO_ARTIFACTS:
        return DEFAULT_ARTIFACTS
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = {artifact.value: artifact for artifact in BUILT_ARTIFACTS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--artifacts: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return tuple(artifact for artifact in BUILT_ARTIFACTS if artifact.value in names)


def _artifacts(
    text: str, msda: MsdaMode, plugin_library: Path | None, postprocess: PostprocessMode
) -> tuple[tuple[Artifact, ...], dict[Artifact, str]]:
    """The artifacts to build and, for ``auto``, the ones skipped with the reason."""
    artifacts = _requested_artifacts(text)
    if text != AUTO_ARTIFACTS:
        reason = tensorrt_unavailable_reason() if Artifact.ENGINE in artifacts else None
        if reason:
            raise ValueError(f"--artifacts engine: {reason}")
        return artifacts, {}
    reason = _engine_unavailable_reason(msda, plugin_library, postprocess)
    if reason:
        return (Artifact.EXPORTED_PROGRAM, Artifact.ONNX), {Artifact.ENGINE: reason}
    return artifacts, {}


def _engine_unavailable_reason(msda: MsdaMode, plugin_library: Path | None, postprocess: PostprocessMode) -> str | None:
    reason = tensorrt_unavailable_reason()
    if reason:
        return reason
    if postprocess.is_data_dependent and is_tensorrt_rtx(import_tensorrt()):
        return f"TensorRT-RTX cannot build the data-dependent layers of --postprocess {postprocess.value}"
    if msda is MsdaMode.NVIDIA:
        return stock_plugin_missing_reason(import_tensorrt())
    if msda is MsdaMode.PLUGIN:
        try:
            plugin_library_path(plugin_library)
        except FileNotFoundError as error:
            return f"no plugin library: {error}"
    return None


def _torch_tensorrt_mode(text: str | None, device: torch.device) -> CompileMode | None:
    """The requested Torch-TensorRT mode; like an explicitly requested engine, it is an error
    (before any work) when it cannot be produced on ``device``. Whether the package imports is
    checked with TensorRT, in :func:`options_from_args`."""
    if text is None:
        return None
    if device.type != "cuda":
        raise ValueError(f"--torch-tensorrt {text}: Torch-TensorRT compiles on a CUDA GPU; use --device cuda")
    return CompileMode(text)


def parse_aoti_configs(settings: list[str]) -> dict[str, object]:
    """``--aoti-config KEY=VALUE`` settings as a dict: true/false as booleans, then integers,
    then floats, else the text. Raises ValueError for a setting without '='."""
    configs: dict[str, object] = {}
    for setting in settings:
        key, separator, text = setting.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--aoti-config takes KEY=VALUE (e.g. freezing=true), got {setting!r}")
        configs[key.strip()] = _setting_value(text.strip())
    return configs


def _setting_value(text: str) -> object:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def _opset(args: argparse.Namespace) -> int | None:
    """--opset, or for --int8 in a half dtype the first opset whose Q/DQ take it (None: the default)."""
    if args.opset is None and args.int8 and DTYPES[args.dtype] != torch.float32:
        return max(MIN_HALF_OPSET, MIN_OPSET_FOR_DTYPE[DTYPES[args.dtype]])
    return args.opset


def requested_options(args: argparse.Namespace, config: Config) -> ExportOptions:
    """The options as asked, checked without importing TensorRT (fast, nothing printed).

    ``--msda auto`` stands for ``plugin`` and ``--artifacts auto`` for the full default set: the
    most permissive outcome of each, so what is refused here is refused whatever TensorRT turns
    out to offer; :func:`options_from_args` then settles them. ValueError naming the option."""
    postprocess = PostprocessMode(args.postprocess)
    try:
        return ExportOptions(
            dtype=DTYPES[args.dtype],
            height=_default_size(config, args.height, 0, "height"),
            width=_default_size(config, args.width, 1, "width"),
            dynamic_height=DimRange.parse(args.dynamic_height, "--dynamic-height") if args.dynamic_height else None,
            dynamic_width=DimRange.parse(args.dynamic_width, "--dynamic-width") if args.dynamic_width else None,
            batch_size=args.batch_size,
            artifacts=_requested_artifacts(args.artifacts),
            msda=MsdaMode.PLUGIN if args.msda == AUTO else MsdaMode(args.msda),
            optimization_level=args.optimization_level,
            device=args.device,
            opset=_opset(args),
            allow_tf32=args.allow_tf32,
            plugin_library=args.plugin_library,
            embed_plugin=args.embed_plugin,
            timing_cache=args.timing_cache,
            torch_tensorrt=_torch_tensorrt_mode(args.torch_tensorrt, args.device),
            postprocess=postprocess,
            score_threshold=score_threshold_for(postprocess, args.score_threshold, config),
            aoti_configs=parse_aoti_configs(args.aoti_config),
        )
    except ValueError as error:
        raise ValueError(f"{error} (see codetr export --help)") from None


def options_from_args(args: argparse.Namespace, config: Config, requested: ExportOptions | None = None) -> ExportOptions:
    """:func:`requested_options` (or ``requested``, its result), then what needs TensorRT: the
    ``--msda auto`` choice (logged), the ``--artifacts auto`` engine, an explicitly requested
    engine or Torch-TensorRT compile that cannot be produced here (ValueError)."""
    if requested is None:
        requested = requested_options(args, config)
    if args.torch_tensorrt is not None:
        reason = torch_tensorrt_unavailable_reason()
        if reason:
            raise ValueError(f"--torch-tensorrt {args.torch_tensorrt}: {reason}")
    engine_requested = args.artifacts != AUTO_ARTIFACTS and Artifact.ENGINE in requested.artifacts
    if args.msda == AUTO and Artifact.ONNX not in requested.artifacts:  # the forms differ in the ONNX model only
        choice = MsdaChoice(MsdaMode.PLUGIN, "no ONNX model requested: the PyTorch programs call codetr's ops (metadata.json 'aoti' lists a package's)")
    else:
        choice = choose_msda(args.msda, args.plugin_library, engine_requested=engine_requested)
    artifacts, skipped = _artifacts(args.artifacts, choice.mode, args.plugin_library, requested.postprocess)
    try:
        return dataclasses.replace(requested, artifacts=artifacts, msda=choice.mode, skipped=skipped,
                                   msda_choice=choice.reason)
    except ValueError as error:
        raise ValueError(f"{error} (see codetr export --help)") from None


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file {args.checkpoint}")
    check_use_ema(args.use_ema, args.checkpoint)
    config = load_config(args.config)
    # Every check that needs no TensorRT first: a mistake is reported at once, before the
    # seconds-long TensorRT probe and its log lines.
    requested = requested_options(args, config)
    check_input_sizes(config, requested)
    calibration = calibration_from_args(args, config, enabled=args.int8)
    if calibration is not None:
        check_opset(requested.onnx_opset, requested.dtype)
    inputs = export_inputs(config, requested, args.checkpoint, calibration)
    check_output_dir(args.output, args.overwrite, argument="--output", inputs=inputs)
    options = options_from_args(args, config, requested)
    for artifact, reason in options.skipped.items():
        # Said where the user sees it: the install hides the plugin build's own message.
        logger.warning("not building the %s: %s", ARTIFACTS[artifact].description, reason)
    if Artifact.ENGINE in options.artifacts and options.msda is MsdaMode.PLUGIN:
        argv = None if args.process_argv is None else ["-m", "codetr", *args.process_argv]
        try:
            restart_for_rtx_parser(import_tensorrt(), argv)
        except RuntimeError as error:
            raise ValueError(str(error)) from None

    def model():
        built = build_model(config, seed=args.seed)
        if args.checkpoint is None:
            warn_random_weights(args.seed)
        else:
            load_checkpoint(built, args.checkpoint, use_ema=args.use_ema)
        return built

    quantization = None
    if calibration is not None:
        quantized = quantize_int8(model(), calibration, config.preprocess, exclude=args.int8_exclude,
                                  default_exclude=not args.int8_no_default_exclude, device=options.device,
                                  progress=True)
        model, quantization = quantized.model, quantized.report
    try:
        result = export_model(model, config, options, args.output, checkpoint=args.checkpoint, overwrite=args.overwrite,
                              quantization=quantization)
    except ExportError as error:
        print(f"error: {error}; {left_as_it_was(args.output)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return interrupted(args.output)
    total = sum(record.seconds for record in result.stages.records)
    precision = f"{args.dtype} + int8" if args.int8 else args.dtype
    print(f"exported {config.name} ({precision}, msda {options.msda.value}) to {result.output_dir} in {total:.1f} s:")
    for record in result.stages.records:
        written = f"  {record.path.name} {record.bytes / 1e6:.1f} MB" if record.path else ""
        print(f"  {record.name:<24} {record.seconds:7.1f} s{written}")
    for artifact, reason in options.skipped.items():
        print(f"  skipped {artifact.value}: {reason}")
    if result.partition is not None:
        print(f"Torch-TensorRT {options.torch_tensorrt.value}: {result.partition}")
    return 0
