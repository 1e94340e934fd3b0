"""The benchmark run: every target at every batch size, one after the other.

Targets are loaded one at a time (the previous one is released first, so peak memory is each
target's own). At each batch size the model-only latency is measured on random images of the
target's input size (uniform integers 0-255, ``image_sizes`` the full canvas; seed 0) that already
lie on the runtime's device; with image paths, also the end-to-end time per image: decoding in
DataLoader workers, pre-processing, model and post-processing (:class:`Predictor`); with
``profile``, where the GPU time goes (:mod:`codetr.benchmark.profile`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from codetr.benchmark.measure import LatencyStats, PeakMemory, time_calls
from codetr.benchmark.profile import KernelProfile, profile_calls
from codetr.benchmark.targets import Target, input_size, load_target, unsupported_batch
from codetr.data.images import image_loader
from codetr.runtime.predictor import Predictor

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """How to measure: timed ``iterations`` after ``warmup`` calls per point; ``height``/``width``
    override the input size; ``images``: files for the end-to-end time (empty: none), decoded
    by ``workers`` DataLoader workers; ``profile``: also record each point's GPU kernels. The rest
    is how targets load (:func:`load_target`)."""

    batch_sizes: tuple[int, ...] = (1,)
    iterations: int = 50
    warmup: int = 10
    height: int | None = None
    width: int | None = None
    images: tuple[Path, ...] = ()
    workers: int = 2
    config: Path | None = None
    checkpoint: Path | None = None
    device: str | None = None
    allow_tf32: bool = False
    profile: bool = False

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(size < 1 for size in self.batch_sizes):
            raise ValueError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be 0 or more, got {self.warmup}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")
        for name, side in (("height", self.height), ("width", self.width)):
            if side is not None and side < 1:
                raise ValueError(f"{name} must be positive, got {side}")


@dataclasses.dataclass(frozen=True)
class EndToEnd:
    """Decode + pre-process + model + post-process over ``images`` files, timed from the first
    decoded batch (DataLoader worker start-up excluded) to the last post-processed one.
    ``skipped``: the files that could not be read, not counted in ``images``."""

    ms_per_image: float
    images_per_second: float
    images: int
    workers: int
    skipped: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """One measured point: ``target`` at ``batch_size`` on inputs [B, 3, H, W] = ``input_shape``.
    ``images_per_second`` = batch size x timed calls / their wall-clock seconds."""

    target: Target
    batch_size: int
    input_shape: tuple[int, int, int, int]
    dtype: str
    device: str
    latency_ms: LatencyStats
    images_per_second: float
    peak_memory_gib: float | None
    peak_memory_source: str
    end_to_end: EndToEnd | None = None
    profile: KernelProfile | None = None


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A point not measured and why: not possible (a static-batch export at another batch size),
    or ``failed`` (loading or running raised a RuntimeError, e.g. out of memory; the run goes on
    with the other points and ``codetr bench`` exits with status 1)."""

    target: Target
    batch_size: int
    reason: str
    failed: bool = False


def run_benchmark(targets: Sequence[Target], settings: BenchSettings) -> list[BenchResult | Skipped]:
    """Measure every target at every batch size of ``settings``, in order (see the module docstring)."""
    outcomes: list[BenchResult | Skipped] = []
    for target in targets:
        logger.info("loading %s", target.label)
        try:
            predictor = load_target(
                target, config=settings.config, checkpoint=settings.checkpoint, device=settings.device,
                allow_tf32=settings.allow_tf32,
            )
        except RuntimeError as error:  # a backend failure; ValueError/OSError (user errors) propagate
            outcomes += [Skipped(target, size, _failure(error), failed=True) for size in settings.batch_sizes]
            continue
        height, width = input_size(predictor, settings.height, settings.width)
        for batch_size in settings.batch_sizes:
            reason = unsupported_batch(predictor, batch_size)
            if reason is not None:
                logger.debug("%s, batch %d: skipped: %s", target.label, batch_size, reason)
                outcomes.append(Skipped(target, batch_size, reason))
                continue
            try:
                outcomes.append(measure_point(predictor, target, batch_size, height, width, settings))
            except RuntimeError as error:  # out of memory, a CUDA-graph capture the runtime refuses, ...
                outcomes.append(Skipped(target, batch_size, _failure(error), failed=True))
            finally:
                _release_memory()
        del predictor
        _release_memory()
    return outcomes


def _failure(error: RuntimeError) -> str:
    message = str(error).strip().splitlines()
    logger.error("%s: %s", type(error).__name__, str(error).strip())
    return f"failed: {type(error).__name__}: {message[0] if message else ''}"


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_point(
    predictor: Predictor, target: Target, batch_size: int, height: int, width: int, settings: BenchSettings
) -> BenchResult:
    """The model-only latency, throughput and peak memory (and end-to-end time, with images) of
    ``predictor`` at ``batch_size`` images of ``height`` x ``width``."""
    runtime = predictor.runtime
    device = runtime.device
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, height, width), generator=generator).float().to(device)
    image_sizes = torch.tensor([[height, width]] * batch_size, dtype=torch.int64, device=device)
    memory = PeakMemory(device)
    memory.reset()
    timing = time_calls(lambda: runtime(images, image_sizes), device, settings.warmup, settings.iterations)
    peak = memory.read()
    profile = profile_calls(lambda: runtime(images, image_sizes), device) if settings.profile else None
    del images, image_sizes
    end_to_end = None
    if settings.images:
        end_to_end = measure_end_to_end(predictor, settings.images, batch_size, settings.workers)
    result = BenchResult(
        target=target,
        batch_size=batch_size,
        input_shape=(batch_size, 3, height, width),
        dtype=_dtype_of(predictor, target),
        device=str(device),
        latency_ms=timing.latency_ms,
        images_per_second=batch_size * timing.calls / timing.wall_seconds,
        peak_memory_gib=peak,
        peak_memory_source=memory.source,
        end_to_end=end_to_end,
        profile=profile,
    )
    logger.info(
        "%s, batch %d: median %.2f ms, %.1f images/s", target.label, batch_size, result.latency_ms.median,
        result.images_per_second,
    )
    return result


def measure_end_to_end(predictor: Predictor, paths: Sequence[Path], batch_size: int, workers: int) -> EndToEnd:
    """Time :class:`Predictor` over the image files ``paths``, ``batch_size`` at a time, decoded in
    ``workers`` DataLoader workers. A file that cannot be read is skipped (its failed decode is
    timed, it is not counted) and listed in ``skipped``; ValueError when none can be read."""
    count, skipped = 0, []
    started = None
    for records in image_loader(paths, batch_size=batch_size, workers=workers):
        if started is None:
            started = time.perf_counter()
        skipped += [str(record.path) for record in records if record.image is None]
        readable = [record.image for record in records if record.image is not None]
        if readable:
            predictor(readable)
        count += len(readable)
    if count == 0:
        raise ValueError(f"--images: none of the {len(paths)} image(s) could be read")
    if predictor.runtime.device.type == "cuda":
        torch.cuda.synchronize(predictor.runtime.device)
    elapsed = time.perf_counter() - started
    return EndToEnd(elapsed * 1e3 / count, count / elapsed, count, workers, tuple(skipped))


def _dtype_of(predictor: Predictor, target: Target) -> str:
    metadata = predictor.runtime.metadata
    return metadata.dtype if metadata is not None else str(target.dtype)
