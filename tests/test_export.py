"""Exporting the tiny Co-DINO on CPU: every artifact gives the detections of PyTorch eager.

Each export runs once per module (fixtures) and several tests read it. Reference: the eager
model (``CoDINO.forward``) on the same inputs. Tolerances:

- ExportedProgram vs eager, any dtype: identical up to 1e-5 (same graph and CPU kernels).
- ONNX Runtime vs eager, float32: scores 1e-5, boxes 1e-2 px (ONNX Runtime fuses and reorders
  float32 arithmetic; boxes are in pixels of a ~100-200 px input).
- float16 and bfloat16: real ONNX files are written (checked by onnx.checker, element types and
  opset read back); running them is the ONNX Runtime runner's business (tests/test_runtime*).
Ranks whose score is within the score tolerance of a neighbour may swap, so labels and boxes
are compared only at ranks with a clear score gap.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import codetr.runtime.onnxruntime  # noqa: F401  registers its Python ops before any session exists
from codetr.cli import main
from codetr.config import load_config
from codetr.contract.metadata import read_metadata
from codetr.contract.plugin import (
    CODETR_DOMAIN,
    CODETR_OP_TYPE,
    NVIDIA_DOMAIN,
    NVIDIA_OP_TYPE,
)
from codetr.export import Artifact, DimRange, ExportOptions, MsdaMode, export_model
from codetr.export.nvidia_plugin import replace_with_nvidia_plugin
from codetr.models import Detections, build_model
from codetr.preprocess import make_batch
from codetr.runtime import load_runtime

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
STATIC_SIZE = (64, 96)


def register_stock_msda_emulation() -> str | None:
    """An onnxruntime-extensions op with the semantics of NVIDIA's MultiscaleDeformableAttnPlugin_TRT
    (int32 shapes, output [N, Lq, M, D]); None without onnxruntime-extensions.

    Registered when this module is imported: onnxruntime-extensions breaks sessions that exist
    when a new Python op is registered (see codetr.runtime.onnxruntime).
    """
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError:
        return None
    floats, ints = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32

    @onnx_op(op_type="StockMsdaEmulation", inputs=[floats, ints, ints, floats, floats], outputs=[floats])
    def stock_msda(value, spatial_shapes, level_start_index, locations, weights):
        assert spatial_shapes.dtype == np.int32 and level_start_index.dtype == np.int32
        output = torch.ops.codetr.msda(
            torch.from_numpy(value), torch.from_numpy(spatial_shapes).long(),
            torch.from_numpy(level_start_index).long(), torch.from_numpy(locations), torch.from_numpy(weights),
        )
        return output.view(value.shape[0], locations.shape[1], *value.shape[2:]).numpy()

    return "StockMsdaEmulation"


STOCK_MSDA_EMULATION = register_stock_msda_emulation()


@pytest.fixture(scope="module")
def config():
    return load_config(TINY)


@pytest.fixture(scope="module")
def eager(config):
    """``eager(images, image_sizes, dtype=float32)``: the PyTorch model's detections (the reference)."""
    models = {}

    def run(images: torch.Tensor, image_sizes: torch.Tensor, dtype: torch.dtype = torch.float32) -> Detections:
        if dtype not in models:
            models[dtype] = build_model(config).to(dtype)
        with torch.no_grad():
            return models[dtype](images, image_sizes)

    return run


