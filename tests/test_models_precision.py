"""codetr.models.precision.tf32: float32 means IEEE float32 unless TF32 is allowed."""

from __future__ import annotations

import pytest
import torch

from codetr.models.precision import tf32


def flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def restore_flags():
    saved = flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("before", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("allowed", [False, True])
def test_sets_both_flags_and_restores_them(restore_flags, before: tuple[bool, bool], allowed: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    with tf32(allowed):
        assert flags() == (allowed, allowed)
    assert flags() == before


def test_restores_after_an_error(restore_flags) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    with pytest.raises(RuntimeError, match="inside"):
        with tf32(False):
            raise RuntimeError("inside")
    assert flags() == (True, True)


@pytest.mark.cuda
def test_float32_convolution_is_ieee_inside(restore_flags) -> None:
    """On a GPU with TF32 (Ampere and newer), the default cuDNN convolution rounds to TF32; inside
    tf32(False) it matches a float64 reference to float32 precision."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 64, 64, 64, generator=generator, dtype=torch.float64)
    weight = torch.randn(64, 64, 3, 3, generator=generator, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(images, weight, padding=1)
    torch.backends.cudnn.allow_tf32 = True
    with tf32(False):
        actual = torch.nn.functional.conv2d(images.float().cuda(), weight.float().cuda(), padding=1)
    relative = ((actual.double().cpu() - expected).norm() / expected.norm()).item()
    assert relative < 1e-5  # TF32's 10-bit mantissa gives ~1e-4
