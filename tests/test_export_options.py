"""Export options and the ``codetr export`` command line: bad input gives a clear error before any work.

These tests build no model and export nothing, so they take well under a second each.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from codetr.atomic import atomic_path
from codetr.cli import main
from codetr.config import load_config
from codetr.contract.artifacts import CompileMode
from codetr.contract.metadata import read_metadata
from codetr.export import Artifact, DimRange, ExportError, ExportOptions, MsdaMode
from codetr.export.program import (
    check_input_sizes,
    encoder_tokens,
    feature_strides,
    largest_feature_stride,
    max_input_side,
    smallest_square_side,
)
from codetr.export.stages import StageLog

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Exit status and stderr of ``codetr export args``."""
    try:
        status = main(["export", *args])
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
        ({"msda": MsdaMode.NVIDIA, "artifacts": (Artifact.EXPORTED_PROGRAM, Artifact.AOTI)}, "no ONNX model is requested"),
        ({"dynamic_height": DimRange(128, 512), "height": 640}, "dynamic_height 128:512 must satisfy"),
        ({"opset": 13}, "opset 13 cannot be honoured: torch.onnx writes opset 18 at least"),
        ({"opset": 16}, "opset 16 cannot be honoured"),
        ({"opset": 17}, "opset 17 cannot be honoured"),
        ({"opset": 23}, "goes up to opset 22"),
        ({"dtype": torch.bfloat16, "opset": 18}, "bfloat16 ONNX needs opset >= 22"),
        ({"artifacts": (Artifact.EXPORTED_PROGRAM, Artifact.TORCH_TENSORRT)}, "torch_tensorrt cannot be requested here"),
        ({"embed_plugin": True, "artifacts": (Artifact.ONNX,)}, "embed_plugin: only an engine"),
        ({"torch_tensorrt": "hybrid"}, r"torch_tensorrt must be None or a CompileMode \(hybrid, full\)"),
        ({"torch_tensorrt": CompileMode.FULL, "msda": MsdaMode.DECOMPOSED}, "msda 'decomposed' has none"),
        ({"aoti_configs": {"freezing": True}}, "only the AOTInductor package is compiled by Inductor"),
        ({"artifacts": (Artifact.AOTI,), "aoti_configs": {"no_such_setting": 1}}, "'no_such_setting' is not a setting"),
        ({"artifacts": (Artifact.AOTI,), "aoti_configs": {"freezing": "yes"}}, "freezing takes bool values"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExportOptions(**kwargs)


def test_a_timing_cache_that_is_a_folder_is_rejected(tmp_path: Path) -> None:
    """Checked up front: the cache is rewritten only after a minutes-long engine build."""
    with pytest.raises(IsADirectoryError, match=f"timing_cache {tmp_path} is a folder; give the cache file's path"):
        ExportOptions(timing_cache=tmp_path)


def test_missing_plugin_library_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="plugin_library"):
        ExportOptions(plugin_library=tmp_path / "missing.so")


def test_opset_follows_the_dtype() -> None:
    assert ExportOptions(dtype=torch.float32).onnx_opset == 18
    assert ExportOptions(dtype=torch.float16).onnx_opset == 18
    assert ExportOptions(dtype=torch.bfloat16).onnx_opset == 22
    assert ExportOptions(dtype=torch.float16, opset=20).onnx_opset == 20


def test_sizes_must_fit_the_model() -> None:
    config = load_config(TINY)
    assert largest_feature_stride(config) == 64  # ResNet stages at strides 8, 16, 32 + one extra neck level
    with pytest.raises(ValueError, match=r"height must be a multiple of 32 .* got 100; nearest valid: 96 or 128"):
        check_input_sizes(config, ExportOptions(height=100, width=96))
    with pytest.raises(ValueError, match="dynamic_width MAX must be a multiple of 32"):
        check_input_sizes(config, ExportOptions(height=128, width=128, dynamic_width=DimRange(128, 200)))
    with pytest.raises(ValueError, match="dynamic_height MIN must be at least 128"):
        check_input_sizes(config, ExportOptions(height=128, width=128, dynamic_height=DimRange(64, 256)))
    check_input_sizes(config, ExportOptions(height=160, width=96, dynamic_height=DimRange(128, 256)))