def make_inputs(height: int, width: int, valid: tuple[int, int] | None = None, seed: int = 0):
    """images [1, 3, H, W] float32 0-255 and image_sizes [1, 2] (the valid region)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (1, 3, height, width), generator=generator).float()
    return images, torch.tensor([valid or (height, width)])


def assert_detections_close(actual: Detections, expected: Detections, score_atol: float, box_atol: float) -> None:
    scores, expected_scores = actual.scores.float().cpu(), expected.scores.float().cpu()
    assert actual.boxes.shape == expected.boxes.shape and actual.labels.dtype == torch.int64
    torch.testing.assert_close(scores, expected_scores, atol=score_atol, rtol=0)
    gaps = expected_scores.diff(dim=1).abs()
    clear = torch.ones_like(expected_scores, dtype=torch.bool)
    clear[:, 1:] &= gaps > 2 * score_atol
    clear[:, :-1] &= gaps > 2 * score_atol
    assert clear.float().mean() > 0.5, "too many near-ties for a meaningful comparison"
    assert torch.equal(actual.labels.cpu()[clear], expected.labels.cpu()[clear])
    torch.testing.assert_close(actual.boxes.float().cpu()[clear], expected.boxes.float().cpu()[clear],
                               atol=box_atol, rtol=0)


# ---------------------------------------------------------------- static ExportedProgram via the CLI


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory) -> Path:
    """codetr export --msda plugin --artifacts exported_program, float32, 64x96."""
    output = tmp_path_factory.mktemp("cli")
    status = main(["export", "--config", str(TINY), "--dtype", "float32", "--height", "64", "--width", "96",
                   "--msda", "plugin", "--artifacts", "exported_program", "--device", "cpu",
                   "--output", str(output)])
    assert status == 0
    return output


def test_cli_writes_the_requested_files(cli_export: Path) -> None:
    assert sorted(path.name for path in cli_export.iterdir()) == ["metadata.json", "model.pt2"]


def test_metadata_describes_the_model(cli_export: Path, config) -> None:
    metadata = json.loads((cli_export / "metadata.json").read_text())
    assert metadata["format"] == "codetr-export/2"
    assert metadata["model"]["class_names"] == list(config.class_names)
    assert metadata["model"]["random_weights"] is True
    assert metadata["input"] == {"batch_size": 1, "height": {"min": 64, "opt": 64, "max": 64},
                                 "width": {"min": 96, "opt": 96, "max": 96}, "multiple": 32, "dtype": "float32"}
    assert metadata["inputs"] == [
        {"name": "images", "shape": [1, 3, 64, 96], "dtype": "float32",
         "description": metadata["inputs"][0]["description"]},
        {"name": "image_sizes", "shape": [1, 2], "dtype": "int64",
         "description": metadata["inputs"][1]["description"]},
    ]
    k = config.model.max_per_img
    assert [(o["name"], o["shape"], o["dtype"]) for o in metadata["outputs"]] == [
        ("boxes", [1, k, 4], "float32"), ("scores", [1, k], "float32"), ("labels", [1, k], "int64"),
    ]
    assert metadata["precision"]["dtype"] == "float32" and metadata["precision"]["allow_tf32"] is False
    assert metadata["options"]["msda"] == "plugin" and metadata["msda"] == "plugin"
    assert metadata["onnx"] is None
    assert metadata["files"] == {"exported_program": "model.pt2"}
    assert metadata["skipped"] == {"onnx": "not requested", "engine": "not requested", "aoti": "not requested",
                                   "torch_tensorrt": "not requested"}
    assert [stage["stage"] for stage in metadata["stages"]] == ["torch.export", "save exported program"]
    assert metadata["versions"]["torch"] == torch.__version__


def test_metadata_preprocessing_produces_the_exported_input(cli_export: Path) -> None:
    """Images of any size and orientation, pre-processed as metadata.json says, are exactly what
    the export takes (the tiny config's own pre-processing pads portrait images to 96x64)."""
    metadata = read_metadata(cli_export / "metadata.json")
    preprocess = load_config(TINY).preprocess.__class__(**{
        key: tuple(value) if isinstance(value, list) else value for key, value in metadata.preprocessing.items()
    })
    for height, width in [(480, 640), (640, 480), (20, 20), (1000, 90), (64, 96)]:
        batch = make_batch([torch.zeros(3, height, width, dtype=torch.uint8)], preprocess)
        assert tuple(batch.images.shape) == (1, 3, 64, 96), (height, width)
        metadata.check_images(batch.images.shape)
    assert tuple(make_batch([torch.zeros(3, 640, 480, dtype=torch.uint8)], load_config(TINY).preprocess)
                 .images.shape) != (1, 3, 64, 96)


def test_exported_program_matches_eager(cli_export: Path, config, eager) -> None:
    runtime = load_runtime(cli_export / "model.pt2")
    msda_nodes = [node for node in runtime.program.graph.nodes if node.target is torch.ops.codetr.msda.default]
    assert len(msda_nodes) == config.model.transformer.encoder_layers + config.model.transformer.decoder_layers
    images, image_sizes = make_inputs(*STATIC_SIZE, valid=(50, 80))
    actual = runtime(images, image_sizes)
    assert_detections_close(actual, eager(images, image_sizes), score_atol=1e-5, box_atol=1e-5)


# ---------------------------------------------------------------- dynamic height and width


DYNAMIC = ExportOptions(dtype=torch.float32, height=128, width=128, dynamic_height=DimRange(128, 192),
                        dynamic_width=DimRange(128, 256), msda=MsdaMode.PLUGIN,
                        artifacts=(Artifact.EXPORTED_PROGRAM, Artifact.ONNX))


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory, config) -> Path:
    output = tmp_path_factory.mktemp("dynamic")
    export_model(build_model(config), config, DYNAMIC, output)
    return output


