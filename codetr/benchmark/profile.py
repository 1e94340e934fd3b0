"""Where a model's GPU time goes: ``codetr bench --profile`` (trtexec's ``--dumpProfile``).

After a point is timed, :data:`PROFILE_CALLS` more calls run under ``torch.profiler`` with CUDA
activity; the device time of every kernel (CUPTI's records, including kernels replayed from a CUDA
graph) is summed by kernel name and by :data:`KERNEL_GROUPS`, and divided by the calls, so a
group's ``ms_per_call`` is its GPU time per model call. Kernel time excludes the gaps between
kernels, so the groups add up to less than the latency when the GPU idles (launch overhead).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

import torch

PROFILE_CALLS = 10
"""Model calls recorded per profiled point (after the timed ones, so everything is warm)."""

TOP_KERNELS = 15
"""Kernels listed per profiled point, largest GPU time first."""

KERNEL_GROUPS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # codetr's own kernels only: Inductor names fused kernels after the ops they hold ("..._msda_..."),
    # and those compute MSDA's inputs (softmax, offsets), not the sampling.
    ("MSDA (codetr::msda)", re.compile(r"codetr::msda")),
    ("attention (SDPA)", re.compile(r"sdpa|flash|fmha|efficient_attention", re.IGNORECASE)),
    ("normalization", re.compile(r"norm", re.IGNORECASE)),
    ("softmax", re.compile(r"softmax", re.IGNORECASE)),
    ("convolution", re.compile(r"conv|fprop|dgrad|wgrad|winograd|implicit_?gemm|cudnn", re.IGNORECASE)),
    ("GEMM", re.compile(r"gemm|matmul|cutlass|xmma|cublas|nvjet|_mm_|addmm|bmm|^sm\d+_", re.IGNORECASE)),
    ("sort / top-k / gather", re.compile(r"sort|topk|radix|gather|index", re.IGNORECASE)),
    # Not Triton kernels: their names list the ops Inductor fused ("lift_fresh_copy",
    # "masked_fill"), which compute rather than copy.
    ("copy / fill", re.compile(r"^(?!triton_).*(memcpy|memset|copy|fill|\bcat\b)", re.IGNORECASE)),
    ("fused elementwise / reduction (Triton)", re.compile(r"^triton_", re.IGNORECASE)),
    ("elementwise / reduction (ATen)", re.compile(r"elementwise|reduce|vectorized|unrolled", re.IGNORECASE)),
)
"""Kernel name patterns, first match wins; a kernel matching none is counted as "other"."""


def kernel_group(name: str) -> str:
    """The :data:`KERNEL_GROUPS` name of a CUDA kernel name, or "other"."""
    for group, pattern in KERNEL_GROUPS:
        if pattern.search(name):
            return group
    return "other"


@dataclasses.dataclass(frozen=True)
class KernelTime:
    """One kernel name (or group): GPU milliseconds and launches per model call."""

    name: str
    ms_per_call: float
    launches_per_call: float


@dataclasses.dataclass(frozen=True)
class KernelProfile:
    """GPU kernel time per model call over ``calls`` recorded calls: ``total_ms_per_call``, the
    groups (largest first) and the ``kernels`` (largest first, at most :data:`TOP_KERNELS`)."""

    calls: int
    total_ms_per_call: float
    groups: tuple[KernelTime, ...]
    kernels: tuple[KernelTime, ...]



def summarise_kernels(records: Iterable[tuple[str, float, int]], calls: int) -> KernelProfile:
    """A :class:`KernelProfile` of ``records``: (kernel name, total microseconds, launches) over
    ``calls`` model calls. Raises ValueError when ``calls`` < 1."""
    if calls < 1:
        raise ValueError(f"calls must be at least 1, got {calls}")
    per_kernel: dict[str, list[float]] = {}
    for name, microseconds, launches in records:
        totals = per_kernel.setdefault(name, [0.0, 0])
        totals[0] += microseconds
        totals[1] += launches
    per_group: dict[str, list[float]] = {}
    for name, (microseconds, launches) in per_kernel.items():
        totals = per_group.setdefault(kernel_group(name), [0.0, 0])
        totals[0] += microseconds
        totals[1] += launches

    def ranked(table: dict[str, list[float]], limit: int | None = None) -> tuple[KernelTime, ...]:
        rows = sorted(table.items(), key=lambda item: -item[1][0])[:limit]
        return tuple(KernelTime(name, microseconds / 1e3 / calls, launches / calls) for name, (microseconds, launches) in rows)

    total = sum(microseconds for microseconds, _ in per_kernel.values())
    return KernelProfile(calls, total / 1e3 / calls, ranked(per_group), ranked(per_kernel, TOP_KERNELS))


def profile_calls(call: Callable[[], object], device: torch.device, calls: int = PROFILE_CALLS) -> KernelProfile:
    """Run ``call`` ``calls`` times under ``torch.profiler`` and summarise its CUDA kernels.
    Raises ValueError when ``device`` is not a CUDA device (the profile is of GPU kernels)."""
    if device.type != "cuda":
        raise ValueError(f"--profile reports GPU kernel time and needs a CUDA device; this point runs on {device}")
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(calls):
            call()
        torch.cuda.synchronize(device)
    kernels = [
        (event.key, event.self_device_time_total, event.count)
        for event in profiler.key_averages()
        if event.device_type == torch.autograd.DeviceType.CUDA
    ]
    return summarise_kernels(kernels, calls)
