"""Running an export as named, timed stages that either finish or leave nothing behind."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from codetr.contract.metadata import file_sha256

logger = logging.getLogger("codetr.export")


class ExportError(RuntimeError):
    """A stage of the export failed; ``stage`` names it and the message says why."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"export stage '{stage}' failed: {reason}")
        self.stage = stage
        self.reason = reason


@dataclasses.dataclass
class StageRecord:
    """How long a stage took and which file it wrote (if any): its size and SHA-256 (hex), which
    the runtime checks when it loads the file (codetr.runtime.loader)."""

    name: str
    seconds: float
    path: Path | None = None
    bytes: int | None = None
    sha256: str | None = None


class StageLog:
    """Runs stages, logs progress and timing, and records each stage's result."""

    def __init__(self) -> None:
        self.records: list[StageRecord] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        """Time the block as stage ``name``; any exception becomes an :class:`ExportError`.

        The block may set ``path`` on the yielded record to report the file it wrote.
        """
        logger.info("[%s] started", name)
        record = StageRecord(name, 0.0)
        start = time.perf_counter()
        try:
            yield record
        except ExportError:
            raise
        except Exception as error:  # any failure inside a stage is reported with the stage's name
            logger.error("[%s] failed after %.1f s: %s", name, time.perf_counter() - start, error)
            raise ExportError(name, f"{type(error).__name__}: {error}") from error
        record.seconds = time.perf_counter() - start
        if record.path is not None:
            record.bytes = record.path.stat().st_size
            record.sha256 = file_sha256(record.path)
            # The name only: the folder is the export's staging folder until every stage is done.
            logger.info("[%s] done in %.1f s -> %s (%.1f MB)", name, record.seconds, record.path.name, record.bytes / 1e6)
        else:
            logger.info("[%s] done in %.1f s", name, record.seconds)
        self.records.append(record)

    def to_json(self) -> list[dict[str, object]]:
        return [
            {
                "stage": record.name,
                "seconds": round(record.seconds, 3),
                "file": record.path.name if record.path else None,
                "bytes": record.bytes,
                "sha256": record.sha256,
            }
            for record in self.records
        ]
