"""Pre-processing, post-processing and the ``python -m codetr infer`` command (tiny config, CPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_image, write_png

from codetr.__main__ import main
from codetr.config import NmsConfig, PreprocessConfig, load_config
from codetr.models import Detections, build_model
from codetr.postprocess import coco_results, postprocess, soft_nms
from codetr.preprocess import load_image, make_batch, rescaled_size, resize_keep_ratio

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = CONFIGS / "tiny.toml"


def gradient_image(height: int, width: int) -> torch.Tensor:
    rows = torch.linspace(0, 255, height)[:, None].expand(height, width)
    cols = torch.linspace(255, 0, width)[None, :].expand(height, width)
    return torch.stack([rows, cols, (rows + cols) / 2]).round().to(torch.uint8)


# ---- pre-processing ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((480, 640), (1024, 1024), (768, 1024)),  # long edge limits: 1024 / 640 = 1.6
        ((480, 640), (2048, 1280), (1280, 1707)),  # short edge limits: 1280 / 480; 640 * 2.667 + 0.5 -> 1707
        ((800, 200), (1333, 800), (1333, 333)),  # long edge 800 -> 1333 (factor 1.66625); 200 * f + 0.5 = 333.75
        ((1000, 1000), (96, 64), (64, 64)),
    ],
)
def test_rescaled_size_matches_mmcv_rule(size, scale, expected):
    assert rescaled_size(*size, scale) == expected


def test_resize_is_bilinear_half_pixel():
    image = torch.tensor([[[0, 100], [200, 255]]], dtype=torch.uint8).expand(3, 2, 2)
    resized = resize_keep_ratio(image, (4, 4))
    assert resized.shape == (3, 4, 4)
    # half-pixel centres: output (0, 1) samples input x = 0.25 -> 0 + 0.25 * 100 = 25 (row 0 clamps)
    assert resized[0, 0].tolist() == [0.0, 25.0, 75.0, 100.0]
    assert resized.dtype == torch.float32 and torch.equal(resized, resized.round())


def test_batch_of_different_sizes_lsj_and_divisor():
    images = [gradient_image(30, 40), gradient_image(40, 20)]
    lsj = PreprocessConfig(scale=(64, 64), pad_size=(64, 64), pad_value=114.0, mask_padding=False)
    batch = make_batch(images, lsj)
    assert batch.images.shape == (2, 3, 64, 64)
    assert batch.images[0, :, 48:, :].eq(114).all() and batch.images[1, :, :, 32:].eq(114).all()
    assert batch.image_sizes.tolist() == [[64, 64], [64, 64]]  # mmdet 3.x: no padding mask
    assert batch.scale_factors.tolist() == [[64 / 40, 48 / 30], [32 / 20, 64 / 40]]
    assert batch.original_sizes.tolist() == [[30, 40], [40, 20]]

    divisor = PreprocessConfig(scale=(50, 50), size_divisor=32, mask_padding=True)
    batch = make_batch(images, divisor)
    assert batch.images.shape == (2, 3, 64, 64)  # content 38x50 and 50x25, rounded up to 32
    assert batch.image_sizes.tolist() == [[38, 50], [50, 25]]


def test_pad_with_mean_colour_is_zero_after_the_models_normalisation():
    mean = (123.675, 116.28, 103.53)
    config = PreprocessConfig(scale=(50, 50), size_divisor=32, pad_value="mean", mean=mean, mask_padding=True)
    batch = make_batch([gradient_image(30, 40), gradient_image(40, 20)], config)
    assert batch.images.shape == (2, 3, 64, 64)  # content 38x50 and 50x25
    for channel, value in enumerate(mean):
        assert batch.images[0, channel, 38:, :].eq(torch.tensor(value, dtype=torch.float32)).all()
        assert batch.images[1, channel, :, 25:].eq(torch.tensor(value, dtype=torch.float32)).all()
    assert batch.images[0, :, :38, :50].eq(batch.images[0, :, :38, :50].round()).all()  # content untouched

    # what the backbone sees: padding is exactly 0, as when the official pipeline pads after Normalize
    model = build_model(dataclasses.replace(load_config(TINY), preprocess=config), seed=0).eval()
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model(batch.images, batch.image_sizes)
    assert seen[0][0, :, 38:, :].eq(0).all() and seen[0][1, :, :, 25:].eq(0).all()
    assert seen[0][0, :, :38, :50].ne(0).any()


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "absent.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ValueError, match="cannot decode image .*broken.jpg"):
        load_image(broken)


# ---- post-processing --------------------------------------------------------------------------

def test_soft_nms_hand_computed():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    order, new_scores = soft_nms(boxes, scores, labels, iou_threshold=0.8, min_score=1e-3)
    # box 1 overlaps box 0 with IoU 0.9 > 0.8 -> 0.8 * (1 - 0.9) = 0.08; box 2 has another label
    assert order.tolist() == [0, 2, 3, 1]
    assert new_scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.08], rel=1e-5)
    order, _ = soft_nms(boxes, scores, labels, iou_threshold=0.8, min_score=0.1)
    assert order.tolist() == [0, 2, 3]  # 0.08 < min_score: removed


def test_postprocess_rescales_clamps_and_thresholds():
    detections = Detections(
        boxes=torch.tensor([[[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 100.0, 100.0]]]),
        scores=torch.tensor([[0.9, 0.2]]),
        labels=torch.tensor([[1, 0]]),
    )
    batch = make_batch([gradient_image(40, 60)], PreprocessConfig(scale=(120, 80)))  # scale factor 2
    results = postprocess(detections, batch, NmsConfig(kind="none"), score_threshold=0.1)
    assert results[0].boxes.tolist() == [[5.0, 10.0, 25.0, 30.0], [0.0, 0.0, 50.0, 40.0]]  # second clamped to 60x40
    results = postprocess(detections, batch, NmsConfig(kind="none"), score_threshold=0.5)
    assert results[0].labels.tolist() == [1]
    entries = coco_results(7, results[0], (1, 3))
    assert entries == [{"image_id": 7, "category_id": 3, "bbox": [5.0, 10.0, 20.0, 20.0], "score": 0.9}]


# ---- the command ------------------------------------------------------------------------------

def test_infer_folder_writes_drawn_images_and_coco_json(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_png(gradient_image(48, 80), str(inputs / "000000000042.png"))
    write_png(gradient_image(70, 50), str(inputs / "street.png"))
    (inputs / "notes.txt").write_text("not an image")
    output = tmp_path / "out"
    code = main(["infer", "--config", str(TINY), "--input", str(inputs), "--output", str(output), "--score-threshold", "0.2"])
    assert code == 0
    results = json.loads((output / "results.json").read_text())
    images = json.loads((output / "images.json").read_text())
    assert {entry["file_name"] for entry in images} == {"000000000042.png", "street.png"}
    assert {entry["id"] for entry in images} == {42, 2}  # numeric stem -> COCO id, else position
    config = load_config(TINY)
    for entry in results:
        assert set(entry) == {"image_id", "category_id", "bbox", "score"}
        assert entry["score"] > 0.2 and entry["category_id"] in config.coco_category_ids
        x, y, w, h = entry["bbox"]
        size = {42: (48, 80), 2: (70, 50)}[entry["image_id"]]
        assert 0 <= x <= x + w <= size[1] + 1e-3 and 0 <= y <= y + h <= size[0] + 1e-3
    drawn = decode_image(str(output / "street.jpg"))
    assert drawn.shape == (3, 70, 50)
    assert (output / "000000000042.jpg").is_file()
    assert "2 image(s)" in capsys.readouterr().out


def test_infer_with_checkpoint_and_errors(tmp_path, capsys, caplog):
    from codetr.checkpoint import save_checkpoint
    from codetr.models import build_model

    image = tmp_path / "one.png"
    write_png(gradient_image(40, 60), str(image))
    checkpoint = tmp_path / "tiny.pth"
    save_checkpoint(build_model(load_config(TINY), seed=9), checkpoint)
    output = tmp_path / "out"
    arguments = ["infer", "--config", str(TINY), "--input", str(image), "--output", str(output)]
    assert main(arguments + ["--checkpoint", str(checkpoint)]) == 0
    assert "RANDOM weights" not in caplog.text
    assert main(arguments) == 0
    assert "RANDOM weights" in caplog.text

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated jpeg")
    assert main(["infer", "--config", str(TINY), "--input", str(broken), "--output", str(tmp_path / "o2")]) == 2
    assert "cannot decode image" in capsys.readouterr().err
    assert main(["infer", "--config", str(TINY), "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o3")]) == 2
    assert main(arguments + ["--score-threshold", "1.5"]) == 2
    assert "--score-threshold" in capsys.readouterr().err