@pytest.fixture(scope="module")
def dynamic_runtimes(dynamic_export: Path):
    """Loaded once: the ExportedProgram and (if onnxruntime-extensions is installed) ONNX Runtime."""
    runtimes = {"exported_program": load_runtime(dynamic_export / "model.pt2")}
    try:
        import onnxruntime_extensions  # noqa: F401
    except ImportError:
        return runtimes
    runtimes["onnxruntime"] = load_runtime(dynamic_export / "model.onnx")
    return runtimes


@pytest.fixture(scope="module")
def dynamic_decomposed_runtimes(tmp_path_factory, config):
    """The DYNAMIC export with MSDA decomposed: the reference path must trace the level sizes
    symbolically (no ``.tolist()`` of a tensor) for the graph to accept other sizes."""
    output = tmp_path_factory.mktemp("dynamic_decomposed")
    export_model(build_model(config), config, dataclasses.replace(DYNAMIC, msda=MsdaMode.DECOMPOSED), output)
    return {"exported_program": load_runtime(output / "model.pt2"), "onnxruntime": load_runtime(output / "model.onnx")}


def test_dynamic_onnx_has_symbolic_height_and_width(dynamic_export: Path) -> None:
    model = onnx.load(str(dynamic_export / "model.onnx"))
    images = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in images] == [1, 3, "height", "width"]
    metadata = json.loads((dynamic_export / "metadata.json").read_text())
    assert metadata["inputs"][0]["shape"] == [1, 3, "height", "width"]
    assert metadata["input"]["height"] == {"min": 128, "opt": 128, "max": 192}
    assert metadata["input"]["width"] == {"min": 128, "opt": 128, "max": 256}
    assert metadata["preprocessing"]["pad_size"] is None and metadata["preprocessing"]["size_divisor"] == 32
    assert metadata["onnx"] == {"opset": 18, "ir_version": 10}
    assert metadata["options"]["dynamic_width"] == {"min": 128, "max": 256}


@pytest.mark.parametrize("runtimes", ["dynamic_runtimes", "dynamic_decomposed_runtimes"])
@pytest.mark.parametrize("size", [(128, 256), (192, 160)])
def test_dynamic_exports_run_at_other_sizes(request, eager, runtimes: str, size: tuple[int, int]) -> None:
    runtimes = request.getfixturevalue(runtimes)
    images, image_sizes = make_inputs(*size, valid=(size[0] - 16, size[1]), seed=4)
    expected = eager(images, image_sizes)
    assert_detections_close(runtimes["exported_program"](images, image_sizes), expected,
                            score_atol=1e-5, box_atol=1e-5)
    if "onnxruntime" not in runtimes:
        pytest.skip("onnxruntime-extensions not installed: the plugin node cannot run in ONNX Runtime")
    assert_detections_close(runtimes["onnxruntime"](images, image_sizes), expected,
                            score_atol=1e-5, box_atol=1e-2)


def test_dynamic_exported_program_rejects_sizes_outside_the_range(dynamic_runtimes) -> None:
    with pytest.raises(Exception, match="height|size|range|<="):
        dynamic_runtimes["exported_program"](*make_inputs(256, 128))


