"""In-graph post-processing (``codetr export --postprocess threshold|nms``) of the tiny Co-DINO.

References: the eager model's top-k detections filtered by the score threshold on the host, and
for ``nms`` torchvision's ``batched_nms`` on those same boxes (an independent implementation of
class-wise hard NMS). The exports run in ONNX Runtime (one ONNX NonMaxSuppression node) and as the
saved ExportedProgram; TensorRT-RTX's parser reads the ONNX into an INMSLayer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
import torch
from torchvision.ops import batched_nms, nms

import codetr.runtime.onnxruntime  # noqa: F401  registers its Python ops before any session exists
from codetr.cli import main
from codetr.config import load_config
from codetr.contract.postprocess import NUM_DETECTIONS, PostprocessMode
from codetr.export import Artifact, ExportOptions, MsdaMode
from codetr.models import build_model
from codetr.runtime import load_runtime
from codetr.runtime.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "codetr" / "configs" / "tiny.toml"
HEIGHT, WIDTH = 64, 96
SCORE_THRESHOLD = 0.7
IOU_THRESHOLD = 0.2
"""Low enough that the random-weight model's overlapping boxes of one class get suppressed."""


@pytest.fixture(scope="module")
def soft_nms_config(tmp_path_factory) -> Path:
    """codetr/configs/tiny.toml with the official kind of host NMS (soft-NMS) at IOU_THRESHOLD."""
    text = re.sub(r'\[test\.nms\]\nkind = "none"', f'[test.nms]\nkind = "soft_nms"\niou_threshold = {IOU_THRESHOLD}',
                  TINY.read_text())
    assert "soft_nms" in text
    path = tmp_path_factory.mktemp("config") / "tiny_soft_nms.toml"
    path.write_text(text)
    return path


def export(folder: Path, config: Path, mode: str) -> Path:
    arguments = ["export", "--config", str(config), "--output", str(folder), "--dtype", "float32",
                 "--height", str(HEIGHT), "--width", str(WIDTH), "--msda", "decomposed", "--device", "cpu",
                 "--artifacts", "exported_program,onnx", "--postprocess", mode,
                 "--score-threshold", str(SCORE_THRESHOLD)]
    assert main(arguments) == 0
    return folder


@pytest.fixture(scope="module")
def threshold_export(tmp_path_factory, soft_nms_config) -> Path:
    return export(tmp_path_factory.mktemp("threshold"), soft_nms_config, "threshold")


@pytest.fixture(scope="module")
def nms_export(tmp_path_factory, soft_nms_config) -> Path:
    return export(tmp_path_factory.mktemp("nms"), soft_nms_config, "nms")


@pytest.fixture(scope="module")
def eager(soft_nms_config):
    model = build_model(load_config(soft_nms_config), seed=0).eval()

    def run(images, image_sizes):
        with torch.no_grad():
            boxes, scores, labels = model(images, image_sizes)
        return boxes[0], scores[0], labels[0]

    return run


def make_inputs(seed: int, valid: tuple[int, int] = (HEIGHT, WIDTH)):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (1, 3, HEIGHT, WIDTH), generator=generator).float()
    return images, torch.tensor([valid])


def assert_same_detections(actual, boxes, scores, labels) -> None:
    assert actual.boxes.shape == (1, len(scores), 4) and actual.scores.shape == (1, len(scores))
    torch.testing.assert_close(actual.scores[0], scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.boxes[0], boxes, atol=1e-2, rtol=0)
    assert torch.equal(actual.labels[0], labels)


@pytest.mark.parametrize("seed", [1, 2])
def test_threshold_keeps_exactly_the_detections_above_the_threshold(threshold_export, eager, seed) -> None:
    images, image_sizes = make_inputs(seed, valid=(48, 96))
    boxes, scores, labels = eager(images, image_sizes)
    keep = scores > SCORE_THRESHOLD
    assert 0 < int(keep.sum()) < len(scores), "the threshold must cut inside the top-k to test anything"
    for artifact in ("model.onnx", "model.pt2"):
        actual = load_runtime(threshold_export / artifact)(images, image_sizes)
        assert_same_detections(actual, boxes[keep], scores[keep], labels[keep])


@pytest.mark.parametrize("seed", [1, 2])
def test_nms_equals_torchvision_batched_nms(nms_export, eager, seed) -> None:
    images, image_sizes = make_inputs(seed)
    boxes, scores, labels = eager(images, image_sizes)
    keep = batched_nms(boxes, scores, labels, IOU_THRESHOLD)
    keep = keep[scores[keep] > SCORE_THRESHOLD]
    # The random-weight model's boxes rarely overlap: test_nms_suppresses_like_per_class_nms plants overlaps.
    for artifact in ("model.onnx", "model.pt2"):
        actual = load_runtime(nms_export / artifact)(images, image_sizes)
        assert_same_detections(actual, boxes[keep], scores[keep], labels[keep])


class PlantedDetections(torch.nn.Module):
    """A stand-in detector whose top-k is read from its input: images [1, 3, K, 4] holds boxes
    (channel 0), scores (channel 1, column 0) and labels (channel 2, column 0)."""

    def forward(self, images, image_sizes):
        return images[:, 0], images[:, 1, :, 0], images[:, 2, :, 0].long()


def per_class_nms(boxes, scores, labels, iou_threshold):
    """Hard NMS class by class (torchvision nms per label), survivors in descending score order."""
    kept = [torch.nonzero(labels == label).squeeze(1)[nms(boxes[labels == label], scores[labels == label], iou_threshold)]
            for label in labels.unique()]
    kept = torch.cat(kept)
    return kept[scores[kept].argsort(descending=True)]


