"""``codetr bench``: latency, throughput and memory of exported models and the eager model.

    codetr bench out/model_aoti.pt2 out/model.pt2 eager:float16 --config synthetic_r50 \\
        --batch-sizes 1,8 --json bench.json --plot bench.png

Measures every ARTIFACT at every batch size (see :mod:`codetr.benchmark`) and prints one table;
a static-batch export at another batch size is listed as skipped, not an error. A point whose
loading or run fails (out of memory, ...) is listed as failed and the others still run; the
exit status is then 1. An ``--images`` file that cannot be read is named on stderr and left out
of the end-to-end time (as ``codetr infer`` and ``eval`` skip it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from codetr.atomic import check_writable_file
from codetr.benchmark.runner import BenchResult, BenchSettings, Skipped, run_benchmark
from codetr.benchmark.report import format_table, plot, plot_formats, to_document, write_json
from codetr.benchmark.targets import EAGER, CudaGraphMode, Target, parse_targets
from codetr.cli.common import CONFIG_HELP, device_type
from codetr.config import load_config, resolve_config
from codetr.data.images import list_images
from codetr.models import DTYPES

logger = logging.getLogger(__name__)

DEFAULT_EAGER_DTYPE = "float32"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="measure latency, throughput and memory of artifacts and the eager model",
        description="Measure model-only latency (min/median/p90/p99/max), throughput and peak memory of "
        "exported artifacts and the eager model at several batch sizes, and with --images the end-to-end "
        "time per image. Inputs are random images of each artifact's exported size.",
    )
    parser.add_argument(
        "artifacts", nargs="+", metavar="ARTIFACT",
        help=f"an exported file (metadata.json beside it), or '{EAGER}' (--config in --dtype) or "
        f"'{EAGER}:DTYPE' ({', '.join(DTYPES)})",
    )
    parser.add_argument("--config", type=Path, help=f"the config of eager: {CONFIG_HELP} (default: none)")
    parser.add_argument("--checkpoint", type=Path, help="weights for eager (default: random; they time the same)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help=f"dtype of plain '{EAGER}' (default: {DEFAULT_EAGER_DTYPE})")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes, e.g. 1,4,8 (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=50, help="timed calls per point (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls before timing each point (default: %(default)s)")
    parser.add_argument("--height", type=int, help="input height (default: the exported size, or the config's pad_size)")
    parser.add_argument("--width", type=int, help="input width (default: as --height)")
    parser.add_argument(
        "--cuda-graph", choices=[mode.value for mode in CudaGraphMode], default=CudaGraphMode.OFF.value,
        help="replay CUDA graphs in runtimes that can (CUDA AOTInductor packages, TensorRT engines): off, on, or both "
        "(each measured twice) (default: %(default)s)",
    )
    parser.add_argument("--images", type=Path, help="a folder of images (or one image) to also time end to end (default: model-only timing)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding --images (default: %(default)s)")
    parser.add_argument("--device", type=device_type,
                        help="cpu, cuda or cuda:N (default: each artifact's own; eager: cuda if available)")
    parser.add_argument("--allow-tf32", action="store_true", help="let eager float32 use TF32 on the GPU (default: IEEE float32)")
    parser.add_argument(
        "--profile", action="store_true",
        help="also record each point's CUDA kernels (torch.profiler) and print where the GPU time goes, by kernel "
        "group and largest kernels; CUDA devices only (default: off)",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here (default: not written)")
    parser.add_argument("--plot", type=Path, help="write latency and throughput vs batch size here (.png, .svg, .pdf; default: not drawn)")
    return parser


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--batch-sizes must be comma-separated integers, e.g. 1,4,8; got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes must be positive integers, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def check_eager_options(args: argparse.Namespace, targets: list[Target]) -> None:
    """ValueError for an option of the eager model given without an eager target to apply to."""
    if args.dtype is not None and EAGER not in args.artifacts:
        raise ValueError(f"--dtype sets the precision of plain '{EAGER}', which is not among the ARTIFACTs; an "
                         f"artifact's precision is fixed by its export ('{EAGER}:DTYPE' names its own)")
    if all(target.path is not None for target in targets):
        for option, given in (("--config", args.config is not None), ("--checkpoint", args.checkpoint is not None),
                              ("--allow-tf32", args.allow_tf32)):
            if given:
                raise ValueError(f"{option} applies to '{EAGER}' only, which is not among the ARTIFACTs; an artifact's "
                                 "weights and precision are fixed by its export")


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        resolve_config(args.config)  # FileNotFoundError listing the shipped names, before any work
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file {args.checkpoint}")
    # Before any timing: a results path that cannot be written would otherwise fail only at the end.
    metadata = [Path(path).parent / "metadata.json" for path in args.artifacts]  # read beside each artifact
    given = (*args.artifacts, *metadata, args.config, args.checkpoint, args.images)
    inputs = [Path(path) for path in given if path is not None and Path(path).exists()]
    if args.json is not None:
        check_writable_file(args.json, argument="--json", inputs=inputs)
    if args.plot is not None:
        formats = plot_formats()
        check_writable_file(args.plot, argument="--plot", inputs=inputs)
        if args.plot.suffix.lower().lstrip(".") not in formats:
            raise ValueError(f"--plot {args.plot}: matplotlib writes {', '.join(sorted(formats))}; name the file e.g. bench.png")
    if args.profile and not torch.cuda.is_available():
        raise ValueError("--profile records CUDA kernels and needs a CUDA GPU; none is visible to torch")
    settings = BenchSettings(
        batch_sizes=parse_batch_sizes(args.batch_sizes),
        iterations=args.iterations,
        warmup=args.warmup,
        height=args.height,
        width=args.width,
        images=tuple(list_images(args.images)) if args.images is not None else (),
        workers=args.workers,
        config=args.config,
        checkpoint=args.checkpoint,
        device=None if args.device is None else str(args.device),
        allow_tf32=args.allow_tf32,
        profile=args.profile,
    )
    eager_dtype = args.dtype or DEFAULT_EAGER_DTYPE
    targets = parse_targets(args.artifacts, eager_dtype, CudaGraphMode(args.cuda_graph))
    check_eager_options(args, targets)
    if any(target.path is None for target in targets):
        if args.config is None:
            raise ValueError(f"'{EAGER}' needs --config (the model to build)")
        if load_config(args.config).preprocess.pad_size is None and (args.height is None or args.width is None):
            raise ValueError(f"'{EAGER}' with --config {args.config} needs --height and --width: the config pads to "
                             "the largest image of each batch, so it has no fixed input size")
    outcomes = run_benchmark(targets, settings)
    print(format_table(outcomes))
    skipped = sorted({path for outcome in outcomes if isinstance(outcome, BenchResult) and outcome.end_to_end
                      for path in outcome.end_to_end.skipped})
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s) in the end-to-end time: {', '.join(skipped)}", file=sys.stderr)
    if args.json is not None:
        write_json(to_document(outcomes, settings, eager_dtype), args.json)
        print(f"results -> {args.json}")
    if args.plot is not None:
        if any(isinstance(outcome, BenchResult) for outcome in outcomes):
            plot(outcomes, args.plot)
            print(f"plot -> {args.plot}")
        else:
            logger.warning("--plot: nothing was measured, no plot written")
    return 1 if any(isinstance(outcome, Skipped) and outcome.failed for outcome in outcomes) else 0