def test_encoder_tokens_by_hand() -> None:
    config = load_config(TINY)
    assert feature_strides(config) == (8, 16, 32, 64)
    # 64x96: 8x12 + 4x6 + 2x3 + 1x2 feature pixels; 96x96: 12x12 + 6x6 + 3x3 + 2x2 (ceil(96/64) = 2).
    assert encoder_tokens(config, 64, 96) == 96 + 24 + 6 + 2
    assert encoder_tokens(config, 96, 96) == 144 + 36 + 9 + 4
    # 32 queries: 32x32 gives 16 + 4 + 1 + 1 = 22 tokens, 64x64 gives 64 + 16 + 4 + 1 = 85.
    assert smallest_square_side(config) == 64


def test_fewer_tokens_than_queries_is_refused_naming_the_smallest_size() -> None:
    config = load_config(TINY)
    with pytest.raises(ValueError, match=r"input 32x32 gives the encoder 22 tokens, fewer than the model's 32 "
                       r"queries .* smallest square input that works is 64x64"):
        check_input_sizes(config, ExportOptions(height=32, width=32))
    # Co-DINO R50 (strides 4..64, 900 queries): 64x64 has 16^2 + 8^2 + 4^2 + 2^2 + 1 = 341 tokens (the
    # reported failure), 96x96 has 24^2 + 12^2 + 6^2 + 3^2 + 2^2 = 769, 128x128 has 1364.
    r50 = load_config(TINY.parent / "co_dino_5scale_r50_lsj_8xb2_1x_coco.toml")
    assert encoder_tokens(r50, 64, 64) == 341
    with pytest.raises(ValueError, match="input 96x96 gives the encoder 769 tokens, fewer than the model's 900 "
                       "queries .* smallest square input that works is 128x128"):
        check_input_sizes(r50, ExportOptions(height=96, width=96))
    check_input_sizes(r50, ExportOptions(height=128, width=128))


def test_absurd_sizes_are_refused_naming_the_limit(capsys, tmp_path: Path) -> None:
    config = load_config(TINY)
    assert max_input_side(config) == 4 * 96  # 4x the tiny config's largest resize scale
    with pytest.raises(ValueError, match=r"width 100000 is beyond this model's useful range: at most 384 pixels"):
        check_input_sizes(config, ExportOptions(height=64, width=100000))
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "100000", "--width", "100000",
                             "--output", str(tmp_path / "out"))
    assert status == 2 and "at most 384 pixels" in stderr
    assert not (tmp_path / "out").exists()


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
        (["--config", "/nonexistent/model.toml"], "config /nonexistent/model.toml: no such file, and not a shipped config"),
        (["--artifacts", "onnx,tflite"], "--artifacts: unknown tflite"),
        (["--dynamic-height", "64-256"], "--dynamic-height must be MIN:MAX"),
        (["--torch-tensorrt", "partial"], "argument --torch-tensorrt: invalid choice: 'partial'"),
        (["--dtype", "bfloat16", "--opset", "18"], "bfloat16 ONNX needs opset >= 22"),
        (["--opset", "17"], "opset 17 cannot be honoured"),
        (["--artifacts", "torch_tensorrt"], "--artifacts: unknown torch_tensorrt"),
        (["--height", "32", "--width", "32"], "smallest square input that works is 64x64"),
        (["--embed-plugin", "--artifacts", "exported_program,onnx"], "embed_plugin: only an engine"),
        (["--device", "cuda:7"] if torch.cuda.device_count() else ["--device", "cuda"],
         "argument --device: cuda"),
        (["--device", "gpu0"], "argument --device: 'gpu0' is not a device"),
        (["--aoti-config", "freezing"], "--aoti-config takes KEY=VALUE (e.g. freezing=true), got 'freezing'"),
        (["--artifacts", "aoti", "--aoti-config", "freezing=maybe"], "freezing takes bool values (default False), got 'maybe'"),
    ],
)
def test_cli_rejects_bad_arguments(capsys, tmp_path: Path, no_tensorrt_probe, args: list[str], message: str) -> None:
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96",
                             "--output", str(tmp_path / "out"), *args)
    assert status == 2
    assert message in stderr


