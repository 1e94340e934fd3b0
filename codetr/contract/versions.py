"""The versions an artifact or a measurement is recorded with (metadata.json, bench JSON)."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable

import torch

CODETR_VERSION = "0.1.0"
"""codetr's version (``codetr.__version__``); kept here so that the lowest layer can record it."""


def library_versions(packages: Iterable[str] = ()) -> dict[str, str]:
    """Python, codetr, torch (its own version string, CUDA build tag included) and each of
    ``packages`` that is installed (distribution names, e.g. "onnx", "onnxruntime")."""
    versions = {"python": platform.python_version(), "codetr": CODETR_VERSION, "torch": torch.__version__}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
