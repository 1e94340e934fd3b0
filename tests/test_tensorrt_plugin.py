"""The MSDA TensorRT plugin library (csrc/tensorrt/msda_plugin), tested on a CPU machine.

- Build: the library compiles from this checkout against the TensorRT headers named by
  TensorRT_INCLUDE_DIR / TENSORRT_ROOT, exports TensorRT's two entry points and links the CUDA
  runtime statically.
- Plugin calls without TensorRT (csrc/tensorrt/harness): fields round-trip through
  serialization, bad fields are refused with a logged reason, the supported type combinations
  are exactly the documented table, shape checks catch disagreeing dimensions.
- TensorRT-RTX (when installed): the library loads into the plugin registry, and plugin-node
  ONNX graphs parse and build into engines whose MSDA nodes are plugin layers.
Skips say what is missing. The kernels' numbers are checked on a GPU by
scripts/check_plugin_enqueue.py.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from codetr.contract.plugin import (
    CODETR_DOMAIN,
    CODETR_DOMAIN_VERSION,
    CODETR_OP_TYPE,
    CODETR_PLUGIN_NAMESPACE,
    CODETR_PLUGIN_VERSION,
)
from codetr.tensorrt.plugin import read_plugin_library_info
from plugin_harness import PluginFieldType, TrtDataType
from codetr_build.tensorrt_plugin import build_tensorrt_plugin

ROOT = Path(__file__).resolve().parent.parent
T = TrtDataType


@pytest.fixture
def plugin(harness):
    handle = harness.create([("im2col_step", PluginFieldType.INT32, 64)])
    assert handle, harness.messages()
    yield handle
    harness.destroy(handle)


def header_version(include_dir: Path) -> tuple[int, int, int]:
    text = (include_dir / "NvInferVersion.h").read_text()
    parts = [
        int(re.search(rf"#define TRT_{part}_ENTERPRISE (\d+)", text).group(1))
        for part in ("MAJOR", "MINOR", "PATCH")
    ]
    return tuple(parts)


# ----------------------------------------------------------------------------------------------
# The library file.


def test_build_without_headers_returns_none_and_says_why(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TensorRT_INCLUDE_DIR", raising=False)
    monkeypatch.setenv("TENSORRT_ROOT", str(tmp_path / "nowhere"))
    assert build_tensorrt_plugin(tmp_path, tmp_path / "lib.so") is None
    assert "TensorRT_INCLUDE_DIR" in capsys.readouterr().out
    assert not (tmp_path / "lib.so").exists()


def test_library_identity_and_header_version(plugin_library, include_dir):
    info = read_plugin_library_info(plugin_library)
    assert (info.name, info.version, info.namespace) == (
        CODETR_OP_TYPE, CODETR_PLUGIN_VERSION, CODETR_PLUGIN_NAMESPACE,
    )
    assert info.tensorrt_headers == header_version(include_dir)


def test_library_exports_entry_points_and_links_cudart_statically(plugin_library):
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) not installed")
    dynamic = subprocess.run(
        ["readelf", "--dyn-syms", "--dynamic", "--wide", str(plugin_library)],
        check=True, capture_output=True, text=True,
    ).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    assert not [name for name in needed if "cudart" in name or "nvinfer" in name], needed
    defined = {
        line.split()[-1]
        for line in dynamic.splitlines()
        if " GLOBAL " in line and " DEFAULT " in line and " UND " not in line
    }
    assert {"getCreators", "setLoggerFinder", "codetr_msda_plugin_info"} <= defined
    # Hidden visibility: no kernel or C++ symbol leaks into TensorRT's process.
    assert not [name for name in defined if name.startswith("_Z")]


def test_plugin_library_path_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="plugin library not found"):
        read_plugin_library_info(tmp_path / "libmissing.so")


# ----------------------------------------------------------------------------------------------
# Plugin calls through the harness (no TensorRT).


def test_identity_of_created_plugin(harness, plugin):
    assert harness.identity(plugin) == (CODETR_OP_TYPE, CODETR_PLUGIN_VERSION, CODETR_PLUGIN_NAMESPACE)


@pytest.mark.parametrize("field_type", [PluginFieldType.INT32, PluginFieldType.INT64])
def test_im2col_step_round_trips_through_serialization(harness, field_type):
    plugin = harness.create([("im2col_step", field_type, 17)])
    assert plugin, harness.messages()
    assert harness.serialized_fields(plugin) == {"im2col_step": (PluginFieldType.INT32, 17)}
    restored = harness.roundtrip(plugin)
    assert restored, harness.messages()
    assert harness.serialized_fields(restored) == {"im2col_step": (PluginFieldType.INT32, 17)}
    copy = harness.clone(restored)
    assert harness.serialized_fields(copy) == {"im2col_step": (PluginFieldType.INT32, 17)}
    for handle in (plugin, restored, copy):
        harness.destroy(handle)


def test_missing_im2col_step_defaults_to_64(harness):
    plugin = harness.create([])
    assert harness.serialized_fields(plugin) == {"im2col_step": (PluginFieldType.INT32, 64)}
    harness.destroy(plugin)


@pytest.mark.parametrize(
    "fields, message",
    [
        ([("im2col", PluginFieldType.INT32, 64)], "unknown field 'im2col'"),
        ([("im2col_step", PluginFieldType.INT32, 0)], "im2col_step must be one positive"),
        ([("im2col_step", PluginFieldType.INT64, -3)], "im2col_step must be one positive"),
        ([("im2col_step", PluginFieldType.INT64, 2**40)], "im2col_step must be one positive"),
        ([("im2col_step", PluginFieldType.FLOAT32, 64)], "im2col_step must be one positive"),
    ],
)
def test_bad_fields_are_refused_with_a_logged_reason(harness, fields, message):
    harness.messages()
    assert harness.create(fields) is None
    assert message in harness.messages()


# The documented formats: (value, locations/weights) pairs; output = value's type.
SUPPORTED_PAIRS = {
    (T.FLOAT, T.FLOAT), (T.HALF, T.HALF), (T.HALF, T.FLOAT), (T.BF16, T.BF16), (T.BF16, T.FLOAT),
}


def test_supported_type_combinations_are_exactly_the_documented_table(harness, plugin):
    floats = [T.FLOAT, T.HALF, T.BF16, T.INT32]
    indices = [T.INT64, T.INT32]
    for value, shapes, starts, locations, weights, output in itertools.product(
        floats, indices, indices, floats, floats, floats
    ):
        expected = (
            (value, locations) in SUPPORTED_PAIRS
            and weights == locations
            and output == value
            and shapes == T.INT64
            and starts == T.INT64
        )
        combination = [value, shapes, starts, locations, weights, output]
        assert harness.supports(plugin, combination) == expected, combination


@pytest.mark.parametrize("value_type", [T.FLOAT, T.HALF, T.BF16])
def test_output_type_is_value_type(harness, plugin, value_type):
    assert harness.output_type(plugin, [value_type, T.INT64, T.INT64, T.FLOAT, T.FLOAT]) == value_type


def test_integer_value_type_is_refused(harness, plugin):
    harness.messages()
    assert harness.output_type(plugin, [T.INT32, T.INT64, T.INT64, T.FLOAT, T.FLOAT]) is None
    assert "value must be float32, float16 or bfloat16" in harness.messages()


# B=2, S=30 (levels 4x6 and 2x3), M=4, D=8, Q=5, L=2, P=3.
GOOD_SHAPES = [(2, 30, 4, 8), (2, 2), (2,), (2, 5, 4, 2, 3, 2), (2, 5, 4, 2, 3), (2, 5, 32)]
FLOAT_TYPES = [T.FLOAT, T.INT64, T.INT64, T.FLOAT, T.FLOAT, T.FLOAT]


def test_consistent_shapes_are_accepted(harness, plugin):
    assert harness.on_shape_change(plugin, FLOAT_TYPES, GOOD_SHAPES) == 0


@pytest.mark.parametrize(
    "tensor, shape, message",
    [
        (0, (2, 30, 32), "value must have rank 4"),
        (3, (2, 5, 4, 2, 3), "sampling_locations must have rank 6"),
        (3, (3, 5, 4, 2, 3, 2), "sampling_locations.shape[0] = 3 must equal value.shape[0] = 2"),
        (3, (2, 5, 2, 2, 3, 2), "sampling_locations.shape[2] = 2 must equal value.shape[2] = 4"),
        (3, (2, 5, 4, 2, 3, 3), "sampling_locations.shape[5] must be 2, got 3"),
        (1, (3, 2), "spatial_shapes.shape[0] = 3 must equal sampling_locations.shape[3] = 2"),
        (1, (2, 3), "spatial_shapes.shape[1] must be 2, got 3"),
        (2, (1,), "level_start_index.shape[0] = 1 must equal sampling_locations.shape[3] = 2"),
        (4, (2, 5, 4, 2, 4), "attention_weights.shape[4] = 4 must equal sampling_locations.shape[4] = 3"),
        (4, (2, 6, 4, 2, 3), "attention_weights.shape[1] = 6 must equal sampling_locations.shape[1] = 5"),
    ],
)
def test_inconsistent_shapes_are_refused_with_a_logged_reason(harness, plugin, tensor, shape, message):
    shapes = list(GOOD_SHAPES)
    shapes[tensor] = shape
    harness.messages()
    assert harness.on_shape_change(plugin, FLOAT_TYPES, shapes) != 0
    assert message in harness.messages()


# ----------------------------------------------------------------------------------------------
# TensorRT-RTX: registry, ONNX parsing and engine build on CPU.

HEADS, CHANNELS, QUERIES, POINTS = 2, 8, 5, 3
LEVEL_SHAPES = [(4, 6), (2, 3)]
NUM_VALUES = sum(h * w for h, w in LEVEL_SHAPES)
ONNX_TYPES = {
    "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16,
}


def msda_node(name: str, inputs: list[str], output: str, **attributes) -> onnx.NodeProto:
    attributes = {
        "im2col_step": 64,
        "plugin_version": CODETR_PLUGIN_VERSION,
        "plugin_namespace": CODETR_PLUGIN_NAMESPACE,
        **attributes,
    }
    attributes = {key: value for key, value in attributes.items() if value is not None}
    return helper.make_node(CODETR_OP_TYPE, inputs, [output], name=name, domain=CODETR_DOMAIN, **attributes)


def msda_model(
    value_type: str = "float32",
    location_type: str = "float32",
    num_nodes: int = 1,
    value_shape: tuple | None = None,
    **attributes,
) -> onnx.ModelProto:
    """value -> MSDA -> (+ value re-projected) ... : ``num_nodes`` plugin nodes chained through
    standard ops, batch dynamic ("B"), spatial_shapes/level_start_index as int64 initializers."""
    levels = len(LEVEL_SHAPES)
    shapes = np.array(LEVEL_SHAPES, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(shapes.prod(1))[:-1]]).astype(np.int64)
    value_shape = value_shape or ("B", NUM_VALUES, HEADS, CHANNELS)
    inputs = [
        helper.make_tensor_value_info("value", ONNX_TYPES[value_type], list(value_shape)),
        helper.make_tensor_value_info(
            "sampling_locations", ONNX_TYPES[location_type], ["B", QUERIES, HEADS, levels, POINTS, 2]
        ),
        helper.make_tensor_value_info(
            "attention_weights", ONNX_TYPES[location_type], ["B", QUERIES, HEADS, levels, POINTS]
        ),
    ]
    nodes, previous = [], None
    for index in range(num_nodes):
        output = f"msda_out{index}"
        nodes.append(
            msda_node(
                f"msda{index}",
                ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"],
                output,
                **attributes,
            )
        )
        if previous is not None:
            nodes.append(helper.make_node("Add", [previous, output], [f"sum{index}"], name=f"add{index}"))
            output = f"sum{index}"
        previous = output
    nodes.append(helper.make_node("Identity", [previous], ["output"], name="result"))
    graph = helper.make_graph(
        nodes, "msda_plugin_test", inputs,
        [helper.make_tensor_value_info("output", ONNX_TYPES[value_type], ["B", QUERIES, HEADS * CHANNELS])],
        initializer=[
            numpy_helper.from_array(shapes, "spatial_shapes"),
            numpy_helper.from_array(starts, "level_start_index"),
        ],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CODETR_DOMAIN, CODETR_DOMAIN_VERSION)],
    )


def batch_profile(model: onnx.ModelProto, batches=(1, 2, 4)) -> dict[str, list[list[int]]]:
    profile = {}
    for tensor in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.type.tensor_type.shape.dim]
        profile[tensor.name] = [[batch if d is None else d for d in dims] for batch in batches]
    return profile


class EngineCase(NamedTuple):
    model: onnx.ModelProto
    profile: dict | None = None  # None: batch 1..4 (batch_profile)
    embed_plugin: bool = False


def build_engines(cases: dict[str, EngineCase], environment: dict[str, str], plugin_library: Path,
                  folder: Path) -> dict[str, dict]:
    """Build every case in one worker process (see tests/tensorrt_build_worker.py); the
    reports, by case name, also give the engine file as "engine"."""
    requests = []
    for index, case in enumerate(cases.values()):
        onnx_path = folder / f"case{index}.onnx"
        onnx.save(case.model, onnx_path)
        requests.append({
            "onnx": str(onnx_path),
            "plugin": str(plugin_library),
            "profile": case.profile if case.profile is not None else batch_profile(case.model),
            "engine": str(folder / f"case{index}.engine"),
            "embed_plugin": case.embed_plugin,
        })
    completed = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "tensorrt_build_worker.py"), json.dumps(requests)],
        env=environment, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    reports = json.loads(completed.stdout.splitlines()[-1])
    return {
        name: {**report, "engine": Path(request["engine"])}
        for name, report, request in zip(cases, reports, requests)
    }


DTYPE_PAIRS = [("float32", "float32"), ("float16", "float16"), ("float16", "float32"),
               ("bfloat16", "bfloat16"), ("bfloat16", "float32")]
CASES = {
    **{f"{value}/{location}": EngineCase(msda_model(value, location)) for value, location in DTYPE_PAIRS},
    "three nodes": EngineCase(msda_model(num_nodes=3)),
    "embedded": EngineCase(msda_model(), embed_plugin=True),
    "im2col_step 0": EngineCase(msda_model(im2col_step=0)),
    "im2col_step -64": EngineCase(msda_model(im2col_step=-64)),
    "plugin_version 2": EngineCase(msda_model(plugin_version="2")),
    "value rank 3": EngineCase(msda_model(value_shape=("B", NUM_VALUES, HEADS * CHANNELS))),
}


@pytest.fixture(scope="module")
def reports(rtx_environment, plugin_library, tmp_path_factory) -> dict[str, dict]:
    return build_engines(CASES, rtx_environment, plugin_library, tmp_path_factory.mktemp("engines"))


def test_library_loads_into_tensorrt_rtx_registry(rtx_environment, plugin_library):
    script = (
        "import sys, tensorrt_rtx_bindings as trt\n"
        "from codetr.tensorrt.plugin import register_plugin_library\n"
        "register_plugin_library(trt, sys.argv[1])\n"
        "creator = trt.get_plugin_registry().get_creator(sys.argv[2], sys.argv[3], sys.argv[4])\n"
        "print(creator.name, creator.plugin_version, creator.plugin_namespace,"
        " [(f.name, f.type.name) for f in creator.field_names])\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(plugin_library), CODETR_OP_TYPE, CODETR_PLUGIN_VERSION,
         CODETR_PLUGIN_NAMESPACE],
        env=rtx_environment, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert completed.stdout.strip().splitlines()[-1] == (
        f"{CODETR_OP_TYPE} {CODETR_PLUGIN_VERSION} {CODETR_PLUGIN_NAMESPACE} [('im2col_step', 'INT32')]"
    )


@pytest.mark.parametrize("case", [f"{value}/{location}" for value, location in DTYPE_PAIRS])
def test_plugin_onnx_builds_into_engine_with_plugin_layer(reports, case):
    report = reports[case]
    assert report["parsed"], report["parser_errors"]
    assert ["msda0", "PLUGIN_V3"] in report["network_layers"]
    assert report["engine_bytes"], report["errors"]
    plugin_layers = [layer for layer in report["engine_layers"] if layer[1] == "custom_layer"]
    assert len(plugin_layers) == 1
    assert "[ONNX Layer: msda0]" in plugin_layers[0][2]


def test_every_msda_node_becomes_a_plugin_layer(reports):
    report = reports["three nodes"]
    assert report["engine_bytes"], report["errors"]
    network_plugins = sorted(name for name, kind in report["network_layers"] if kind == "PLUGIN_V3")
    assert network_plugins == ["msda0", "msda1", "msda2"]
    engine_plugins = [layer for layer in report["engine_layers"] if layer[1] == "custom_layer"]
    sources = sorted(re.search(r"ONNX Layer: (msda\d)", layer[2]).group(1) for layer in engine_plugins)
    assert sources == ["msda0", "msda1", "msda2"]


def test_plugin_library_can_be_embedded_in_the_engine(reports, plugin_library):
    plain, embedded = reports["float32/float32"], reports["embedded"]
    assert embedded["engine_bytes"], embedded["errors"]
    # The plan carries the whole library: it grows by at least the library's size.
    assert embedded["engine_bytes"] - plain["engine_bytes"] >= plugin_library.stat().st_size
    assert plugin_library.read_bytes()[:4096] in embedded["engine"].read_bytes()


@pytest.mark.parametrize("case", ["im2col_step 0", "im2col_step -64"])
def test_wrong_attributes_fail_the_parse_cleanly(reports, case):
    report = reports[case]
    assert not report["parsed"]
    assert any("im2col_step must be one positive" in error for error in report["errors"]), report["errors"]


def test_wrong_plugin_version_is_not_found(reports):
    report = reports["plugin_version 2"]
    assert not report["parsed"]
    assert report["parser_errors"]


def test_wrong_value_rank_fails_the_build_with_the_plugins_reason(reports):
    report = reports["value rank 3"]
    assert report["engine_bytes"] is None
    assert any("value must have rank 4" in error for error in report["errors"]), report["errors"]


def test_tiny_co_dino_plugin_onnx_builds_with_a_plugin_layer_per_msda_node(
    rtx_environment, plugin_library, tmp_path_factory
):
    import torch

    from codetr.config import load_config
    from codetr.export import Artifact, ExportOptions, MsdaMode, export_model
    from codetr.models import build_model

    config = load_config(ROOT / "codetr" / "configs" / "tiny.toml")
    options = ExportOptions(dtype=torch.float32, height=64, width=96, msda=MsdaMode.PLUGIN,
                            artifacts=(Artifact.ONNX,))
    folder = tmp_path_factory.mktemp("tiny_plugin")
    result = export_model(build_model(config), config, options, folder)
    model = onnx.load(str(result.files[Artifact.ONNX]))
    msda_nodes = {node.name for node in model.graph.node if node.op_type == CODETR_OP_TYPE}
    assert msda_nodes

    report = build_engines({"tiny": EngineCase(model, profile={})}, rtx_environment, plugin_library, folder)["tiny"]
    assert report["engine_bytes"], report["errors"]
    plugin_sources = {
        source
        for name, kind, metadata in report["engine_layers"] if kind == "custom_layer"
        for source in re.findall(r"ONNX Layer: ([^\]]+)", metadata)
    }
    assert plugin_sources == msda_nodes