@pytest.fixture
def no_tensorrt_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """``codetr export``'s TensorRT / Torch-TensorRT probes (seconds long, they log the --msda auto
    choice) fail the test if called: a bad command must fail before them."""

    def probe(*args, **kwargs):
        raise AssertionError("the TensorRT probe ran before the options were checked")

    for name in ("choose_msda", "tensorrt_unavailable_reason", "import_tensorrt", "torch_tensorrt_unavailable_reason"):
        monkeypatch.setattr(f"codetr.cli.export.{name}", probe)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--height is required: config tiny has no fixed pad_size"),
        (["--height", "64", "--width", "96", "--torch-tensorrt", "hybrid", "--device", "cpu"],
         "--torch-tensorrt hybrid: Torch-TensorRT compiles on a CUDA GPU"),
        (["--height", "64", "--width", "96", "--score-threshold", "0.5"], "--score-threshold applies to --postprocess"),
        (["--height", "64", "--width", "96", "--plugin-library", "/nonexistent/lib.so"],
         "plugin_library: no such file /nonexistent/lib.so"),
        (["--height", "64", "--width", "96", "--calibration-data", "/nonexistent"], "--calibration-data: only used with --int8"),
        (["--height", "64", "--width", "96", "--dynamic-height", "64:32"], "dynamic_height 64:32 must satisfy"),
        (["--height", "64", "--width", "96", "--use-ema"], "--use-ema loads the EMA copy of --checkpoint; give --checkpoint"),
        (["--height", "64", "--width", "96", "--artifacts", "aoti", "--msda", "nvidia"],
         "msda 'nvidia': NVIDIA's MultiscaleDeformableAttnPlugin_TRT is a node of the ONNX model"),
    ],
)
def test_cli_fails_fast_before_the_tensorrt_probe(capsys, caplog, tmp_path: Path, no_tensorrt_probe, args: list[str],
                                                  message: str) -> None:
    """A mistake that needs no TensorRT is the only thing printed: no --msda auto line before it."""
    status, stderr = run_cli(capsys, "--config", str(TINY), "--output", str(tmp_path / "out"), *args)
    assert status == 2
    assert len(stderr.splitlines()) == 1 and stderr.startswith(f"error: {message}")
    assert caplog.text == ""
    assert list(tmp_path.iterdir()) == []


def test_msda_auto_without_an_onnx_model_needs_no_tensorrt_probe(no_tensorrt_probe) -> None:
    """The MSDA forms plugin and nvidia differ in the ONNX model only: without one, auto is plugin
    (the programs' torch.ops.codetr.msda), decided without looking for TensorRT."""
    from codetr.cli import build_parser
    from codetr.cli.export import options_from_args

    args = build_parser().parse_args(["export", "--config", str(TINY), "--output", "out", "--height", "64",
                                      "--width", "96", "--artifacts", "exported_program,aoti"])
    options = options_from_args(args, load_config(TINY))
    assert options.msda is MsdaMode.PLUGIN and "no ONNX model requested" in options.msda_choice
    assert options.artifacts == (Artifact.EXPORTED_PROGRAM, Artifact.AOTI)


