"""The MSDA comparison tables of BENCHMARKS.md, computed from the raw rows.

For each point (case x forward or forward+backward x dtype): the fastest peer row whose result is
correct (forward error at most twice the smallest error any implementation, the PyTorch reference
included, reached at that point: this drops DCNv4's wrong B > 1 default launch, error 1e-2 against
6e-6), over all peer runs; against codetr's rows (locations in value's dtype, as the peers were
measured) of each of our runs. Prints a markdown table and the spread between our runs.

    python benchmarks/compare_msda.py --ours benchmarks/results/msda-h100-2026-11-22*.jsonl \
        --peers benchmarks/results/peers/msda-h100-run*.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

CASES = {"enc_b1": "enc", "dec_b1": "dec", "enc_b2": "enc B=2", "enc_b1_local": "enc-local", "enc_b1_s18k": "S18k"}
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
METRICS = {"fwd_ms": "fwd", "fwdbwd_ms": "f+b"}
PEER_NAMES = {"dcnv4": "DCNv4", "mmcv": "mmcv", "ddetr": "Deformable-DETR", "tvmain": "torchvision main"}


def rows(path: Path) -> list[dict]:
    return [row for row in map(json.loads, path.read_text().splitlines()) if row.get("kind") == "row"]


def fastest_correct_peers(peer_files: list[Path]) -> dict[tuple[str, str, str], tuple[float, str]]:
    candidates = defaultdict(list)  # (case, dtype, metric) -> [(ms, label, err)]
    smallest_error: dict[tuple[str, str], float] = {}
    for run, path in enumerate(peer_files, start=1):
        for row in rows(path):
            point = (row["case"], row["dtype"])
            if row.get("err_fwd") is not None:
                smallest_error[point] = min(smallest_error.get(point, float("inf")), row["err_fwd"])
            if row["impl"] == "torch_ref":
                continue
            for metric in METRICS:
                if row.get(metric) is not None:
                    label = f"{PEER_NAMES.get(row['impl'], row['impl'])}, {path.stem.rsplit('-', 1)[-1]}"
                    candidates[(*point, metric)].append((row[metric], label, row.get("err_fwd")))
    best = {}
    for (case, dtype, metric), entries in candidates.items():
        correct = [entry for entry in entries if entry[2] is None or entry[2] <= 2 * smallest_error[(case, dtype)]]
        if correct:
            milliseconds, label, _ = min(correct)
            best[(case, dtype, metric)] = (milliseconds, label)
    return best


def ours(our_files: list[Path], implementation: str = "codetr") -> dict[tuple[str, str, str], list[float]]:
    times = defaultdict(list)
    for path in our_files:
        for row in rows(path):
            if row["impl"] == implementation:
                for metric in METRICS:
                    if row.get(metric) is not None:
                        times[(row["case"], row["dtype"], metric)].append(row[metric])
    return times


def comparison_table(best: dict, codetr: dict) -> str:
    lines = ["| point | " + " | ".join(f"{name}: peer → codetr run 1 / run 2" for name in DTYPES.values()) + " |",
             "|---|" + "---|" * len(DTYPES)]
    for case, case_name in CASES.items():
        for metric, metric_name in METRICS.items():
            cells = []
            for dtype in DTYPES:
                peer, times = best.get((case, dtype, metric)), codetr.get((case, dtype, metric))
                if peer is None or not times:
                    cells.append("")
                    continue
                ratios = " / ".join(f"{peer[0] / ms:.2f}×" for ms in times)
                slower_in = [str(run) for run, ms in enumerate(times, start=1) if ms > peer[0]]
                mark = "" if not slower_in else "**slower**" if len(slower_in) == len(times) else f"**slower in run {', '.join(slower_in)}**"
                cells.append(f"{peer[0]:.4g} ({peer[1]}) → {' / '.join(f'{ms:.4g}' for ms in times)} ({ratios}) {mark}".strip())
            lines.append(f"| {case_name} {metric_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_spread(our_files: list[Path]) -> str:
    by_key = defaultdict(list)
    for path in our_files:
        for row in rows(path):
            for metric in METRICS:
                if row.get(metric) is not None:
                    by_key[(row["case"], row["impl"], row["dtype"], metric)].append(row[metric])
    lines = []
    for (case, implementation, dtype, metric), times in sorted(by_key.items()):
        if len(times) == 2:
            change = (times[1] - times[0]) / times[0] * 100
            lines.append(f"{CASES[case]:10} {metric:10} {implementation:14} {DTYPES[dtype]}: {times[0]:.4f} -> {times[1]:.4f} ms ({change:+.1f}%)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", nargs="+", type=Path, required=True, help="our runs, in order (default: none)")
    parser.add_argument("--peers", nargs="+", type=Path, required=True, help="the peers' runs (default: none)")
    arguments = parser.parse_args()
    print(comparison_table(fastest_correct_peers(arguments.peers), ours(arguments.ours)))
    print()
    print(run_spread(arguments.ours))


if __name__ == "__main__":
    main()
