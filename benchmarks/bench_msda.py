"""Speed and accuracy of torch.ops.codetr.msda at Co-DINO shapes, comparable with the peers file.

Cases, input distributions and timing follow /work/shared/peers/msda-h100.md:
- Co-DINO 5-scale levels of a 768x1152 input (S = 73,656), M = 8, D = 32, L = 5, P = 4;
  encoder cases Q = S, decoder case Q = 900; enc_b1_s18k uses the levels of a 384x576 input.
- Locations uniform in [-0.02, 1.02], or "local": each query's own pixel centre plus the DETR
  initial offset pattern (head direction times point index + 1, in pixels of each level) plus
  N(0, 1) pixel noise. Attention weights are a softmax over L*P of N(0, 1) logits.
- CUDA events around each iteration, L2 flushed before each one, 5 warm-ups, median of 50
  iterations (encoder) or 200 (decoder). f+b is forward plus backward through autograd with
  gradients for value, sampling locations and attention weights.
- GB/s = min_bytes / forward time, min_bytes = every input read once and the output written
  once (value, locations, weights, output in their dtypes, plus the int64 shape tensors).
- Errors are ||x - ref|| / ||ref|| against float64 results on the float32 master inputs (err_*)
  and, for half-precision rows, also on the inputs as rounded for that row (err_fwd_q).

Implementations: ``codetr`` (locations and weights in value's dtype), ``codetr_f32loc`` (half
value, float32 locations and weights), ``torch_ref`` (codetr.ops.msda_reference in value's
dtype; only on the decoder case unless --with-reference, the peers file has its encoder
numbers).

    python benchmarks/bench_msda.py --out bench_msda.jsonl
    python benchmarks/bench_msda.py --cases dec_b1 --dtypes float16 --impls codetr
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from codetr.models import DTYPES
from codetr.ops import msda, msda_reference

HEADS, CHANNELS, POINTS = 8, 32, 4
CO_DINO_SHAPES = ((192, 288), (96, 144), (48, 72), (24, 36), (12, 18))  # 768x1152, strides 4-64
SMALL_SHAPES = ((96, 144), (48, 72), (24, 36), (12, 18), (6, 9))  # 384x576
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
IMPLEMENTATIONS = ("codetr", "codetr_f32loc", "torch_ref")
WARMUP = 5
# Larger than any L2 (H100 50 MB, H200 60 MB): zeroing it evicts the benchmark's data.
FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    batch: int
    queries: int | None  # None: one query per value token (encoder self-attention)
    shapes: tuple[tuple[int, int], ...]
    distribution: str  # "uniform" or "local"
    iterations: int

    @property
    def num_values(self) -> int:
        return sum(h * w for h, w in self.shapes)

    @property
    def num_queries(self) -> int:
        return self.num_values if self.queries is None else self.queries


CASES = {
    "enc_b1": Case(1, None, CO_DINO_SHAPES, "uniform", 50),
    "dec_b1": Case(1, 900, CO_DINO_SHAPES, "uniform", 200),
    "enc_b1_local": Case(1, None, CO_DINO_SHAPES, "local", 50),
    "enc_b2": Case(2, None, CO_DINO_SHAPES, "uniform", 50),
    "enc_b1_s18k": Case(1, None, SMALL_SHAPES, "uniform", 50),
}


@dataclass
class Inputs:
    """float32 master inputs of one case and the float64 results on them."""

    value: torch.Tensor  # [B, S, M, D]
    spatial_shapes: torch.Tensor  # [L, 2] int64
    level_start_index: torch.Tensor  # [L] int64
    locations: torch.Tensor  # [B, Q, M, L, P, 2]
    weights: torch.Tensor  # [B, Q, M, L, P]
    grad_output: torch.Tensor  # [B, Q, M*D]
    reference: tuple[torch.Tensor, ...] = ()  # float64 (output, d value, d locations, d weights)


def uniform_locations(case: Case, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    size = (case.batch, case.num_queries, HEADS, len(case.shapes), POINTS, 2)
    return torch.rand(size, generator=generator, device=device, dtype=torch.float64) * 1.04 - 0.02


def local_locations(case: Case, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Encoder-like locations: own pixel centre + DETR initial offsets + N(0, 1) pixel noise."""
    if case.queries is not None:
        raise ValueError("the local distribution needs one query per value token (queries=None)")
    centres = []
    for height, width in case.shapes:
        ys, xs = torch.meshgrid(
            (torch.arange(height, device=device, dtype=torch.float64) + 0.5) / height,
            (torch.arange(width, device=device, dtype=torch.float64) + 0.5) / width,
            indexing="ij",
        )
        centres.append(torch.stack([xs.flatten(), ys.flatten()], -1))
    centre = torch.cat(centres)  # [Q, 2]
    angles = torch.arange(HEADS, device=device, dtype=torch.float64) * (2 * math.pi / HEADS)
    directions = torch.stack([angles.cos(), angles.sin()], -1)
    directions = directions / directions.abs().amax(-1, keepdim=True)
    steps = torch.arange(1, POINTS + 1, device=device, dtype=torch.float64)
    pattern = directions[:, None, None, :] * steps[None, None, :, None]  # [M, 1, P, 2] pixels
    size = (case.batch, case.num_queries, HEADS, len(case.shapes), POINTS, 2)
    noise = torch.randn(size, generator=generator, device=device, dtype=torch.float64)
    width_height = torch.tensor(case.shapes, device=device, dtype=torch.float64).flip(-1)
    return centre[None, :, None, None, None, :] + (pattern + noise) / width_height[:, None, :]