def test_cli_checks_the_output_folder_before_the_tensorrt_probe(capsys, tmp_path: Path, no_tensorrt_probe) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep")
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96",
                             "--output", str(tmp_path / "out"))
    assert status == 2
    assert stderr.splitlines() == [
        f"error: --output {tmp_path / 'out'} is not empty and is not a codetr export (holds notes.txt); choose a new "
        "or empty folder, or pass --overwrite to replace that folder and everything in it"]
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("holder", ["runs", "runs/long"])
@pytest.mark.parametrize("option", ["--checkpoint", "--config", "--plugin-library", "--timing-cache"])
def test_cli_refuses_an_output_holding_an_input_even_with_overwrite(capsys, tmp_path: Path, no_tensorrt_probe,
                                                                    option: str, holder: str) -> None:
    """--overwrite replaces the output whole: a folder holding a file the export reads is refused."""
    inputs = {"--checkpoint": "latest.pth", "--config": "tiny.toml", "--plugin-library": "libcodetr_msda_trt.so",
              "--timing-cache": "timing.cache"}
    given = tmp_path / "runs" / "long" / inputs[option]
    given.parent.mkdir(parents=True)
    given.write_bytes(TINY.read_bytes())
    args = {"--config": str(TINY), option: str(given)}
    status, stderr = run_cli(capsys, *[text for pair in args.items() for text in pair], "--height", "64",
                             "--width", "96", "--output", str(tmp_path / holder), "--overwrite")
    assert status == 2
    assert stderr.splitlines() == [
        f"error: --output {tmp_path / holder} holds the input {given}; a finished run replaces {tmp_path / holder} "
        "whole, so choose a folder outside it"]
    assert given.read_bytes() == TINY.read_bytes()


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
    # --device cuda passes its own check first (no GPU is used: the command stops at the package check).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    status, stderr = run_cli(capsys, "--config", str(TINY), "--height", "64", "--width", "96", "--device", "cuda",
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


def test_the_default_config_is_shipped_in_the_package(tmp_path: Path, monkeypatch, capsys) -> None:
    """Without --config, an installed codetr (no checkout around it) exports the official R50 config
    from the package; --config takes a shipped config's name from any folder."""
    import codetr
    from codetr.cli import build_parser
    from codetr.config import resolve_config

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["export", "--output", "out"])
    assert resolve_config(args.config) == Path(codetr.__file__).resolve().parent / "configs" / "co_dino_5scale_r50_lsj_8xb2_1x_coco.toml"
    assert main(["export", "--config", "tiny", "--output", "out", "--dtype", "float32", "--device", "cpu",
                 "--artifacts", "exported_program", "--msda", "decomposed", "--height", "64", "--width", "64"]) == 0
    assert "exported tiny" in capsys.readouterr().out and (tmp_path / "out" / "model.pt2").is_file()


def test_help_shows_every_default(capsys) -> None:
    """Every option of ``codetr export --help`` states its default (or that it is required)."""
    import argparse

    from codetr.cli import build_parser

    parser = build_parser()
    (subparsers,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    export = subparsers.choices["export"]
    undocumented = [
        action.option_strings[0] for action in export._actions
        if action.option_strings and action.dest != "help" and not action.required
        and "default" not in (action.help or "")
    ]
    assert undocumented == []
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "many times slower than float32 on a CPU" in " ".join(capsys.readouterr().out.split())


def test_aoti_configs_reach_the_compile_and_the_metadata(tmp_path: Path, monkeypatch) -> None:
    compiled = {}

    def compile_package(program, path, inductor_configs=None):
        compiled.update(inductor_configs)
        Path(path).write_bytes(b"not a package: the compile itself is tested in test_runtime_aoti.py")
        return path

    monkeypatch.setattr("codetr.export.pipeline.compile_package", compile_package)
    output = tmp_path / "out"
    assert main(["export", "--config", str(TINY), "--height", "64", "--width", "96", "--dtype", "float32",
                 "--artifacts", "aoti", "--aoti-config", "freezing=true", "--aoti-config", "max_autotune_gemm_backends=ATEN",
                 "--aoti-config", "realize_reads_threshold=4", "--output", str(output)]) == 0
    expected = {"freezing": True, "max_autotune_gemm_backends": "ATEN", "realize_reads_threshold": 4}
    assert compiled == expected
    read_metadata(output / "metadata.json")  # the reader accepts it
    assert json.loads((output / "metadata.json").read_text())["options"]["aoti_configs"] == expected
