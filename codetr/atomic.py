"""Writing files so that nobody ever sees a half-written one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Readers never see a half-written file: ``os.replace`` within one directory is atomic, and
    on failure the temporary file is removed.
    """
    # Same suffix as the target: some writers (torch.export.save, torch_tensorrt.save) check it.
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"nothing was written to {temporary}")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
