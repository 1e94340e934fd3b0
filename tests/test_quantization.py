"""INT8 post-training quantization of the tiny Co-DINO on CPU (codetr.quantization, export --int8).

References: hand-computed Q/DQ values (float64), the float model's own weights and activations
(max calibration must give their largest magnitudes), ONNX Runtime for the exported Q/DQ graph,
TensorRT-RTX for the engine build. One quantization and one export per module (fixtures).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

pytest.importorskip("modelopt.torch.quantization", reason="NVIDIA ModelOpt (pip install 'codetr[int8]') not installed")

from codetr.cli import main as codetr_main  # noqa: E402
from codetr.config import load_config  # noqa: E402
from codetr.contract.artifacts import Artifact, MsdaMode  # noqa: E402
from codetr.data.images import read_image  # noqa: E402
from codetr.export import ExportOptions, export_model  # noqa: E402
from codetr.models import build_model  # noqa: E402
from codetr.preprocess import make_batch  # noqa: E402
from codetr.quantization import AMAX_FILE_NAME, calibration_set, quantize_int8  # noqa: E402
from codetr.quantization.engine_check import msda_fusion_findings, msda_inputs_from_dequantize  # noqa: E402
from codetr.quantization.onnx_qdq import qdq_translations  # noqa: E402
from codetr.quantization.qdq import QuantDequant, QuantizedConv2d, QuantizedLinear  # noqa: E402
from codetr.runtime import load_runtime  # noqa: E402
from codetr.tensorrt.inspect import EngineLayer  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
SIZE = (64, 96)
CALIBRATION_IMAGES = 3


@pytest.fixture(scope="module")
def config():
    return load_config(TINY)


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory) -> Path:
    """4 random RGB PNGs of different sizes (a 5th non-image file is ignored)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("calibration")
    generator = np.random.default_rng(0)
    for index in range(4):
        pixels = generator.integers(0, 256, (80 + 8 * index, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def float_model(config):
    return build_model(config, seed=0).eval()


@pytest.fixture(scope="module")
def quantized(float_model, config, calibration_dir):
    return quantize_int8(float_model, calibration_set(calibration_dir, CALIBRATION_IMAGES), config.preprocess, device="cpu")


def test_quant_dequant_matches_the_hand_computed_values() -> None:
    x = torch.tensor([[-3.0, -1.26, 0.0, 0.005, 1.0], [2.54, 9.0, -9.0, 0.6, -0.004]])
    per_tensor = QuantDequant(torch.tensor(2.54))  # scale 0.02
    expected = (x.double() / 0.02).round().clamp(-128, 127) * 0.02
    torch.testing.assert_close(per_tensor(x).double(), expected, atol=1e-6, rtol=0)
    per_channel = QuantDequant(torch.tensor([1.27, 12.7]), axis=0)  # scales 0.01, 0.1
    scales = torch.tensor([[0.01], [0.1]], dtype=torch.float64)
    torch.testing.assert_close(per_channel(x).double(), (x.double() / scales).round().clamp(-128, 127) * scales,
                               atol=1e-6, rtol=0)


def test_default_exclusions_stay_floating_point(quantized) -> None:
    report, model = quantized.report, quantized.model
    assert isinstance(model.get_submodule("backbone.conv1"), torch.nn.Conv2d)
    assert isinstance(model.get_submodule("backbone.layer1.0.conv1"), QuantizedConv2d)
    assert isinstance(model.get_submodule("query_head.transformer.encoder.layers.0.attentions.0.value_proj"),
                      QuantizedLinear)
    for name in ("backbone.conv1", "query_head.cls_branches.1", "query_head.reg_branches.0.2",
                 "query_head.transformer.decoder.layers.1.attentions.1.sampling_offsets",
                 "query_head.transformer.encoder.layers.0.attentions.0.attention_weights"):
        assert name in report.excluded and name not in report.quantized
        assert type(model.get_submodule(name)) in (torch.nn.Linear, torch.nn.Conv2d)
    # nn.MultiheadAttention calls out_proj functionally: it never runs as a module.
    assert "query_head.transformer.decoder.layers.0.attentions.0.attn.out_proj" in report.not_run
    assert len(report.quantized) == 38


def test_amax_is_the_largest_magnitude_seen(quantized, float_model, config, calibration_dir) -> None:
    """Max calibration: weight amax = max |w| per output channel; input amax = max |x| over the
    calibration images, recomputed here with hooks on the float model."""
    name = "backbone.layer2.0.conv1"
    module = float_model.get_submodule(name)
    stats = quantized.report.amax[name]
    torch.testing.assert_close(torch.tensor(stats.weight), module.weight.abs().amax(dim=(1, 2, 3)), rtol=0, atol=0)
    seen = []
    handle = module.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].abs().max()))
    try:
        with torch.no_grad():
            for path in sorted(calibration_dir.glob("*.png"))[:CALIBRATION_IMAGES]:
                batch = make_batch([read_image(path)], config.preprocess)
                float_model(batch.images, batch.image_sizes)
    finally:
        handle.remove()
    assert stats.input == pytest.approx(max(seen).item(), rel=1e-6)


