"""codetr.tensorrt.backend (which TensorRT, the TensorRT-RTX parser trap) and
codetr.tensorrt.inspect (layers of an engine from the inspector or the build log)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codetr.tensorrt.inspect import EngineLayer, engine_layers, layers_from_build_log, onnx_nodes_of

ROOT = Path(__file__).resolve().parent.parent

# Two lines of TensorRT-RTX's VERBOSE "Layers:" report (one message), as logged by a build.
BUILD_LOG = [
    "Local timing cache in use.",
    "Layers:\n"
    "Name: __mye35_0_myl0_0, LayerType: shape_call, Inputs: [], Constants: [], Outputs: [], "
    "TacticName: , StreamId: 0, Metadata: \n"
    "Name: msda0_myl0_1, LayerType: custom_layer, Inputs: [ { Name: value, Dimensions: [-1,30,2,8], "
    "Format: (Linear) Row major linear format }], Constants: [], Outputs: [ { Name: out } ], "
    "TacticName: , StreamId: 0, Metadata: [ONNX Layer: msda0]\n\nI/O Tensors:\n Name: value, IOMode: Input",
]


def test_layers_from_build_log():
    layers = layers_from_build_log(BUILD_LOG)
    assert layers == [
        EngineLayer("__mye35_0_myl0_0", "shape_call", ""),
        EngineLayer("msda0_myl0_1", "custom_layer", "[ONNX Layer: msda0]"),
    ]
    assert [layer.is_plugin for layer in layers] == [False, True]
    assert onnx_nodes_of(layers) == {"msda0"}


class FakeInspector:
    def __init__(self, report: dict) -> None:
        self.report = report

    def get_engine_information(self, layer_format) -> str:
        return json.dumps(self.report)


class FakeEngine:
    def __init__(self, report: dict) -> None:
        self.report = report

    def create_engine_inspector(self) -> FakeInspector:
        return FakeInspector(self.report)


class FakeTrt:
    class LayerInformationFormat:
        JSON = "json"


def test_engine_layers_from_inspector_json():
    # TensorRT's detailed JSON: a fused layer lists every ONNX node, separated by \x1e.
    report = {"Layers": [
        {"Name": "conv", "LayerType": "CaskConvolution", "Metadata": "[ONNX Layer: /conv/Conv]"},
        {"Name": "msda", "LayerType": "PluginV3", "Metadata": "[ONNX Layer: msda0]\x1e[ONNX Layer: msda1]"},
    ], "Bindings": ["value"]}
    layers = engine_layers(FakeTrt, FakeEngine(report))
    assert [layer.is_plugin for layer in layers] == [False, True]
    assert onnx_nodes_of(layers[1:]) == {"msda0", "msda1"}


def test_engine_built_without_detailed_profiling_is_refused():
    with pytest.raises(ValueError, match="ProfilingVerbosity.DETAILED"):
        engine_layers(FakeTrt, FakeEngine({"Layers": ["conv", "msda"], "Bindings": []}))


def check_parsable_in_subprocess(environment: dict[str, str]) -> subprocess.CompletedProcess:
    script = (
        "import tensorrt_rtx_bindings as trt\n"
        "from codetr.tensorrt.backend import check_plugin_nodes_parsable\n"
        "check_plugin_nodes_parsable(trt)\n"
        "print('parsable')\n"
    )
    return subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                          timeout=300)


def test_rtx_parser_trap_is_a_clear_error_and_the_link_dir_fixes_it(rtx_environment):
    import tensorrt_rtx_libs

    from codetr.tensorrt.backend import RTX_CORE_LIBRARY, rtx_link_dir

    if (Path(tensorrt_rtx_libs.__file__).parent / RTX_CORE_LIBRARY).exists():
        pytest.skip(f"this TensorRT-RTX install already ships {RTX_CORE_LIBRARY}")
    link = rtx_link_dir() / RTX_CORE_LIBRARY
    assert link.resolve() == (Path(tensorrt_rtx_libs.__file__).parent / f"{RTX_CORE_LIBRARY}.1").resolve()

    without_link = dict(rtx_environment)
    without_link["LD_LIBRARY_PATH"] = os.pathsep.join(
        entry for entry in rtx_environment["LD_LIBRARY_PATH"].split(os.pathsep)
        if entry and not (Path(entry) / RTX_CORE_LIBRARY).exists()
    )
    refused = check_parsable_in_subprocess(without_link)
    assert refused.returncode != 0
    assert f"LD_LIBRARY_PATH={rtx_link_dir()}" in refused.stderr

    accepted = check_parsable_in_subprocess(rtx_environment)
    assert accepted.returncode == 0, accepted.stderr[-2000:]
    assert accepted.stdout.strip() == "parsable"


def test_probe_explains_packages_that_raise_plain_exceptions(tmp_path: Path, monkeypatch) -> None:
    from codetr.tensorrt.backend import RTX_MODULE, import_tensorrt, tensorrt_unavailable_reason

    for name in ("tensorrt", RTX_MODULE):
        (tmp_path / f"{name}.py").write_text(f"raise Exception('Could not find the libraries of {name}')\n")
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    reason = tensorrt_unavailable_reason()
    assert reason.startswith("no TensorRT Python package: pip install tensorrt")
    assert "tensorrt: Exception: Could not find the libraries of tensorrt" in reason
    assert f"{RTX_MODULE}: Exception: Could not find the libraries of {RTX_MODULE}" in reason
    with pytest.raises(ImportError, match="no TensorRT Python package"):
        import_tensorrt()
