"""MSDA from the layer's raw projections: ``torch.ops.codetr.msda_from_offsets`` against the
unfused path the layer otherwise runs (ATen: locations = reference + offsets / (W, H) and the
softmax over L*P, in float32; then ``torch.ops.codetr.msda``).

Co-DINO encoder shapes of a 768x1152 input (``bench_msda.py``'s ``CO_DINO_SHAPES``: S = Q =
73,656, M = 8, D = 32, L = 5, P = 4), value in the row's dtype, reference points float32 (the
model's), offsets ~ N(0, 2) pixels around uniform reference points, logits ~ N(0, 1). Timing as
``bench_msda.py`` (CUDA events, L2 flushed before each call, median). ``err`` is
||fused - unfused|| / ||unfused||.

    python benchmarks/bench_msda_from_offsets.py --out msda_from_offsets.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from bench_msda import CHANNELS, CO_DINO_SHAPES, HEADS, POINTS, Timer
from codetr.ops import msda, msda_from_offsets


def make_inputs(batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator(device).manual_seed(0)
    levels = len(CO_DINO_SHAPES)
    shapes = torch.tensor(CO_DINO_SHAPES, dtype=torch.int64, device=device)
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    tokens = int(shapes.prod(1).sum())

    def normal(*size, scale=1.0):
        return (scale * torch.randn(*size, generator=generator, device=device)).to(dtype)

    return {
        "value": normal(batch, tokens, HEADS, CHANNELS),
        "spatial_shapes": shapes,
        "level_start_index": starts,
        "reference_points": torch.rand(batch, tokens, levels, 2, generator=generator, device=device),
        "sampling_offsets": normal(batch, tokens, HEADS, levels, POINTS, 2, scale=2.0),
        "attention_logits": normal(batch, tokens, HEADS, levels, POINTS),
    }


def unfused(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The layer's path without fusion (MultiScaleDeformableAttention.forward)."""
    offsets = inputs["sampling_offsets"].float()
    batch, queries, heads, levels, points, _ = offsets.shape
    normalizer = inputs["spatial_shapes"].flip(-1).float()[None, None, None, :, None, :]
    locations = inputs["reference_points"][:, :, None, :, None, :] + offsets / normalizer
    weights = inputs["attention_logits"].float().view(batch, queries, heads, -1).softmax(-1)
    weights = weights.view(batch, queries, heads, levels, points)
    return msda(inputs["value"], inputs["spatial_shapes"], inputs["level_start_index"], locations, weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--dtypes", default="float16,bfloat16,float32", help="value dtypes")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--out", help="append one JSON line per row")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timer = Timer(device)
    print(f"{'batch':>5} {'dtype':>9} {'unfused ms':>11} {'fused ms':>9} {'speed-up':>9} {'err':>9}")
    for batch in (int(b) for b in args.batches.split(",")):
        for dtype_name in args.dtypes.split(","):
            inputs = make_inputs(batch, getattr(torch, dtype_name), device)
            with torch.no_grad():
                expected = unfused(inputs)
                error = ((msda_from_offsets(**inputs).double() - expected.double()).norm() / expected.double().norm()).item()
                before = statistics.median(timer(lambda: unfused(inputs), args.iterations))
                after = statistics.median(timer(lambda: msda_from_offsets(**inputs), args.iterations))
            row = {
                "batch": batch, "dtype": dtype_name, "unfused_ms": before, "fused_ms": after,
                "speed_up": before / after, "err": error, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
            }
            print(f"{batch:>5} {dtype_name:>9} {before:>11.3f} {after:>9.3f} {before / after:>8.2f}x {error:>9.2e}")
            if args.out:
                with open(args.out, "a") as file:
                    file.write(json.dumps(row) + "\n")
            del inputs, expected


if __name__ == "__main__":
    main()
