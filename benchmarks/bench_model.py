"""Eager PyTorch latency of Co-DINO (R50 and Swin-L) at one input size: the baseline every export
path must beat.

    python benchmarks/bench_model.py                      # 768x1152, batch 1, fp32 + fp16, CUDA
    python benchmarks/bench_model.py --dtypes float32 --iterations 20

Random weights (latency does not depend on their values). Prints a markdown table of the median
and 90th-percentile latency per forward (CUDA events, after warm-up), including the in-graph
top-k but not host pre/post-processing.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from codetr.config import load_config
from codetr.models import DTYPES, build_model

DEFAULT_CONFIGS = ("co_dino_5scale_r50_lsj_8xb2_1x_coco", "co_dino_5scale_swin_l_16xb1_16e_o365tococo")


def measure(model: torch.nn.Module, images: torch.Tensor, sizes: torch.Tensor, warmup: int, iterations: int) -> list[float]:
    """Milliseconds per forward, one CUDA-event pair per iteration."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(images, sizes)
        torch.cuda.synchronize()
        timings = []
        for _ in range(iterations):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(images, sizes)
            end.record()
            torch.cuda.synchronize()
            timings.append(start.elapsed_time(end))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "float16"])
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_model.py needs a CUDA GPU")

    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, input {args.batch}x3x{args.height}x{args.width}")
    print("| model | dtype | median ms | p90 ms | peak GiB |")
    print("|---|---|---:|---:|---:|")
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(args.batch, 3, args.height, args.width, generator=generator) * 255).to(device)
    sizes = torch.tensor([[args.height, args.width]] * args.batch, device=device)
    for name in args.configs:
        config = load_config(name)
        for dtype_name in args.dtypes:
            model = build_model(config).to(device=device, dtype=DTYPES[dtype_name])
            torch.cuda.reset_peak_memory_stats(device)
            timings = sorted(measure(model, images, sizes, args.warmup, args.iterations))
            peak = torch.cuda.max_memory_allocated(device) / 2**30
            p90 = timings[min(len(timings) - 1, int(0.9 * len(timings)))]
            print(f"| {name} | {dtype_name} | {statistics.median(timings):.2f} | {p90:.2f} | {peak:.2f} |", flush=True)
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