def test_nms_suppresses_like_per_class_nms(tmp_path) -> None:
    from codetr.export.onnx_model import to_onnx
    from codetr.export.postprocess import InGraphPostprocess
    from codetr.runtime.onnxruntime import OnnxRuntime

    generator = torch.Generator().manual_seed(0)
    count = 60
    centers = torch.rand(6, 2, generator=generator) * 200  # 6 clusters of heavily overlapping boxes
    xy = centers[torch.randint(0, 6, (count,), generator=generator)] + torch.rand(count, 2, generator=generator) * 12
    size = 20 + torch.rand(count, 2, generator=generator) * 10
    boxes = torch.cat([xy, xy + size], dim=1)
    scores = torch.rand(count, generator=generator).sort(descending=True).values
    labels = torch.randint(0, 3, (count,), generator=generator)
    planted = torch.zeros(1, 3, count, 4)
    planted[0, 0], planted[0, 1, :, 0], planted[0, 2, :, 0] = boxes, scores, labels.float()

    model = InGraphPostprocess(PlantedDetections(), PostprocessMode.NMS, score_threshold=0.2, iou_threshold=0.3)
    program = torch.export.export(model, (planted, torch.tensor([[count, 4]])), strict=False)
    options = ExportOptions(dtype=torch.float32, msda=MsdaMode.DECOMPOSED, artifacts=(Artifact.ONNX,),
                            postprocess=PostprocessMode.NMS, score_threshold=0.2)
    actual = OnnxRuntime(to_onnx(program, options))(planted, torch.tensor([[count, 4]]))

    keep = per_class_nms(boxes, scores, labels, 0.3)
    keep = keep[scores[keep] > 0.2]
    assert 5 < len(keep) < int((scores > 0.2).sum()) - 10, "the planted clusters must suppress many boxes"
    assert_same_detections(actual, boxes[keep], scores[keep], labels[keep])


def test_onnx_holds_one_nms_node_and_named_data_dependent_outputs(nms_export) -> None:
    model = onnx.load(str(nms_export / "model.onnx"))
    op_types = [node.op_type for node in model.graph.node]
    assert op_types.count("NonMaxSuppression") == 1 and "NonZero" not in op_types
    for output in model.graph.output:
        assert output.type.tensor_type.shape.dim[1].dim_param == NUM_DETECTIONS


def test_metadata_describes_the_in_graph_postprocessing(nms_export, threshold_export) -> None:
    document = json.loads((nms_export / "metadata.json").read_text())
    assert [output["shape"] for output in document["outputs"]] == [
        [1, NUM_DETECTIONS, 4], [1, NUM_DETECTIONS], [1, NUM_DETECTIONS]]
    assert document["postprocess"]["mode"] == "nms"
    assert document["postprocess"]["iou_threshold"] == IOU_THRESHOLD
    assert "soft_nms" in document["postprocess"]["note"]
    # The host does not run NMS a second time, and keeps the graph's threshold.
    assert document["postprocessing"]["nms"]["kind"] == "none"
    assert document["postprocessing"]["score_threshold"] == SCORE_THRESHOLD
    threshold = json.loads((threshold_export / "metadata.json").read_text())
    assert threshold["postprocess"]["mode"] == "threshold"
    assert threshold["postprocessing"]["nms"]["kind"] == "soft_nms"


def test_predictor_serves_a_data_dependent_export(nms_export) -> None:
    predictor = Predictor.from_artifact(nms_export / "model.onnx")
    image = torch.randint(0, 256, (3, 50, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    (detections,) = predictor([image])
    assert detections.boxes.shape[1] == 4 and len(detections.scores) == len(detections.labels)
    assert bool((detections.scores > SCORE_THRESHOLD).all())
    assert float(detections.boxes[:, 2].max()) <= 80 and float(detections.boxes[:, 3].max()) <= 50


def test_tensorrt_rtx_parses_an_nms_layer_and_refuses_to_build_it(nms_export, tmp_path) -> None:
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) not installed")
    from codetr.export.tensorrt_engine import build_engine

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(nms_export / "model.onnx"))
    layer_types = [network.get_layer(index).type for index in range(network.num_layers)]
    assert layer_types.count(trt.LayerType.NMS) == 1
    outputs = {network.get_output(index).name: tuple(network.get_output(index).shape)
               for index in range(network.num_outputs)}
    assert outputs["boxes"] == (1, -1, 4) and outputs["scores"] == (1, -1)
    with pytest.raises(RuntimeError, match="TensorRT-RTX .* no implementation of INMSLayer"):
        build_engine(nms_export / "model.onnx", tmp_path / "model.engine")
    assert not any(tmp_path.iterdir())


def test_data_dependent_exports_take_one_image_per_run() -> None:
    with pytest.raises(ValueError, match="batch-size 1"):
        ExportOptions(postprocess=PostprocessMode.THRESHOLD, batch_size=2)
    with pytest.raises(ValueError, match="score_threshold"):
        ExportOptions(postprocess=PostprocessMode.NMS, score_threshold=1.5)
    assert ExportOptions(postprocess=PostprocessMode.NMS, artifacts=(Artifact.ONNX,),
                         msda=MsdaMode.DECOMPOSED).to_json()["postprocess"] == "nms"


def test_score_threshold_without_in_graph_postprocessing_is_refused(capsys) -> None:
    status = main(["export", "--config", str(TINY), "--output", "unused", "--height", "64", "--width", "64",
                   "--score-threshold", "0.5"])
    assert status == 2
    assert "--score-threshold applies to --postprocess threshold or nms" in capsys.readouterr().err