def fraction_outside(locations: torch.Tensor, spatial_shapes: torch.Tensor) -> float:
    """Share of sampling points with all four bilinear corners outside their level's map."""
    width_height = spatial_shapes.flip(-1).to(locations).reshape(1, 1, 1, -1, 1, 2)
    pixels = locations * width_height - 0.5
    outside = ((pixels <= -1) | (pixels >= width_height)).any(-1)
    return outside.double().mean().item()


def make_inputs(case: Case, device: torch.device, seed: int) -> Inputs:
    generator = torch.Generator(device).manual_seed(seed)
    levels = len(case.shapes)
    spatial_shapes = torch.tensor(case.shapes, dtype=torch.int64, device=device)
    sizes = spatial_shapes.prod(1)
    value = torch.randn(
        case.batch, case.num_values, HEADS, CHANNELS, generator=generator, device=device
    )
    if case.distribution == "local":
        locations = local_locations(case, generator, device)
    else:
        locations = uniform_locations(case, generator, device)
    logits = torch.randn(
        case.batch, case.num_queries, HEADS, levels * POINTS, generator=generator, device=device
    )
    weights = logits.softmax(-1).reshape(case.batch, case.num_queries, HEADS, levels, POINTS)
    grad_output = torch.randn(
        case.batch, case.num_queries, HEADS * CHANNELS, generator=generator, device=device
    )
    return Inputs(
        value, spatial_shapes, sizes.cumsum(0) - sizes, locations.float(), weights, grad_output
    )


def reference_results(
    inputs: Inputs,
    value: torch.Tensor,
    locations: torch.Tensor,
    weights: torch.Tensor,
    backward: bool,
) -> tuple[torch.Tensor, ...]:
    """float64 output (and gradients) of the reference on the given values."""
    leaves = [t.detach().double().requires_grad_(backward) for t in (value, locations, weights)]
    with torch.set_grad_enabled(backward):
        output = msda_reference(leaves[0], inputs.spatial_shapes, leaves[1], leaves[2])
        if not backward:
            return (output,)
        return (output.detach(), *torch.autograd.grad(output, leaves, inputs.grad_output.double()))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).norm() / expected.norm()).item()


