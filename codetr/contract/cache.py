"""The one folder where codetr keeps caches (TensorRT timing cache, the TensorRT-RTX library
link, test builds): ``$XDG_CACHE_HOME/codetr``, else ``~/.cache/codetr`` (the XDG base-directory
default)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``<cache root>/codetr/<parts...>``; not created (callers create what they write into)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root.joinpath("codetr", *parts)
