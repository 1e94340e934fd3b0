"""The benchmark's outputs: a text table, the JSON document and the latency/throughput plot.

JSON document::

    header   device, versions (python, torch, CUDA, codetr), date (UTC, ISO 8601), iterations, warmup,
             eager_dtype, peak_memory (what peak_memory_gib measures on each device type)
    results  one object per measured point: artifact (the path or "eager"), label, cuda_graph,
             batch_size, input_shape [B, 3, H, W], dtype, device,
             latency_ms {min, median, p90, p99, max}, images_per_second, peak_memory_gib (null when
             not measurable), end_to_end {ms_per_image, images_per_second, images, workers,
             skipped (the --images files that could not be read)} or null, profile {calls,
             total_ms_per_call, groups, kernels: [{name, ms_per_call, launches_per_call}]} or null
             (``--profile``)
    skipped  artifact, label, batch_size, reason, failed: each point that was not measured
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

from codetr.atomic import atomic_path
from codetr.benchmark.measure import PEAK_MEMORY_SOURCES
from codetr.benchmark.runner import BenchResult, BenchSettings, Skipped
from codetr.contract.versions import library_versions


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (Linux /proc/cpuinfo; else the platform's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def to_document(
    outcomes: Sequence[BenchResult | Skipped], settings: BenchSettings, eager_dtype: str
) -> dict[str, object]:
    """The JSON document (see the module docstring) of a run's ``outcomes``."""
    results = [outcome for outcome in outcomes if isinstance(outcome, BenchResult)]
    devices = sorted({result.device for result in results})
    return {
        "header": {
            "device": {name: device_name(torch.device(name)) for name in devices},
            "versions": {**library_versions(("onnxruntime", "onnxruntime-gpu", "tensorrt")), "cuda": torch.version.cuda},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "iterations": settings.iterations,
            "warmup": settings.warmup,
            "eager_dtype": eager_dtype,
            "peak_memory": PEAK_MEMORY_SOURCES,
        },
        "results": [
            {
                "artifact": result.target.name,
                "label": result.target.label,
                "cuda_graph": result.target.cuda_graph,
                "batch_size": result.batch_size,
                "input_shape": list(result.input_shape),
                "dtype": result.dtype,
                "device": result.device,
                "latency_ms": dataclasses.asdict(result.latency_ms),
                "images_per_second": result.images_per_second,
                "peak_memory_gib": result.peak_memory_gib,
                "end_to_end": dataclasses.asdict(result.end_to_end) if result.end_to_end else None,
                "profile": dataclasses.asdict(result.profile) if result.profile else None,
            }
            for result in results
        ],
        "skipped": [
            {
                "artifact": outcome.target.name,
                "label": outcome.target.label,
                "batch_size": outcome.batch_size,
                "reason": outcome.reason,
                "failed": outcome.failed,
            }
            for outcome in outcomes
            if isinstance(outcome, Skipped)
        ],
    }


def write_json(document: dict[str, object], path: Path) -> None:
    with atomic_path(Path(path)) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")


def format_table(outcomes: Sequence[BenchResult | Skipped]) -> str:
    """A Markdown table of the measured points, then one line per skipped point."""
    results = [outcome for outcome in outcomes if isinstance(outcome, BenchResult)]
    with_e2e = any(result.end_to_end for result in results)
    header = ["artifact", "dtype", "batch", "input", "min ms", "median ms", "p90 ms", "p99 ms", "max ms",
              "images/s", "peak GiB"]
    if with_e2e:
        header += ["e2e ms/image", "e2e images/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    for result in results:
        latency = result.latency_ms
        cells = [
            result.target.label,
            result.dtype,
            str(result.batch_size),
            "x".join(str(side) for side in result.input_shape[2:]),
            *(f"{value:.2f}" for value in (latency.min, latency.median, latency.p90, latency.p99, latency.max)),
            f"{result.images_per_second:.1f}",
            "-" if result.peak_memory_gib is None else f"{result.peak_memory_gib:.2f}",
        ]
        if with_e2e:
            end_to_end = result.end_to_end
            cells += ["-", "-"] if end_to_end is None else [
                f"{end_to_end.ms_per_image:.2f}", f"{end_to_end.images_per_second:.1f}"
            ]
        lines.append("| " + " | ".join(cells) + " |")
    for outcome in outcomes:
        if isinstance(outcome, Skipped):
            lines.append(f"skipped {outcome.target.label}, batch {outcome.batch_size}: {outcome.reason}")
    for result in results:
        if result.profile is not None:
            lines += ["", format_profile(result)]
    return "\n".join(lines)


def format_profile(result: BenchResult) -> str:
    """The GPU time of ``result``'s profile by kernel group, then its largest kernels."""
    profile = result.profile
    total = profile.total_ms_per_call
    lines = [
        f"GPU kernel time of {result.target.label}, batch {result.batch_size}: {total:.3f} ms per call "
        f"(median latency {result.latency_ms.median:.3f} ms; {profile.calls} calls recorded)",
        "| group | ms per call | share | launches per call |",
        "|---|---:|---:|---:|",
    ]
    for group in profile.groups:
        share = group.ms_per_call / total if total else 0.0
        lines.append(f"| {group.name} | {group.ms_per_call:.3f} | {share:.1%} | {group.launches_per_call:g} |")
    lines += ["| largest kernels | | | |"]
    for kernel in profile.kernels:
        name = kernel.name if len(kernel.name) <= 90 else kernel.name[:87] + "..."
        share = kernel.ms_per_call / total if total else 0.0
        lines.append(f"| `{name}` | {kernel.ms_per_call:.3f} | {share:.1%} | {kernel.launches_per_call:g} |")
    return "\n".join(lines)


def plot_formats() -> set[str]:
    """File suffixes (without the dot) that :func:`plot` can write: matplotlib's Agg canvas's."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return set(Figure().canvas.get_supported_filetypes())


def plot(outcomes: Sequence[BenchResult | Skipped], path: Path) -> None:
    """Median latency (p90 as the upper whisker) and throughput against batch size, one line per
    target, as an image at ``path`` (format from its suffix, e.g. .png, .svg, .pdf)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    from matplotlib import pyplot

    results = [outcome for outcome in outcomes if isinstance(outcome, BenchResult)]
    figure, (latency_axes, throughput_axes) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    labels = list(dict.fromkeys(result.target.label for result in results))
    for label in labels:
        points = sorted((r for r in results if r.target.label == label), key=lambda r: r.batch_size)
        batches = [point.batch_size for point in points]
        medians = [point.latency_ms.median for point in points]
        upper = [point.latency_ms.p90 - point.latency_ms.median for point in points]
        latency_axes.errorbar(batches, medians, yerr=[[0] * len(points), upper], marker="o", capsize=3, label=label)
        throughput_axes.plot(batches, [point.images_per_second for point in points], marker="o", label=label)
    latency_axes.set(xlabel="batch size", ylabel="latency per batch, ms (median, whisker p90)", title="Latency")
    throughput_axes.set(xlabel="batch size", ylabel="images / s", title="Throughput")
    batch_sizes = sorted({result.batch_size for result in results})
    for axes in (latency_axes, throughput_axes):
        axes.set_xticks(batch_sizes)
        axes.grid(True, alpha=0.3)
        axes.set_ylim(bottom=0)
    throughput_axes.legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(Path(path)) as temporary:
        figure.savefig(temporary, dpi=120)
    pyplot.close(figure)