def test_plugin_onnx_follows_the_contract(dynamic_export: Path, config) -> None:
    model = onnx.load(str(dynamic_export / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10
    assert {(opset.domain, opset.version) for opset in model.opset_import} >= {("", 18), (CODETR_DOMAIN, 1)}
    nodes = [node for node in model.graph.node if node.domain == CODETR_DOMAIN]
    transformer = config.model.transformer
    assert len(nodes) == transformer.encoder_layers + transformer.decoder_layers
    types = {value.name: value.type.tensor_type for value in model.graph.value_info}
    for node in nodes:
        assert node.op_type == CODETR_OP_TYPE and len(node.input) == 5 and len(node.output) == 1
        attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
        assert attributes == {"im2col_step": 64, "plugin_version": b"1", "plugin_namespace": b"codetr"}
        value, shapes, starts, locations, weights = (types[name] for name in node.input)
        heads, levels, points = transformer.num_heads, transformer.num_levels, transformer.num_points
        assert [d.dim_value for d in value.shape.dim][2:] == [heads, transformer.embed_dims // heads]
        assert shapes.elem_type == starts.elem_type == onnx.TensorProto.INT64
        assert [d.dim_value for d in shapes.shape.dim] == [levels, 2]
        assert [d.dim_value for d in locations.shape.dim][2:] == [heads, levels, points, 2]
        assert [d.dim_value for d in weights.shape.dim][2:] == [heads, levels, points]
    assert [value.name for value in model.graph.input] == ["images", "image_sizes"]
    assert [value.name for value in model.graph.output] == ["boxes", "scores", "labels"]


def test_nvidia_interop_graph_structure(dynamic_export: Path) -> None:
    """The stock-plugin form (no runtime here has MultiscaleDeformableAttnPlugin_TRT): each codetr
    node becomes int32 casts, the plugin node with output [N, Lq, M, D] and a reshape to M*D."""
    original = onnx.load(str(dynamic_export / "model.onnx"))
    model = replace_with_nvidia_plugin(original)
    onnx.checker.check_model(model, full_check=True)
    assert not [node for node in model.graph.node if node.domain == CODETR_DOMAIN]
    assert CODETR_DOMAIN not in {opset.domain for opset in model.opset_import}
    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    originals = [node for node in original.graph.node if node.domain == CODETR_DOMAIN]
    plugins = [node for node in model.graph.node if node.op_type == NVIDIA_OP_TYPE]
    assert len(plugins) == len(originals)
    for plugin, replaced in zip(plugins, originals):
        assert plugin.domain == NVIDIA_DOMAIN
        attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in plugin.attribute}
        assert attributes == {"plugin_version": b"2", "plugin_namespace": b""}
        assert plugin.input[0] == replaced.input[0]
        for index in (1, 2):
            cast = producers[plugin.input[index]]
            assert cast.op_type == "Cast" and cast.input[0] == replaced.input[index]
            assert onnx.helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.INT32
        # float32 model: locations and weights already have value's dtype, no cast needed
        assert list(plugin.input[3:]) == list(replaced.input[3:])
        (reshape,) = [node for node in model.graph.node if plugin.output[0] in node.input]
        assert reshape.op_type == "Reshape" and reshape.output[0] == replaced.output[0]
        assert initializers[reshape.input[1]].tolist() == [0, 0, -1]


def test_nvidia_interop_graph_computes_the_same(dynamic_export: Path, eager) -> None:
    """Run the rewritten graph in ONNX Runtime with the stock plugin's semantics emulated (int32
    shapes, output [N, Lq, M, D]) to show the casts and the reshape preserve the result."""
    ort = pytest.importorskip("onnxruntime")
    if STOCK_MSDA_EMULATION is None:
        pytest.skip("onnxruntime-extensions not installed: it runs the plugin emulation")
    from onnxruntime_extensions import get_library_path

    model = replace_with_nvidia_plugin(onnx.load(str(dynamic_export / "model.onnx")))
    for node in model.graph.node:
        if node.op_type == NVIDIA_OP_TYPE:
            node.op_type, node.domain = STOCK_MSDA_EMULATION, "ai.onnx.contrib"
            del node.attribute[:]
    model.opset_import.append(onnx.helper.make_opsetid("ai.onnx.contrib", 1))
    options = ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    images, image_sizes = make_inputs(160, 192, seed=2)
    boxes, scores, labels = session.run(None, {"images": images.numpy(), "image_sizes": image_sizes.numpy()})
    actual = Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels))
    assert_detections_close(actual, eager(images, image_sizes), score_atol=1e-5, box_atol=1e-2)


# ---------------------------------------------------------------- static, decomposed, TensorRT engine


@pytest.fixture(scope="module")
def decomposed_export(tmp_path_factory, config) -> Path:
    output = tmp_path_factory.mktemp("decomposed")
    options = ExportOptions(dtype=torch.float32, height=STATIC_SIZE[0], width=STATIC_SIZE[1],
                            msda=MsdaMode.DECOMPOSED, artifacts=(Artifact.ONNX,))
    export_model(build_model(config), config, options, output)
    return output