class Timer:
    """Per-iteration times in ms: CUDA events with an L2 flush before each iteration on a GPU,
    wall clock on the CPU (for checking the script on a machine without a GPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.flush_buffer = (
            torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
            if device.type == "cuda"
            else None
        )

    def __call__(
        self, fn: Callable[[], object], iterations: int, flush: bool = True
    ) -> list[float]:
        for _ in range(WARMUP):
            fn()
        if self.device.type != "cuda":
            times = []
            for _ in range(iterations):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
            return times
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
        for start, end in zip(starts, ends, strict=True):
            if flush:
                self.flush_buffer.zero_()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) for start, end in zip(starts, ends, strict=True)]


def min_bytes(inputs: Inputs, value_dtype: torch.dtype, location_dtype: torch.dtype) -> int:
    value_size, location_size = value_dtype.itemsize, location_dtype.itemsize
    return (
        inputs.value.numel() * value_size
        + inputs.locations.numel() * location_size
        + inputs.weights.numel() * location_size
        + inputs.grad_output.numel() * value_size  # the output has grad_output's shape
        + inputs.spatial_shapes.numel() * 8
        + inputs.level_start_index.numel() * 8
    )


def run_row(
    case_name: str,
    case: Case,
    inputs: Inputs,
    impl: str,
    dtype_name: str,
    timer: Timer,
    backward: bool,
) -> dict:
    value_dtype = DTYPES[dtype_name]
    location_dtype = torch.float32 if impl == "codetr_f32loc" else value_dtype
    value = inputs.value.to(value_dtype)
    locations = inputs.locations.to(location_dtype)
    weights = inputs.weights.to(location_dtype)
    shapes, starts = inputs.spatial_shapes, inputs.level_start_index
    if impl == "torch_ref":

        def forward(v, loc, w):
            return msda_reference(v, shapes, loc, w)
    else:

        def forward(v, loc, w):
            return msda(v, shapes, starts, loc, w)

    row: dict = {
        "kind": "row",
        "case": case_name,
        "impl": impl,
        "dtype": dtype_name,
        "loc_dtype": str(location_dtype).removeprefix("torch."),
    }
    with torch.no_grad():
        output = forward(value, locations, weights)
        row["err_fwd"] = relative_error(output, inputs.reference[0])
        if value_dtype != torch.float32:
            row["err_fwd_q"] = relative_error(
                output, reference_results(inputs, value, locations, weights, False)[0]
            )
        del output
        times = timer(lambda: forward(value, locations, weights), case.iterations)
        warm = timer(lambda: forward(value, locations, weights), case.iterations, flush=False)
    row["fwd_ms"] = statistics.median(times)
    row["fwd_ms_min"] = min(times)
    row["fwd_warm_ms"] = statistics.median(warm)
    row["min_bytes"] = min_bytes(inputs, value_dtype, location_dtype)
    row["fwd_GBps"] = row["min_bytes"] / row["fwd_ms"] / 1e6
    if backward:
        leaves = [t.detach().requires_grad_(True) for t in (value, locations, weights)]
        grad_output = inputs.grad_output.to(value_dtype)

        def forward_backward():
            return torch.autograd.grad(forward(*leaves), leaves, grad_output)

        gradients = forward_backward()
        for key, got, expected in zip(
            ("err_gv", "err_gl", "err_gattn"), gradients, inputs.reference[1:], strict=True
        ):
            row[key] = relative_error(got, expected)
        row["grad_nonfinite"] = sum(int((~g.isfinite()).sum()) for g in gradients)
        del gradients
        times = timer(forward_backward, case.iterations)
        row["fwdbwd_ms"] = statistics.median(times)
        row["fwdbwd_ms_min"] = min(times)
    return row


def environment(device: torch.device, timer: Timer) -> dict:
    row = {
        "kind": "env",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dev": device.type,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
        target = torch.empty_like(source)
        times = timer(lambda: target.copy_(source), 20, flush=False)
        row.update(
            gpu=properties.name,
            sms=properties.multi_processor_count,
            mem_GB=properties.total_memory / 1e9,
            l2_MB=properties.L2_cache_size / 1e6,
            copy_GBps=2 * source.numel() / statistics.median(times) / 1e6,  # read + write
        )
    return row


def format_ms(row: dict | None, key: str) -> str:
    if row is None or key not in row:
        return ""
    return f"{row[key]:.3f}" if row[key] < 10 else f"{row[key]:.2f}"


def summary_table(rows: Sequence[dict]) -> str:
    """The peers file's table layout (plus the local f+b and S = 18k columns), ms."""
    columns = [
        ("enc fwd ms", "enc_b1", "fwd_ms"),
        ("enc f+b ms", "enc_b1", "fwdbwd_ms"),
        ("dec fwd ms", "dec_b1", "fwd_ms"),
        ("dec f+b ms", "dec_b1", "fwdbwd_ms"),
        ("enc B=2 fwd ms", "enc_b2", "fwd_ms"),
        ("enc B=2 f+b ms", "enc_b2", "fwdbwd_ms"),
        ("enc-local fwd ms", "enc_b1_local", "fwd_ms"),
        ("enc-local f+b ms", "enc_b1_local", "fwdbwd_ms"),
        ("S18k fwd ms", "enc_b1_s18k", "fwd_ms"),
        ("S18k f+b ms", "enc_b1_s18k", "fwdbwd_ms"),
    ]
    by_key = {(r["impl"], r["dtype"], r["case"]): r for r in rows}
    lines = [
        "| implementation | dtype | " + " | ".join(c[0] for c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for impl, dtype in dict.fromkeys((r["impl"], r["dtype"]) for r in rows):
        cells = [format_ms(by_key.get((impl, dtype, case)), key) for _, case, key in columns]
        lines.append(f"| {impl} | {SHORT_DTYPE[dtype]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(rows: Sequence[dict]) -> str:
    header = (
        "| case | implementation | dtype | loc dtype | fwd ms | f+b ms | fwd GB/s | err fwd "
        "| err fwd (rounded inputs) | err d value | err d loc | err d weights | non-finite grads |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def error(row: dict, key: str) -> str:
        return f"{row[key]:.1e}" if key in row else ""

    for r in rows:
        lines.append(
            f"| {r['case']} | {r['impl']} | {SHORT_DTYPE[r['dtype']]} | {r['loc_dtype']} "
            f"| {format_ms(r, 'fwd_ms')} | {format_ms(r, 'fwdbwd_ms')} | {r['fwd_GBps']:.0f} "
            f"| {error(r, 'err_fwd')} | {error(r, 'err_fwd_q')} | {error(r, 'err_gv')} "
            f"| {error(r, 'err_gl')} | {error(r, 'err_gattn')} | {r.get('grad_nonfinite', '')} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument(
        "--impls", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS)
    )
    parser.add_argument(
        "--with-reference",
        action="store_true",
        help="also time torch_ref on the encoder cases (slow: ~45 ms per f+b)",
    )
    parser.add_argument("--forward-only", action="store_true", help="skip forward+backward")
    parser.add_argument("--device", default="cuda", help="cuda (timed) or cpu (script check only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the jsonl rows (env, case, row) to this path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu to check the script", file=sys.stderr)
        return 2
    partial_path = f"{args.out}.partial" if args.out else None
    sink = open(partial_path, "w") if partial_path else None
    begin = time.perf_counter()

    def emit(record: dict) -> None:
        record["t"] = round(time.perf_counter() - begin, 1)
        print(json.dumps(record), flush=True)
        if sink:
            sink.write(json.dumps(record) + "\n")
            sink.flush()

    timer = Timer(device)
    emit(environment(device, timer))
    rows = []
    backward = not args.forward_only
    for case_name in args.cases:
        case = CASES[case_name]
        wanted = [
            (impl, dtype)
            for impl in args.impls
            for dtype in args.dtypes
            if not (impl == "codetr_f32loc" and dtype == "float32")
            and not (impl == "torch_ref" and case.queries is None and not args.with_reference)
        ]
        if not wanted:
            continue
        inputs = make_inputs(case, device, args.seed)
        start = time.perf_counter()
        inputs.reference = reference_results(
            inputs, inputs.value, inputs.locations, inputs.weights, backward
        )
        emit(
            {
                "kind": "case",
                "case": case_name,
                "B": case.batch,
                "S": case.num_values,
                "Q": case.num_queries,
                "shapes": [list(s) for s in case.shapes],
                "dist": case.distribution,
                "oob_frac": fraction_outside(inputs.locations.double(), inputs.spatial_shapes),
                "ref_s": round(time.perf_counter() - start, 2),
            }
        )
        for impl, dtype in wanted:
            row = run_row(case_name, case, inputs, impl, dtype, timer, backward)
            rows.append(row)
            emit(row)
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    emit({"kind": "done"})
    if sink:
        sink.close()
        os.replace(partial_path, args.out)
    if args.impls.count("torch_ref") and not args.with_reference:
        print(
            "\ntorch_ref timed on the decoder case only; its encoder numbers are in the peers file."
        )
    print("\n" + summary_table(rows) + "\n\n" + detail_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
