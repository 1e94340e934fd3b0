"""``codetr compare``: output and per-layer comparison of an ONNX export with the PyTorch model.

The planted error: one Conv's weights scaled by 1.5 in a copy of the ONNX file, found by its
initializer name (PyTorch's parameter name ``model.backbone.layer2.0.conv1.weight``), so the
layer the command must name follows from PyTorch's naming, not from the code under test.
"""

from __future__ import annotations

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
from codetr.export import Artifact, ExportOptions, MsdaMode, export_model
from codetr.models import build_model

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
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
    return folder


def test_an_export_matches_its_model_layer_by_layer(onnx_export, images, capsys) -> None:
    status = main(["compare", str(onnx_export / "model.onnx"), str(TINY), "--images", str(images), "--per-layer"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "every layer is within the tolerance" in printed
    assert f"ok   {PLANTED_LAYER} " in printed


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
