"""Export options and the export.py command line: bad input gives a clear error before any work.

These tests build no model and export nothing, so they take well under a second each.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

from codetr.export import Artifact, DimRange, ExportError, ExportOptions, MsdaMode
from codetr.export.cli import main
from codetr.export.program import largest_feature_stride
from codetr.atomic import atomic_path
from codetr.export.stages import StageLog
from codetr.config import load_config
from codetr.contract.artifacts import CompileMode

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Exit status and stderr of ``export.py args``."""
    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": torch.float64}, "dtype must be one of float32, float16, bfloat16"),
        ({"optimization_level": 6}, "optimization_level must be in 0..5"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"artifacts": ()}, "artifacts must name at least one"),
        ({"artifacts": (Artifact.ENGINE,)}, "engine is built from the ONNX model"),
        ({"msda": MsdaMode.NVIDIA, "dtype": torch.bfloat16}, "float32 and float16 only"),
        ({"dynamic_height": DimRange(128, 512), "height": 640}, "dynamic_height 128:512 must satisfy"),
        ({"opset": 13}, "opset must be >= 16"),
        ({"torch_tensorrt": "hybrid"}, r"torch_tensorrt must be None or a CompileMode \(hybrid, full\)"),
        ({"torch_tensorrt": CompileMode.FULL, "msda": MsdaMode.DECOMPOSED}, "msda 'decomposed' has none"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExportOptions(**kwargs)


def test_missing_plugin_library_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="plugin_library"):
        ExportOptions(plugin_library=tmp_path / "missing.so")


def test_sizes_must_fit_the_model() -> None:
    config = load_config(TINY)
    stride = largest_feature_stride(config)
    assert stride == 64  # ResNet stages at strides 8, 16, 32 + one extra neck level
    with pytest.raises(ValueError, match=r"height must be a multiple of 32 .* got 100; nearest valid: 96 or 128"):
        ExportOptions(height=100, width=96).check_sizes(32, stride)
    with pytest.raises(ValueError, match="dynamic_width MAX must be a multiple of 32"):
        ExportOptions(height=128, width=128, dynamic_width=DimRange(128, 200)).check_sizes(32, stride)
    with pytest.raises(ValueError, match="dynamic_height MIN must be at least 128"):
        ExportOptions(height=128, width=128, dynamic_height=DimRange(64, 256)).check_sizes(32, stride)
    ExportOptions(height=160, width=96, dynamic_height=DimRange(128, 256)).check_sizes(32, stride)


def test_dim_range_parse() -> None:
    assert DimRange.parse("512:1344", "--dynamic-height") == DimRange(512, 1344)
    with pytest.raises(ValueError, match="--dynamic-height must be MIN:MAX"):
        DimRange.parse("512:768:1344", "--dynamic-height")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--height", "100", "--width", "96"], "height must be a multiple of 32"),
        (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
        (["--optimization-level", "7"], "argument --optimization-level: invalid choice: 7"),
        (["--checkpoint", "/nonexistent/co_dino.pth"], "--checkpoint: no such file /nonexistent/co_dino.pth"),
        (["--config", "/nonexistent/model.toml"], "config file not found: /nonexistent/model.toml"),
        (["--artifacts", "onnx,tflite"], "--artifacts: unknown tflite"),
        (["--dynamic-height", "64-256"], "--dynamic-height must be MIN:MAX"),
        (["--torch-tensorrt", "partial"], "argument --torch-tensorrt: invalid choice: 'partial'"),
    ],
)
def test_cli_rejects_bad_arguments(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96",
                             "--output", str(tmp_path / "out"), *args)
    assert status == 2
    assert message in stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_cli_rejects_unwritable_output(capsys, tmp_path: Path) -> None:
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96",
                             "--output", str(read_only / "out"))
    assert status == 2
    assert f"cannot create directory {read_only / 'out'}" in stderr


def test_cli_rejects_output_that_is_a_file(capsys, tmp_path: Path) -> None:
    a_file = tmp_path / "model.onnx"
    a_file.write_text("")
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96",
                             "--output", str(a_file))
    assert status == 2
    assert "exists and is not a directory" in stderr
    # Uncreatable even for root: a directory below a regular file.
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96",
                             "--output", str(a_file / "out"))
    assert status == 2
    assert f"cannot create directory {a_file / 'out'}" in stderr


def test_failed_stage_is_named_and_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    stages = StageLog()
    with pytest.raises(ExportError, match="export stage 'onnx' failed: RuntimeError: out of disk") as caught:
        with stages.stage("onnx"):
            with atomic_path(target) as temporary:
                temporary.write_bytes(b"half a model")
                raise RuntimeError("out of disk")
    assert caught.value.stage == "onnx"
    assert list(tmp_path.iterdir()) == []
    assert stages.records == []


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "metadata.json"
    target.write_text("old")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".json"
        temporary.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert [path.name for path in tmp_path.iterdir()] == ["metadata.json"]


def test_cli_rejects_torch_tensorrt_without_the_package(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # makes `import torch_tensorrt` fail
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96",
                             "--torch-tensorrt", "hybrid", "--output", str(tmp_path / "out"))
    assert status == 2
    assert "--torch-tensorrt hybrid: torch_tensorrt cannot be imported (" in stderr
    assert "install torch-tensorrt" in stderr
    assert not (tmp_path / "out").exists()  # rejected before any work


def test_cli_rejects_torch_tensorrt_on_cpu(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", types.ModuleType("torch_tensorrt"))
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96",
                             "--torch-tensorrt", "full", "--device", "cpu", "--output", str(tmp_path / "out"))
    assert status == 2
    assert "--torch-tensorrt full: Torch-TensorRT compiles on a CUDA GPU; use --device cuda" in stderr