def test_decomposed_onnx_has_only_standard_ops(decomposed_export: Path) -> None:
    model = onnx.load(str(decomposed_export / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} <= {""}
    assert "GridSample" in {node.op_type for node in model.graph.node}


def test_onnxruntime_runs_the_decomposed_graph(decomposed_export: Path, eager) -> None:
    images, image_sizes = make_inputs(*STATIC_SIZE, valid=(40, 96), seed=3)
    actual = load_runtime(decomposed_export / "model.onnx")(images, image_sizes)
    assert_detections_close(actual, eager(images, image_sizes), score_atol=1e-5, box_atol=1e-2)


def test_decomposed_onnx_builds_a_tensorrt_rtx_engine(decomposed_export: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) not installed")
    from codetr.export.tensorrt_engine import build_engine
    from codetr.tensorrt.inspect import layers_from_build_log

    engine = tmp_path / "model.engine"
    build = build_engine(decomposed_export / "model.onnx", engine, optimization_level=1)
    assert build.backend == "tensorrt_rtx_bindings"
    assert engine.stat().st_size > 1_000_000  # the tiny model's float32 weights alone are ~45 MB
    layer_types = {layer.layer_type for layer in layers_from_build_log(build.log)}
    assert not any(layer.is_plugin for layer in layers_from_build_log(build.log))
    assert layer_types, "the DETAILED build log lists the engine's layers"
    assert [path.name for path in tmp_path.iterdir()] == ["model.engine"]


def test_engine_build_rejects_profiles_of_static_inputs(decomposed_export: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) not installed")
    from codetr.export.tensorrt_engine import ShapeProfile, build_engine

    profile = ShapeProfile((1, 3, 64, 64), (1, 3, 64, 96), (1, 3, 64, 128))
    with pytest.raises(ValueError, match="not dynamic: images"):
        build_engine(decomposed_export / "model.onnx", tmp_path / "model.engine", profiles={"images": profile})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- half precision


@pytest.fixture(scope="module")
def float16_export(tmp_path_factory, config) -> Path:
    output = tmp_path_factory.mktemp("float16") / "export"
    options = ExportOptions(dtype=torch.float16, height=STATIC_SIZE[0], width=STATIC_SIZE[1],
                            artifacts=(Artifact.EXPORTED_PROGRAM, Artifact.ONNX))
    export_model(build_model(config), config, options, output)
    return output


@pytest.fixture(scope="module")
def bfloat16_export(tmp_path_factory, config) -> Path:
    output = tmp_path_factory.mktemp("bfloat16") / "export"
    options = ExportOptions(dtype=torch.bfloat16, height=STATIC_SIZE[0], width=STATIC_SIZE[1],
                            artifacts=(Artifact.ONNX,))
    export_model(build_model(config), config, options, output)
    return output


def conv_weight_types(model: onnx.ModelProto) -> set[int]:
    """Element types of the convolution weights (the backbone and neck, all in the export dtype)."""
    weights = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    return {tensor.data_type for tensor in model.graph.initializer if tensor.name in weights}


@pytest.mark.parametrize(("dtype", "element_type", "opset"), [
    ("float16", onnx.TensorProto.FLOAT16, 18),
    ("bfloat16", onnx.TensorProto.BFLOAT16, 22),
])
def test_half_precision_onnx_is_written_in_its_dtype_and_opset(request, dtype: str, element_type: int,
                                                               opset: int) -> None:
    """Real float16 / bfloat16 ONNX files (bfloat16 needs opset 22: ONNX's Conv takes bfloat16 from
    there); the metadata states the opset read back from the file."""
    output = request.getfixturevalue(f"{dtype}_export")
    model = onnx.load(str(output / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert conv_weight_types(model) == {element_type}
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", opset), (CODETR_DOMAIN, 1)}
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT, onnx.TensorProto.INT64]
    metadata = json.loads((output / "metadata.json").read_text())
    assert metadata["onnx"] == {"opset": opset, "ir_version": model.ir_version}
    assert metadata["precision"]["dtype"] == dtype


def test_float16_exported_program_matches_eager(float16_export: Path, eager) -> None:
    program = torch.export.load(float16_export / "model.pt2")
    parameter_dtypes = {tensor.dtype for tensor in program.state_dict.values() if tensor.is_floating_point()}
    assert parameter_dtypes == {torch.float16}
    images, image_sizes = make_inputs(*STATIC_SIZE, seed=5)
    actual = load_runtime(float16_export / "model.pt2")(images, image_sizes)
    assert actual.scores.dtype == actual.boxes.dtype == torch.float32  # scores, boxes and top-k stay float32
    expected = eager(images, image_sizes, dtype=torch.float16)
    assert_detections_close(actual, expected, score_atol=1e-5, box_atol=1e-5)
