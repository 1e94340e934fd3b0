"""An export is one unit (codetr.export.pipeline): built aside, swapped in whole when every stage
succeeded; a failed or interrupted export leaves the output folder as it was, and a folder that
holds anything but a codetr export is refused unless --overwrite.

A constant detector stands in for Co-DINO: only the stages and the files matter here.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from codetr.cli import main
from codetr.config import load_config
from codetr.contract.artifacts import CompileMode
from codetr.export import Artifact, ExportError, ExportOptions, export_model
from codetr.models import Detections

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
PROGRAM_ONLY = ExportOptions(dtype=torch.float32, height=64, width=96, artifacts=(Artifact.EXPORTED_PROGRAM,))
PROGRAM_AND_ONNX = ExportOptions(dtype=torch.float32, height=64, width=96,
                                 artifacts=(Artifact.EXPORTED_PROGRAM, Artifact.ONNX))


class ConstantDetector(torch.nn.Module):
    """image -> (boxes, scores, labels), cheap to trace."""

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        boxes = images[:, :, :1, :4].mean(1)  # [B, 1, 4]
        scores = boxes.sum(-1)
        return Detections(boxes, scores, scores.long())


@pytest.fixture(scope="module")
def config():
    return load_config(TINY)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def fail_onnx_stage(monkeypatch, error: BaseException) -> None:
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("codetr.export.pipeline.to_onnx", fail)


def test_export_writes_only_the_output_folder(tmp_path: Path, config) -> None:
    result = export_model(ConstantDetector(), config, PROGRAM_ONLY, tmp_path / "out")
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no staging folder left beside it
    assert sorted(snapshot(tmp_path / "out")) == ["metadata.json", "model.pt2"]
    assert result.files == {Artifact.EXPORTED_PROGRAM: tmp_path / "out" / "model.pt2"}
    assert [record.path for record in result.stages.records if record.path] == [
        tmp_path / "out" / "model.pt2", tmp_path / "out" / "metadata.json"]


def test_previous_export_is_replaced_whole(tmp_path: Path, config) -> None:
    """An earlier export with an engine, re-exported with fewer artifacts: no old file survives."""
    output = tmp_path / "out"
    output.mkdir()
    (output / "metadata.json").write_text(json.dumps({"format": "codetr-export/1", "precision": "float16"}))
    (output / "model.engine").write_bytes(b"old engine")
    (output / "model.pt2").write_bytes(b"old program")
    export_model(ConstantDetector(), config, PROGRAM_ONLY, output)
    assert sorted(snapshot(output)) == ["metadata.json", "model.pt2"]
    assert (output / "model.pt2").read_bytes() != b"old program"
    metadata = json.loads((output / "metadata.json").read_text())
    assert metadata["format"] == "codetr-export/2" and metadata["files"] == {"exported_program": "model.pt2"}
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_failed_export_leaves_the_previous_export(tmp_path: Path, config, monkeypatch) -> None:
    output = tmp_path / "out"
    export_model(ConstantDetector(), config, PROGRAM_ONLY, output)
    before = snapshot(output)
    fail_onnx_stage(monkeypatch, RuntimeError("simulated translation failure"))
    with pytest.raises(ExportError, match="export stage 'onnx' failed: RuntimeError: simulated") as caught:
        export_model(ConstantDetector(), config, PROGRAM_AND_ONNX, output)
    assert caught.value.stage == "onnx"
    assert snapshot(output) == before  # neither the new .pt2 nor a new metadata.json
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_failed_first_export_leaves_no_folder(tmp_path: Path, config, monkeypatch) -> None:
    fail_onnx_stage(monkeypatch, RuntimeError("simulated translation failure"))
    with pytest.raises(ExportError):
        export_model(ConstantDetector(), config, PROGRAM_AND_ONNX, tmp_path / "new" / "folders" / "out")
    assert list(tmp_path.iterdir()) == []  # not even the parent folders it created


def test_interrupted_export_says_so_in_one_line(tmp_path: Path, config, monkeypatch, capsys) -> None:
    output = tmp_path / "out"
    export_model(ConstantDetector(), config, PROGRAM_ONLY, output)
    before = snapshot(output)
    fail_onnx_stage(monkeypatch, KeyboardInterrupt())
    monkeypatch.setattr("codetr.cli.export.build_model", lambda config, seed: ConstantDetector())
    status = main(["export", "--config", str(TINY), "--height", "64", "--width", "96", "--dtype", "float32",
                   "--artifacts", "exported_program,onnx", "--device", "cpu", "--output", str(output)])
    stderr = capsys.readouterr().err
    assert status == 130
    assert stderr.strip().splitlines()[-1] == f"interrupted: {output} was left as it was"
    assert "Traceback" not in stderr
    assert snapshot(output) == before
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("foreign", [["photo.jpg"], ["metadata.json", "notes.txt"], ["model.pt2"]])
def test_folder_with_other_files_is_refused_unless_overwrite(tmp_path: Path, config, foreign: list[str]) -> None:
    output = tmp_path / "out"
    output.mkdir()
    for name in foreign:
        (output / name).write_text("{}")
    with pytest.raises(FileExistsError, match="is not empty and is not a codetr export .* --overwrite"):
        export_model(ConstantDetector(), config, PROGRAM_ONLY, output)
    assert sorted(snapshot(output)) == sorted(foreign)
    export_model(ConstantDetector(), config, PROGRAM_ONLY, output, overwrite=True)
    assert sorted(snapshot(output)) == ["metadata.json", "model.pt2"]


def test_cli_refuses_a_foreign_folder_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    output = tmp_path / "photos"
    output.mkdir()
    (output / "cat.jpg").write_bytes(b"\xff\xd8")

    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the output folder was checked")

    monkeypatch.setattr("codetr.cli.export.build_model", must_not_build)
    status = main(["export", "--config", str(TINY), "--height", "64", "--width", "96", "--artifacts",
                   "exported_program", "--device", "cpu", "--output", str(output)])
    assert status == 2
    assert f"error: --output {output} is not empty and is not a codetr export (holds cat.jpg)" in capsys.readouterr().err
    assert snapshot(output) == {"cat.jpg": b"\xff\xd8"}


def test_torch_tensorrt_stage_fails_cleanly_without_the_package(tmp_path: Path, config, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # makes `import torch_tensorrt` fail
    options = dataclasses.replace(PROGRAM_ONLY, torch_tensorrt=CompileMode.HYBRID)
    with pytest.raises(ExportError) as caught:
        export_model(ConstantDetector(), config, options, tmp_path / "out")
    assert caught.value.stage == "torch-tensorrt hybrid"
    assert "torch_tensorrt cannot be imported" in caught.value.reason
    assert list(tmp_path.iterdir()) == []  # not even the .pt2 of the stage before


def test_failed_export_says_so_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    fail_onnx_stage(monkeypatch, RuntimeError("simulated translation failure"))
    monkeypatch.setattr("codetr.cli.export.build_model", lambda config, seed: ConstantDetector())
    output = tmp_path / "out"
    status = main(["export", "--config", str(TINY), "--height", "64", "--width", "96", "--dtype", "float32",
                   "--artifacts", "exported_program,onnx", "--device", "cpu", "--output", str(output)])
    assert status == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: export stage 'onnx' failed: RuntimeError: simulated translation failure; nothing was written "
        f"({output} does not exist)"]
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_export_left_is_removed(tmp_path: Path, config) -> None:
    dead = tmp_path / ".out.partial-999999999"  # above any pid_max: no such process
    dead.mkdir()
    (dead / "model.pt2").write_bytes(b"half")
    unrelated = tmp_path / ".out.notes"
    unrelated.mkdir()
    export_model(ConstantDetector(), config, PROGRAM_ONLY, tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == [".out.notes", "out"]


def test_engine_plugin_version_is_recorded_for_the_runtime_check(tmp_path: Path, config, monkeypatch) -> None:
    """metadata.json names the plugin version the engine was built with, so the TensorRT runtime's
    version check (codetr.runtime.tensorrt.check_engine_metadata) can fire."""
    from codetr.export.tensorrt_engine import EngineBuild
    from codetr.runtime.tensorrt import check_engine_metadata
    from codetr.tensorrt.plugin import PluginLibraryInfo

    def build_engine(onnx_path, engine_path, **options):
        engine_path.write_bytes(b"engine")
        plugin = PluginLibraryInfo(Path("libcodetr_msda_trt.so"), "CodetrMSDA", "1", "codetr", (10, 13, 0))
        return EngineBuild("tensorrt", "10.13.0", [], plugin)

    monkeypatch.setattr("codetr.export.pipeline.build_engine", build_engine)
    options = dataclasses.replace(PROGRAM_AND_ONNX, artifacts=(*PROGRAM_AND_ONNX.artifacts, Artifact.ENGINE))
    result = export_model(ConstantDetector(), config, options, tmp_path / "out")
    metadata = json.loads(result.metadata.read_text())
    assert metadata["versions"]["codetr_msda_plugin"] == "1" and metadata["versions"]["tensorrt"] == "10.13.0"
    assert metadata["files"]["engine"] == "model.engine" and "engine" not in metadata["skipped"]
    check_engine_metadata(metadata, "tensorrt", "10.13.0", "1")
    with pytest.raises(ValueError, match="plugin version 1 but the loaded library is version 2"):
        check_engine_metadata(metadata, "tensorrt", "10.13.0", "2")


def test_auto_artifacts_record_why_the_engine_was_skipped(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    def no_library(path=None):
        raise FileNotFoundError("plugin library not found: /nowhere/libcodetr_msda_trt.so")

    monkeypatch.setattr("codetr.cli.export.tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr("codetr.cli.export.plugin_library_path", no_library)
    monkeypatch.setattr("codetr.cli.export.build_model", lambda config, seed: ConstantDetector())
    status = main(["export", "--config", str(TINY), "--height", "64", "--width", "96", "--dtype", "float32",
                   "--device", "cpu", "--output", str(tmp_path / "out")])
    assert status == 0
    assert "NO --checkpoint GIVEN: using DETERMINISTIC RANDOM WEIGHTS (seed 0)" in caplog.text
    reason = "no plugin library: plugin library not found: /nowhere/libcodetr_msda_trt.so"
    assert f"skipped engine: {reason}" in capsys.readouterr().out
    metadata = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert metadata["skipped"]["engine"] == reason
    assert metadata["files"] == {"exported_program": "model.pt2", "onnx": "model.onnx"}


def test_output_holding_the_current_directory_is_refused(tmp_path: Path, config, monkeypatch) -> None:
    """Swapping in the export would move the folder the process (and the user's shell) is in."""
    (tmp_path / "out" / "inside").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "out" / "inside")
    with pytest.raises(ValueError, match="holds the current folder"):
        export_model(ConstantDetector(), config, PROGRAM_ONLY, Path(".."), overwrite=True)
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["inside"]


