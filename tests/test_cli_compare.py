"""``codetr compare``: output and per-layer comparison of an ONNX export with the PyTorch model.

The planted error: one Conv's weights scaled by 1.5 in a copy of the ONNX file, found by its
initializer name (PyTorch's parameter name ``model.backbone.layer2.0.conv1.weight``), so the
layer the command must name follows from PyTorch's naming, not from the code under test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from codetr.cli import main
from codetr.config import load_config
from codetr.contract.metadata import file_sha256
from codetr.export import Artifact, ExportOptions, MsdaMode, export_model
from codetr.models import build_model

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
PLANTED_PARAMETER = "model.backbone.layer2.0.conv1.weight"
PLANTED_LAYER = "backbone.layer2.0.conv1"


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> Path:
    pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy)")
    config = load_config(TINY)
    output = tmp_path_factory.mktemp("compare") / "export"
    options = ExportOptions(dtype=torch.float32, height=64, width=96, msda=MsdaMode.DECOMPOSED, artifacts=(Artifact.ONNX,))
    export_model(build_model(config, seed=0), config, options, output)
    return output


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for index, size in enumerate([(50, 80), (60, 90)]):
        Image.fromarray(generator.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def planted_export(onnx_export, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("planted") / "export"
    shutil.copytree(onnx_export, folder)
    model = onnx.load(str(folder / "model.onnx"))
    (weight,) = [tensor for tensor in model.graph.initializer if tensor.name == PLANTED_PARAMETER]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(model, str(folder / "model.onnx"))
    # As if the export had written the planted model: the loader checks the recorded size and hash.
    metadata = json.loads((folder / "metadata.json").read_text())
    for stage in metadata["stages"]:
        if stage["file"] == "model.onnx":
            stage.update(bytes=(folder / "model.onnx").stat().st_size, sha256=file_sha256(folder / "model.onnx"))
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_an_export_matches_its_model_layer_by_layer(onnx_export, images, capsys) -> None:
    status = main(["compare", str(onnx_export / "model.onnx"), str(TINY), "--images", str(images), "--per-layer"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "every layer is within the tolerance" in printed
    assert f"ok   {PLANTED_LAYER} " in printed


def test_the_model_given_first_runs_on_the_exports_input_size(onnx_export, tmp_path, capsys) -> None:
    # square images: the config's own pre-processing would give 64x64, which the 64x96 export refuses
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "square.png")
    status = main(["compare", str(TINY), str(onnx_export / "model.onnx"), "--images", str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "1 image(s)" in captured.out


def test_a_planted_error_is_found_and_its_layer_named(planted_export, images, capsys) -> None:
    status = main(["compare", str(planted_export / "model.onnx"), str(TINY), "--images", str(images), "--per-layer"])
    printed = capsys.readouterr().out
    assert status == 1
    assert f"first layer whose error exceeds the tolerance: {PLANTED_LAYER}\n" in printed
    assert "FAIL" in printed.split("per layer")[0], "the final outputs differ too"


def test_per_layer_needs_an_onnx_file_and_a_config(onnx_export, images, capsys) -> None:
    status = main(["compare", str(TINY), str(TINY), "--images", str(images), "--per-layer"])
    assert status == 2
    assert "--per-layer compares an ONNX file with a config TOML" in capsys.readouterr().err


def test_unreadable_images_are_named_and_skipped(images, tmp_path, capsys) -> None:
    """Like infer and eval: a broken file costs only itself; --max-images counts readable images."""
    pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy)")
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "0.jpg").write_bytes(b"\x89PNG broken")
    status = main(["compare", str(TINY), str(TINY), "--images", str(folder), "--max-images", "1"])
    captured = capsys.readouterr()
    assert status == 0  # the same model twice
    assert f"skipped: cannot decode image {folder / '0.jpg'}" in captured.err
    assert "1 image(s), mean error" in captured.out
    (folder / "0.png").write_bytes(b"")
    (folder / "1.png").write_bytes(b"GIF89a")
    assert main(["compare", str(TINY), str(TINY), "--images", str(folder)]) == 2
    assert f"--images: none of the 3 image(s) in {folder} could be read" in capsys.readouterr().err


def test_models_of_different_classes_are_refused(tmp_path, images, capsys) -> None:
    """Labels index different class lists: the outputs cannot agree, so no FAIL table but the reason."""
    six_classes = tmp_path / "tiny6.toml"
    six_classes.write_text(TINY.read_text().replace('"cup"]', '"cup", "bus"]').replace("num_classes = 5", "num_classes = 6"))
    status = main(["compare", str(TINY), str(six_classes), "--images", str(images)])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.splitlines()[:3] == [
        f"error: {TINY} and {six_classes} do not detect the same classes, so their outputs cannot agree:",
        f"  {TINY} (5): ['cat', 'dog', 'car', 'tree', 'cup']",
        f"  {six_classes} (6): ['cat', 'dog', 'car', 'tree', 'cup', 'bus']",
    ]


def test_random_weights_are_warned_about_like_every_command(onnx_export, images, caplog, capsys) -> None:
    status = main(["compare", str(onnx_export / "model.onnx"), str(TINY), "--images", str(images), "--max-images", "1"])
    assert status == 0, capsys.readouterr().err
    assert "NO --checkpoint GIVEN: using DETERMINISTIC RANDOM WEIGHTS (seed 0)" in caplog.text
    assert f"{onnx_export / 'model.onnx'} was exported without --checkpoint: RANDOM WEIGHTS" in caplog.text


def test_a_checkpoint_no_side_uses_is_refused(onnx_export, images, tmp_path, capsys) -> None:
    checkpoint = tmp_path / "latest.pth"
    checkpoint.write_bytes(b"never read")
    model = str(onnx_export / "model.onnx")
    assert main(["compare", model, model, "--images", str(images), "--checkpoint", str(checkpoint)]) == 2
    assert "--checkpoint applies to a config side only" in capsys.readouterr().err
