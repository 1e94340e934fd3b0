"""Timing and memory measurements: the numbers ``codetr bench`` reports.

Latency is measured per call after warm-up: on a CUDA device with a pair of CUDA events around
each call (GPU time from the start event to the end of the last kernel, so host launch gaps are
included, host-side synchronisation is not), on the CPU with ``time.perf_counter``. Throughput
is the images of all timed calls over their wall-clock time, like trtexec's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

PEAK_MEMORY_SOURCES = {
    "cuda": "torch.cuda.max_memory_allocated: PyTorch's caching allocator only (memory TensorRT or "
    "ONNX Runtime allocate themselves is not counted)",
    "cpu": "peak resident set size of the whole process (Linux VmHWM, reset before each point)",
}
"""What ``peak_memory_gib`` means on each device type."""


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call: min, median, 90th/99th percentile (linear interpolation between
    samples, NumPy's default) and max."""

    min: float
    median: float
    p90: float
    p99: float
    max: float

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no latency samples: iterations must be at least 1")
        values = np.percentile(np.asarray(samples_ms, dtype=np.float64), [0, 50, 90, 99, 100])
        return cls(*(float(value) for value in values))


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call latency and wall-clock seconds of ``calls`` timed calls."""

    latency_ms: LatencyStats
    wall_seconds: float
    calls: int


def time_calls(call: Callable[[], object], device: torch.device, warmup: int, iterations: int) -> Timing:
    """Run ``call`` ``warmup`` times untimed, then ``iterations`` times timed (see the module
    docstring); ``device`` is where ``call`` computes. Each timed call is waited for before the
    next starts, so calls do not overlap."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    cuda = device.type == "cuda"
    for _ in range(warmup):
        call()
    if cuda:
        torch.cuda.synchronize(device)
    samples = []
    wall_start = time.perf_counter()
    for _ in range(iterations):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1e3)
    wall_seconds = time.perf_counter() - wall_start
    return Timing(LatencyStats.from_samples(samples), wall_seconds, iterations)


class PeakMemory:
    """Peak memory of one measurement on ``device``, in GiB (see :data:`PEAK_MEMORY_SOURCES`).

    :meth:`reset` before the measurement, :meth:`read` after it. ``read`` gives None where the
    peak cannot be measured (a CPU without Linux's /proc).
    """

    STATUS = Path("/proc/self/status")
    CLEAR_REFS = Path("/proc/self/clear_refs")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.source = PEAK_MEMORY_SOURCES[device.type]
        self._was_reset = False

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._was_reset = True
            return
        try:
            self.CLEAR_REFS.write_text("5")  # proc(5): "5" resets the peak RSS (VmHWM) to the current RSS
            self._was_reset = True
        except OSError:
            self._was_reset = False  # the process's lifetime peak would be misattributed: report none

    def read(self) -> float | None:
        if not self._was_reset:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        try:
            status = self.STATUS.read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                kibibytes = int(line.split()[1])
                return kibibytes / 2**20
        return None
