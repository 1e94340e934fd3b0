"""Predictor (runtime + pre/post-processing) and the eager runtime, on codetr/configs/tiny.toml (CPU)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from codetr.checkpoint import save_checkpoint
from codetr.config import PreprocessConfig, load_config
from codetr.contract.metadata import MetadataError, parse_metadata, write_metadata
from codetr.models import Detections, build_model
from codetr.runtime.base import Runtime, check_inputs
from codetr.runtime.eager import EagerRuntime
from codetr.runtime.predictor import Predictor

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"


def gradient_image(height: int, width: int, phase: int = 0) -> torch.Tensor:
    rows = torch.linspace(0, 255, height)[:, None].expand(height, width)
    cols = torch.linspace(255, 0, width)[None, :].expand(height, width)
    return torch.stack([rows, cols, (rows + cols + phase) % 256]).round().to(torch.uint8)


class StaticBatch(Runtime):
    """The eager tiny model behind an export's checks (batch 2, 64x64), recording each call's batch."""

    def __init__(self, metadata) -> None:
        self.metadata = metadata
        self.eager = EagerRuntime(build_model(load_config(TINY)), device="cpu")
        self.batches: list[int] = []

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes, self.metadata)
        self.batches.append(images.shape[0])
        return self.eager(images, image_sizes)


def test_static_batch_is_split_and_filled_and_gives_each_images_own_result(metadata_document) -> None:
    metadata = parse_metadata(metadata_document(**{"input.batch_size": 2}))
    config = load_config(TINY)
    preprocess = PreprocessConfig(**{**dataclasses.asdict(config.preprocess), "scale": (64, 64), "pad_size": (64, 64)})
    runtime = StaticBatch(metadata)
    batched = Predictor(runtime, preprocess, config.test, config.class_names, config.coco_category_ids, True, batch_size=2)
    single = dataclasses.replace(batched, runtime=runtime.eager, batch_size=None)
    images = [gradient_image(48, 80), gradient_image(70, 50, 40), gradient_image(64, 64, 90)]

    results = batched(images)
    assert runtime.batches == [2, 2]  # three images: one full batch, one filled with a blank image
    assert len(results) == 3
    for image, result in zip(images, results):
        (alone,) = single([image])
        torch.testing.assert_close(result.scores, alone.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(result.boxes, alone.boxes, atol=1e-3, rtol=0)
        assert result.boxes[:, 2].le(image.shape[2]).all() and result.boxes[:, 3].le(image.shape[1]).all()
    assert batched([]) == []


def test_from_artifact_reads_everything_from_the_metadata(tiny_float16_export: Path) -> None:
    images = [gradient_image(48, 80), gradient_image(70, 50, 40)]
    onnx_predictor = Predictor.from_artifact(tiny_float16_export / "model.onnx")
    program_predictor = Predictor.from_artifact(tiny_float16_export / "model.pt2", device="cpu")
    config = load_config(TINY)
    for predictor in (onnx_predictor, program_predictor):
        assert predictor.preprocess == dataclasses.replace(config.preprocess, scale=(64, 64), pad_size=(64, 64))
        assert predictor.test == config.test
        assert predictor.class_names == config.class_names and predictor.random_weights
        assert predictor.batch_size == 1
    from_onnx, from_program = onnx_predictor(images, 0.1), program_predictor(images, 0.1)
    for image, onnx_result, program_result in zip(images, from_onnx, from_program):
        assert len(onnx_result.scores) > 0 and onnx_result.scores.gt(0.1).all()
        torch.testing.assert_close(onnx_result.scores[:5], program_result.scores[:5], atol=2e-3, rtol=0)
        torch.testing.assert_close(onnx_result.boxes[:5], program_result.boxes[:5], atol=0.2, rtol=0)
        height, width = image.shape[1:]
        assert onnx_result.boxes[:, 2].le(width).all() and onnx_result.boxes[:, 3].le(height).all()


def test_from_artifact_needs_its_metadata(tmp_path: Path, tiny_float16_export: Path) -> None:
    alone = tmp_path / "model.pt2"
    alone.symlink_to(tiny_float16_export / "model.pt2")
    with pytest.raises(FileNotFoundError, match=r"no metadata.json beside .*model.pt2: it holds the pre-processing"):
        Predictor.from_artifact(alone)


def test_malformed_preprocessing_in_metadata_is_named(tmp_path: Path, tiny_float16_export: Path, metadata_document) -> None:
    (tmp_path / "model.pt2").symlink_to(tiny_float16_export / "model.pt2")
    document = metadata_document()
    document["preprocessing"]["resize_mode"] = "fit"
    write_metadata(document, tmp_path / "metadata.json")
    with pytest.raises(MetadataError, match=r"metadata.json: preprocessing: unknown field\(s\) resize_mode"):
        Predictor.from_artifact(tmp_path / "model.pt2")


def test_from_config_knows_whether_the_weights_are_trained(tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny.pth"
    save_checkpoint(build_model(load_config(TINY), seed=3), checkpoint)
    trained = Predictor.from_config(TINY, checkpoint)
    random = Predictor.from_config(load_config(TINY))
    assert not trained.random_weights and random.random_weights
    image = [gradient_image(48, 80)]
    assert not torch.equal(trained(image)[0].scores, random(image)[0].scores)  # the checkpoint was loaded


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_eager_float32_is_ieee_unless_tf32_is_allowed(allow_tf32: bool) -> None:
    """The TF32 switches PyTorch reads on the GPU, as seen inside the model (fault 8): off unless
    allowed, whatever the process default, and restored afterwards."""
    runtime = EagerRuntime(build_model(load_config(TINY)), device="cpu", allow_tf32=allow_tf32)
    seen = []
    runtime.model.backbone.register_forward_pre_hook(
        lambda module, inputs: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
    )
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not allow_tf32
    try:
        runtime(torch.zeros(1, 3, 64, 64), torch.tensor([[64, 64]]))
        assert seen == [(allow_tf32, allow_tf32)]
        assert torch.backends.cuda.matmul.allow_tf32 is (not allow_tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_eager_runtime_refuses_unknown_dtypes() -> None:
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, bfloat16, got 'float64'"):
        EagerRuntime(build_model(load_config(TINY)), device="cpu", dtype="float64")
