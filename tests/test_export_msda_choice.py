"""``codetr export --msda auto``: our plugin library when built, else NVIDIA's stock
MultiscaleDeformableAttnPlugin_TRT v2 when the TensorRT plugin registry has it, else refused.

No full TensorRT is installed here: a stand-in ``tensorrt`` module answers the plugin-registry
queries (which creators exist); the rule that reads those answers is what is tested, and the
real TensorRT-RTX (which ships no plugin library) is asked where it is installed.
"""

from __future__ import annotations

import argparse
import logging
import types
from pathlib import Path

import pytest

import codetr.export.msda_choice as msda_choice
import codetr.tensorrt.plugin as plugin
from codetr.contract.artifacts import MsdaMode
from codetr.export.msda_choice import choose_msda

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"


def fake_tensorrt(version: str, creators: set[tuple[str, str, str]]) -> types.ModuleType:
    """A ``tensorrt`` module whose plugin registry holds ``creators`` (name, version, namespace)."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=2: None})
    module.init_libnvinfer_plugins = lambda logger, namespace: True
    registry = types.SimpleNamespace(get_creator=lambda name, version, namespace: (
        object() if (name, version, namespace) in creators else None))
    module.get_plugin_registry = lambda: registry
    return module


STOCK_V2 = {("MultiscaleDeformableAttnPlugin_TRT", "2", "")}
STOCK_V1 = {("MultiscaleDeformableAttnPlugin_TRT", "1", "")}


@pytest.fixture
def hidden_library(monkeypatch, tmp_path) -> None:
    """The package's plugin library is not there (as in a pip install without TensorRT headers)."""
    monkeypatch.setattr(plugin, "PACKAGE_LIBRARY", tmp_path / "lib" / "libcodetr_msda_trt.so")


def use_tensorrt(monkeypatch, module: types.ModuleType | None) -> None:
    monkeypatch.setattr(msda_choice, "import_tensorrt", lambda: module)
    monkeypatch.setattr(msda_choice, "tensorrt_unavailable_reason", lambda: None if module else "no TensorRT")


def test_our_plugin_library_wins_when_it_is_built(monkeypatch, tmp_path) -> None:
    library = tmp_path / "libcodetr_msda_trt.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setattr(plugin, "PACKAGE_LIBRARY", library)
    use_tensorrt(monkeypatch, fake_tensorrt("10.13.0", STOCK_V2))
    choice = choose_msda("auto", engine_requested=True)
    assert choice.mode is MsdaMode.PLUGIN and str(library) in choice.reason


def test_stock_plugin_when_the_library_is_hidden(monkeypatch, hidden_library, caplog) -> None:
    use_tensorrt(monkeypatch, fake_tensorrt("10.11.0", STOCK_V2))
    with caplog.at_level(logging.INFO, logger="codetr.export"):
        choice = choose_msda("auto", engine_requested=True)
    assert choice.mode is MsdaMode.NVIDIA
    assert "MultiscaleDeformableAttnPlugin_TRT v2 of TensorRT 10.11.0" in choice.reason
    assert "--msda auto: nvidia" in caplog.text


@pytest.mark.parametrize(("version", "creators", "expected"), [
    ("10.10.0", STOCK_V2, "predates .* TensorRT 10.11.0 added"),
    ("10.12.0", STOCK_V1, "registers no MultiscaleDeformableAttnPlugin_TRT version 2"),
])
def test_a_tensorrt_without_the_stock_plugin_v2_is_refused(monkeypatch, hidden_library, version, creators, expected) -> None:
    use_tensorrt(monkeypatch, fake_tensorrt(version, creators))
    with pytest.raises(ValueError, match=f"no plugin can hold MSDA.*{expected}"):
        choose_msda("auto", engine_requested=True)
    # Without an engine to build, the ONNX keeps our plugin node and says why.
    choice = choose_msda("auto", engine_requested=False)
    assert choice.mode is MsdaMode.PLUGIN and "no plugin can hold MSDA" in choice.reason


def test_tensorrt_rtx_has_no_stock_plugin(hidden_library) -> None:
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) not installed")
    from codetr.tensorrt.backend import import_tensorrt

    if import_tensorrt().__name__ != "tensorrt_rtx_bindings":
        pytest.skip("a full TensorRT is installed: it is preferred over TensorRT-RTX")
    with pytest.raises(ValueError, match="TensorRT-RTX .* ships no plugin library"):
        choose_msda("auto", engine_requested=True)


def test_no_tensorrt_keeps_our_plugin_node(monkeypatch, hidden_library) -> None:
    use_tensorrt(monkeypatch, None)
    assert choose_msda("auto", engine_requested=False).mode is MsdaMode.PLUGIN


def test_explicit_modes_are_kept(monkeypatch, hidden_library) -> None:
    use_tensorrt(monkeypatch, fake_tensorrt("10.13.0", STOCK_V2))
    assert choose_msda("decomposed").mode is MsdaMode.DECOMPOSED
    with pytest.raises(ValueError, match="--msda must be one of auto"):
        choose_msda("grid_sample")


def test_cli_default_is_auto_and_records_the_choice(monkeypatch, hidden_library) -> None:
    import codetr.cli.export as cli_export
    from codetr.config import load_config

    use_tensorrt(monkeypatch, fake_tensorrt("10.11.0", STOCK_V2))
    parser = cli_export.add_parser(argparse.ArgumentParser().add_subparsers())
    args = parser.parse_args(["--output", "unused", "--config", str(TINY), "--artifacts", "exported_program,onnx",
                              "--dtype", "float32", "--device", "cpu", "--height", "64", "--width", "64"])
    assert args.msda == "auto"
    options = cli_export.options_from_args(args, load_config(TINY))
    assert options.msda is MsdaMode.NVIDIA
    assert "stock MultiscaleDeformableAttnPlugin_TRT v2" in options.to_json()["msda_choice"]


def test_artifacts_auto_skips_an_nvidia_engine_an_old_tensorrt_cannot_build(monkeypatch) -> None:
    import codetr.cli.export as cli_export
    from codetr.contract.artifacts import Artifact
    from codetr.contract.postprocess import PostprocessMode

    old = fake_tensorrt("10.8.0", STOCK_V1)
    monkeypatch.setattr(cli_export, "import_tensorrt", lambda: old)
    monkeypatch.setattr(cli_export, "tensorrt_unavailable_reason", lambda: None)
    artifacts, skipped = cli_export._artifacts("auto", MsdaMode.NVIDIA, None, PostprocessMode.NONE)
    assert Artifact.ENGINE not in artifacts
    assert "TensorRT 10.8.0 predates MultiscaleDeformableAttnPlugin_TRT version 2" in skipped[Artifact.ENGINE]
