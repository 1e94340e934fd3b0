"""Export cost and ExportedProgram latency of Co-DINO (default: R50, 768x1152, float16).

Part 1 exports the model (static and/or dynamic height/width) and prints the wall time of every
stage and the size of every file. Part 2 times the static ExportedProgram against the eager
model on the GPU (CUDA events, median over ``--iterations`` after warm-up).

    python benchmarks/bench_export.py --output /tmp/bench_export --modes static
    python benchmarks/bench_export.py --output /tmp/bench_export --modes dynamic --skip-latency

Weights are random (deterministic): export cost and latency do not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from codetr.config import load_config
from codetr.export import Artifact, DimRange, ExportOptions, MsdaMode, export_model
from codetr.cli.export import DEFAULT_CONFIG
from codetr.export.program import example_inputs
from codetr.models import DTYPES, build_model
from codetr.ops import set_msda_implementation
from codetr.runtime import load_runtime


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float16")
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--dynamic-height", default="512:1344", help="MIN:MAX of the dynamic export")
    parser.add_argument("--dynamic-width", default="512:1344", help="MIN:MAX of the dynamic export")
    parser.add_argument("--modes", default="static,dynamic", help="comma-separated: static, dynamic")
    parser.add_argument("--msda", choices=[mode.value for mode in MsdaMode], default="plugin")
    parser.add_argument("--artifacts", default="exported_program,onnx",
                        help="comma-separated artifacts to export (engine: needs TensorRT)")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--skip-latency", action="store_true")
    return parser.parse_args()


def export_rows(args: argparse.Namespace, config, mode: str) -> list[dict[str, object]]:
    dynamic = mode == "dynamic"
    artifacts = tuple(Artifact(name) for name in args.artifacts.split(","))
    options = ExportOptions(
        dtype=DTYPES[args.dtype],
        height=args.height,
        width=args.width,
        dynamic_height=DimRange.parse(args.dynamic_height, "--dynamic-height") if dynamic else None,
        dynamic_width=DimRange.parse(args.dynamic_width, "--dynamic-width") if dynamic else None,
        msda=MsdaMode(args.msda),
        artifacts=artifacts,
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
    )
    start = time.perf_counter()
    result = export_model(build_model(config), config, options, args.output / mode)
    total = time.perf_counter() - start
    rows = [
        {"mode": mode, "stage": record.name, "seconds": record.seconds,
         "file": record.path.name if record.path else "", "megabytes": (record.bytes or 0) / 1e6}
        for record in result.stages.records
    ]
    rows.append({"mode": mode, "stage": "total (wall)", "seconds": total, "file": "", "megabytes": 0.0})
    return rows


def time_cuda(function, inputs, iterations: int) -> list[float]:
    """Milliseconds per call, CUDA events, after 10 warm-up calls."""
    for _ in range(10):
        function(*inputs)
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function(*inputs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def latency_rows(args: argparse.Namespace, config) -> list[dict[str, object]]:
    options = ExportOptions(dtype=DTYPES[args.dtype], height=args.height, width=args.width, device=torch.device("cuda"))
    inputs = example_inputs(options)
    model = build_model(config).to("cuda", options.dtype)
    set_msda_implementation(model, use_reference=MsdaMode(args.msda) is MsdaMode.DECOMPOSED)
    candidates = {"eager": lambda images, sizes: model(images, sizes)}
    for mode in args.modes.split(","):
        program = args.output / mode / "model.pt2"
        if program.is_file():
            candidates[f"ExportedProgram ({mode})"] = load_runtime(program)
    rows = []
    with torch.no_grad():
        for name, function in candidates.items():
            times = sorted(time_cuda(function, inputs, args.iterations))
            rows.append({"runtime": name, "median_ms": statistics.median(times),
                         "p90_ms": times[int(0.9 * (len(times) - 1))], "min_ms": times[0]})
    return rows


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("codetr").setLevel(logging.INFO)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)  # one warning per constant it does not fold
    config = load_config(args.config)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"# export benchmark: {config.name}, {args.dtype}, {args.height}x{args.width}, msda {args.msda}, "
          f"{device}, torch {torch.__version__}")

    export_table = [row for mode in args.modes.split(",") for row in export_rows(args, config, mode)]
    print("\n| mode | stage | seconds | file | MB |\n|---|---|---|---|---|")
    for row in export_table:
        print(f"| {row['mode']} | {row['stage']} | {row['seconds']:.1f} | {row['file']} | "
              f"{row['megabytes']:.1f} |")

    latency_table = []
    if not args.skip_latency and torch.cuda.is_available():
        latency_table = latency_rows(args, config)
        print(f"\n| runtime (batch 1, {args.height}x{args.width}, {args.dtype}) | median ms | p90 ms | min ms |")
        print("|---|---|---|---|")
        for row in latency_table:
            print(f"| {row['runtime']} | {row['median_ms']:.2f} | {row['p90_ms']:.2f} | {row['min_ms']:.2f} |")
    elif not args.skip_latency:
        print("\nlatency: skipped, no CUDA device")

    args.output.mkdir(parents=True, exist_ok=True)
    report = {"config": config.name, "dtype": args.dtype, "size": [args.height, args.width], "device": device,
              "torch": torch.__version__, "export": export_table, "latency": latency_table}
    (args.output / f"bench_export_{'_'.join(args.modes.split(','))}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