def test_quantized_backbone_onnx_matches_pytorch_fake_quant(quantized, float_model) -> None:
    """ONNX Runtime runs the Q/DQ translation of the quantized ResNet as PyTorch's fake-quant does:
    far closer to it than INT8 is to float. Not equal: float rounding differences between the two
    runtimes flip some values by one quantization step, and the flips compound layer by layer."""
    import onnxruntime

    class Backbone(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            mean = torch.tensor(self.model.pixel_mean).view(1, 3, 1, 1)
            std = torch.tensor(self.model.pixel_std).view(1, 3, 1, 1)
            return torch.cat([level.flatten() for level in self.model.backbone((images - mean) / std)])

    images = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(1)) * 255
    program = torch.export.export(Backbone(quantized.model), (images,))
    onnx_model = torch.onnx.export(program, dynamo=True, opset_version=18, custom_translation_table=qdq_translations(18),
                                   verbose=False).model_proto
    onnx.checker.check_model(onnx_model, full_check=True)
    assert sum(node.op_type == "QuantizeLinear" for node in onnx_model.graph.node) >= 19 + 16
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    actual = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])
    with torch.no_grad():
        fake_quant = Backbone(quantized.model)(images)
        floating = Backbone(float_model)(images)

    def relative(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert relative(actual, fake_quant) < 0.02
    assert relative(fake_quant, floating) > 4 * relative(actual, fake_quant)


# ---------------------------------------------------------------- export --int8 (decomposed MSDA)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, quantized, config) -> Path:
    output = tmp_path_factory.mktemp("int8")
    options = ExportOptions(dtype=torch.float32, height=SIZE[0], width=SIZE[1], msda=MsdaMode.DECOMPOSED,
                            artifacts=(Artifact.EXPORTED_PROGRAM, Artifact.ONNX), opset=19)
    export_model(quantized.model, config, options, output, quantization=quantized.report)
    return output


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def test_int8_onnx_quantizes_exactly_the_reported_modules(int8_export: Path, quantized) -> None:
    model = onnx.load(str(int8_export / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    consumers, producers = _consumers(model), {out: node for node in model.graph.node for out in node.output}
    weights = {init.name for init in model.graph.initializer if init.name.endswith(".weight")}

    def weight_of(module: str) -> str:
        candidates = [f"model.{module}.weight", f"model.{module}.conv.weight"]
        return next(name for name in candidates if name in weights)

    for module in quantized.report.quantized:
        assert [node.op_type for node in consumers[weight_of(module)]] == ["QuantizeLinear"], module
    for module in quantized.report.excluded:
        name = f"model.{module}.weight"
        if name not in weights:
            continue  # cls_branches.0 does not run at inference
        users = consumers[name]
        assert all(node.op_type != "QuantizeLinear" for node in users), module
        for user in users:  # the weight's op (through a Transpose for Linear) takes no dequantized input
            while user.op_type == "Transpose":
                user = consumers[user.output[0]][0]
            assert all(producers.get(value) is None or producers[value].op_type != "DequantizeLinear"
                       for value in user.input), module
    assert msda_inputs_from_dequantize(model) == []
    assert "GridSample" in {node.op_type for node in model.graph.node}


def test_int8_metadata_and_amax_file(int8_export: Path, quantized) -> None:
    metadata = json.loads((int8_export / "metadata.json").read_text())
    section = metadata["quantization"]
    assert section["quantized_modules"] == list(quantized.report.quantized)
    assert "backbone.conv1" in section["excluded_modules"]
    assert section["calibration"]["images"] == CALIBRATION_IMAGES and section["calibration"]["available"] == 4
    assert section["amax_file"] == AMAX_FILE_NAME
    amax = json.loads((int8_export / AMAX_FILE_NAME).read_text())["amax"]
    assert amax["backbone.layer1.0.conv1"]["input"] == quantized.report.amax["backbone.layer1.0.conv1"].input


def test_int8_exported_program_and_onnxruntime_run(int8_export: Path, quantized) -> None:
    import codetr.runtime.onnxruntime  # noqa: F401

    generator = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (1, 3, *SIZE), generator=generator).float()
    image_sizes = torch.tensor([SIZE])
    with torch.no_grad():
        expected = quantized.model(images, image_sizes)
    program = load_runtime(int8_export / "model.pt2")(images, image_sizes)
    torch.testing.assert_close(program.scores, expected.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(program.boxes, expected.boxes, atol=1e-3, rtol=0)
    onnx_run = load_runtime(int8_export / "model.onnx")(images, image_sizes)
    assert onnx_run.scores.shape == expected.scores.shape and torch.isfinite(onnx_run.boxes).all()
    # Whole-model INT8 noise: one-step rounding flips compound through ~40 quantized layers of a
    # random-weight model; the strict comparison is the backbone test above.
    torch.testing.assert_close(onnx_run.scores, expected.scores, atol=0.05, rtol=0)


def test_int8_onnx_builds_a_tensorrt_rtx_engine_with_float_msda(int8_export: Path, tmp_path: Path) -> None:
    """The codetr MSDA plugin library is not built on CPU CI machines, so this checks the
    decomposed form: the engine has INT8 layers, and no layer computing GridSample takes INT8
    data or holds a Q/DQ node other than those of an INT8 GEMM fused into it."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) not installed")
    from codetr.export.tensorrt_engine import build_engine
    from codetr.quantization.engine_check import check_int8_engine
    from codetr.tensorrt.inspect import layers_from_build_log

    build = build_engine(int8_export / "model.onnx", tmp_path / "model.engine", optimization_level=1)
    layers = layers_from_build_log(build.log)
    report = check_int8_engine(int8_export / "model.onnx", build.log)
    assert report["msda_quantized_inputs"] == []
    assert report["int8_input_layers"] >= 20  # the quantized convolutions at least
    sampling = [layer for layer in layers if "grid_sampler" in layer.metadata]
    assert sampling and all("Int8" not in layer.input_dtypes for layer in sampling)


def test_msda_checks_flag_quantized_sampling_inputs() -> None:
    """A DequantizeLinear feeding GridSample through a Reshape is found in the graph, and an engine
    layer fusing it (or taking INT8 data without a GEMM) is flagged."""
    nodes = [
        helper.make_node("QuantizeLinear", ["value", "scale", "zero"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], name="dq"),
        helper.make_node("Reshape", ["dq", "shape"], ["reshaped"], name="reshape"),
        helper.make_node("GridSample", ["reshaped", "grid"], ["out"], name="sample"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, [1, 1, 4, 4]),
         helper.make_tensor_value_info("grid", TensorProto.FLOAT, [1, 2, 2, 2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("zero", TensorProto.INT8, [], [0]),
         helper.make_tensor("shape", TensorProto.INT64, [4], [1, 1, 4, 4])],
    )
    model = helper.make_model(graph)
    assert msda_inputs_from_dequantize(model) == ["sample input 0 <- dq"]
    fused = EngineLayer("k", "kgen", "[ONNX Layer: dq][ONNX Layer: reshape][ONNX Layer: sample]", ("Int8", "Float"))
    clean = EngineLayer("k2", "kgen", "[ONNX Layer: sample]", ("Float", "Float"))
    int8_input = EngineLayer("k3", "kgen", "[ONNX Layer: sample]", ("Int8", "Float"))
    findings = msda_fusion_findings(model, [fused, clean, int8_input])
    assert len(findings) == 2 and "dq" in findings[0] and "INT8 input" in findings[1]


# ---------------------------------------------------------------- bad input: clear errors, nothing written


def _export_args(output: Path, *extra: str) -> list[str]:
    return ["export", "--config", str(TINY), "--dtype", "float32", "--height", "64", "--width", "96", "--msda",
            "decomposed", "--artifacts", "onnx", "--device", "cpu", "--output", str(output), *extra]


@pytest.mark.parametrize("case", ["no data", "empty folder", "missing folder", "bad pattern", "no modelopt"])
def test_bad_int8_input_is_a_clear_error_and_writes_nothing(case, tmp_path, calibration_dir, monkeypatch, capsys) -> None:
    output = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    args, expected = {
        "no data": (["--int8"], "--calibration-data"),
        "empty folder": (["--int8", "--calibration-data", str(empty)], "no images"),
        "missing folder": (["--int8", "--calibration-data", str(tmp_path / "nope")], "no such folder"),
        "bad pattern": (["--int8", "--calibration-data", str(calibration_dir), "--int8-exclude", "neck.nothing*"],
                        "'neck.nothing*'"),
        "no modelopt": (["--int8", "--calibration-data", str(calibration_dir)], "pip install 'codetr[int8]'"),
    }[case]
    if case == "no modelopt":
        monkeypatch.setitem(sys.modules, "modelopt.torch.quantization", None)
    assert codetr_main(_export_args(output, *args)) == 2
    assert expected in capsys.readouterr().err
    assert not output.exists()


def test_calibration_set_reads_a_coco_dataset(synthetic_dataset) -> None:
    images = calibration_set(synthetic_dataset, 4)
    assert images.kind == "coco" and images.available == 6 and len(images.paths) == 4
    assert all(path.parent.name == "train" and path.is_file() for path in images.paths)
    assert len(calibration_set(synthetic_dataset, None, split="val").paths) == 4


# ---------------------------------------------------------------- codetr quantize-sensitivity


def test_sensitivity_table_measures_each_group(tiny_coco, tmp_path, capsys) -> None:
    """On a dataset whose ground truth is the float tiny model's own detections, the floating-point
    row scores the reference AP, every group row is scored, and quantizing everything costs AP."""
    annotation_file, image_dir = tiny_coco
    (tmp_path / "data" / "annotations").mkdir(parents=True)
    (tmp_path / "data" / "annotations" / "instances_val.json").symlink_to(annotation_file)
    (tmp_path / "data" / "val").symlink_to(image_dir)
    output = tmp_path / "sensitivity.json"
    status = codetr_main(["quantize-sensitivity", "--config", str(TINY), "--data", str(tmp_path / "data"),
                          "--calibration-data", str(image_dir), "--device", "cpu", "--workers", "0",
                          "--output", str(output)])
    assert status == 0
    rows = {row["group"]: row for row in json.loads(output.read_text())["rows"]}
    reference = evaluate_reference_ap(annotation_file, image_dir)
    assert rows["floating point"]["ap"] == pytest.approx(reference, abs=1e-9)
    assert {"backbone stem", "backbone.layer1", "neck", "encoder.layers.0", "decoder.layers.1",
            "MSDA sampling offsets + attention weights", "classification branches", "box branches",
            "default INT8", "all INT8"} <= set(rows)
    assert rows["all INT8"]["drop"] > 0
    assert rows["backbone.layer1"]["drop"] == pytest.approx(rows["floating point"]["ap"] - rows["backbone.layer1"]["ap"])
    assert "| default INT8 |" in output.with_suffix(".md").read_text()
    assert "| all INT8 |" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["sensitivity.json", "sensitivity.md"])
def test_sensitivity_output_is_checked_before_any_work(tmp_path, capsys, name: str) -> None:
    """A folder where the table (or its Markdown copy) goes is refused at once, not after the evaluations."""
    (tmp_path / name).mkdir()
    status = codetr_main(["quantize-sensitivity", "--config", str(TINY), "--data", str(tmp_path / "missing"),
                          "--output", str(tmp_path / "sensitivity.json")])
    assert status == 2
    assert f"{tmp_path / name} is a folder; give a file name" in capsys.readouterr().err


def evaluate_reference_ap(annotation_file: Path, image_dir: Path) -> float:
    """AP of the float tiny model straight through pycocotools (the independent reference)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from codetr.postprocess import coco_results
    from codetr.runtime.predictor import Predictor

    predictor = Predictor.from_config(TINY)
    ground_truth = COCO(str(annotation_file))
    names = {category["name"]: category["id"] for category in ground_truth.loadCats(ground_truth.getCatIds())}
    category_ids = tuple(names[name] for name in predictor.class_names)
    results = []
    for image in ground_truth.loadImgs(ground_truth.getImgIds()):
        detections = predictor([read_image(image_dir / image["file_name"])])[0]
        results += coco_results(image["id"], detections, category_ids)
    evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])
