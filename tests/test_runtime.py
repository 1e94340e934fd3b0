"""The common runtime interface: file-type dispatch and input checks (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codetr.runtime import load_runtime
from codetr.runtime.base import check_inputs


def test_load_runtime_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no exported model at .*model.pt2"):
        load_runtime(tmp_path / "model.pt2")


def test_load_runtime_rejects_unknown_file_types(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown model file type '.tflite'; expected .pt2, .onnx or .engine"):
        load_runtime(path)


@pytest.mark.parametrize(
    ("images", "image_sizes", "message"),
    [
        (torch.zeros(3, 64, 64), torch.zeros(1, 2), r"images must be \[B, 3, H, W\], got shape \(3, 64, 64\)"),
        (torch.zeros(1, 1, 64, 64), torch.zeros(1, 2), r"images must be \[B, 3, H, W\]"),
        (torch.zeros(2, 3, 64, 64), torch.zeros(1, 2), r"image_sizes must be \[B, 2\] = \[2, 2\], got \(1, 2\)"),
    ],
)
def test_check_inputs(images: torch.Tensor, image_sizes: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_inputs(images, image_sizes)