def test_output_holding_the_checkpoint_or_timing_cache_is_refused(tmp_path: Path, config) -> None:
    """The library function checks what it reads too: --overwrite would delete it."""
    checkpoint = tmp_path / "ck" / "latest.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    with pytest.raises(ValueError, match=f"output_dir {tmp_path / 'ck'} holds the input {checkpoint}"):
        export_model(ConstantDetector(), config, PROGRAM_ONLY, tmp_path / "ck", checkpoint=checkpoint, overwrite=True)
    cache = tmp_path / "ck" / "timing.cache"
    with pytest.raises(ValueError, match=f"holds the input {cache}"):
        export_model(ConstantDetector(), config, dataclasses.replace(PROGRAM_ONLY, timing_cache=cache), tmp_path,
                     overwrite=True)
    assert checkpoint.read_bytes() == b"weights"


def test_a_coco_calibration_sets_image_folder_is_an_input(tmp_path: Path) -> None:
    """--output data/val --overwrite would replace the calibration images themselves."""
    from types import SimpleNamespace

    from codetr.export.pipeline import export_inputs
    from codetr.quantization.calibration import CalibrationSet

    data = tmp_path / "data"
    images = (data / "val" / "1.png", data / "val" / "2.png")
    calibration = CalibrationSet(data, "coco", images, 2, data / "annotations" / "instances_val.json")
    inputs = export_inputs(SimpleNamespace(source=None), SimpleNamespace(plugin_library=None, timing_cache=None),
                           calibration=calibration)
    assert data / "val" in inputs and data in inputs and data / "annotations" / "instances_val.json" in inputs
