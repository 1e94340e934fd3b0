"""Pre-processing, post-processing and the ``codetr infer`` command (tiny config, CPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.io import decode_image

from codetr.__main__ import main
from codetr.config import NmsConfig, PreprocessConfig, load_config
from codetr.models import Detections, build_model
from codetr.postprocess import coco_results, postprocess, soft_nms
from codetr.preprocess import make_batch, rescaled_size, resize_keep_ratio

CONFIGS = Path(__file__).resolve().parents[1] / "codetr" / "configs"
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


def test_zero_width_or_height_detections_are_dropped():
    """Boxes that clamp to no area (in the padding, past the image, or degenerate) are dropped
    before NMS and thresholds, whatever runtime produced them (issue 9 item 6)."""
    detections = Detections(
        boxes=torch.tensor([[
            [10.0, 20.0, 50.0, 60.0],  # kept
            [130.0, 10.0, 150.0, 30.0],  # right of the 120-wide content: clamps to x1 = x2 = 60
            [10.0, 30.0, 40.0, 30.0],  # zero height
            [0.0, 0.0, 0.5, 0.5],  # small but not empty: kept
        ]]),
        scores=torch.tensor([[0.9, 0.8, 0.7, 0.6]]),
        labels=torch.tensor([[1, 0, 2, 3]]),
    )
    batch = make_batch([gradient_image(40, 60)], PreprocessConfig(scale=(120, 80)))  # scale factor 2
    (result,) = postprocess(detections, batch, NmsConfig(kind="nms", iou_threshold=0.5))
    assert result.labels.tolist() == [1, 3]
    assert result.boxes.tolist() == [[5.0, 10.0, 25.0, 30.0], [0.0, 0.0, 0.25, 0.25]]


# ---- the command ------------------------------------------------------------------------------

def infer(*arguments: str) -> int:
    return main(["infer", "--workers", "0", *arguments])


def eager(inputs: Path, output: Path, *extra: str) -> int:
    return infer("--config", str(TINY), "--input", str(inputs), "--output", str(output), *extra)


def image_folder(folder: Path, images: dict[str, torch.Tensor]) -> Path:
    folder.mkdir()
    for name, image in images.items():
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
    return folder


def test_infer_folder_writes_drawn_images_and_coco_json(tmp_path, capsys):
    inputs = image_folder(tmp_path / "inputs", {"000000000042.png": gradient_image(48, 80), "7.png": gradient_image(70, 50)})
    (inputs / "notes.txt").write_text("not an image")
    output = tmp_path / "out"
    assert eager(inputs, output, "--score-threshold", "0.2", "--batch-size", "2") == 0
    results = json.loads((output / "results.json").read_text())
    images = json.loads((output / "images.json").read_text())
    assert images == [
        {"id": 42, "file_name": "000000000042.png", "height": 48, "width": 80},  # distinct numeric stems -> COCO ids
        {"id": 7, "file_name": "7.png", "height": 70, "width": 50},
    ]
    config = load_config(TINY)
    assert results
    for entry in results:
        assert set(entry) == {"image_id", "category_id", "bbox", "score"}
        assert entry["score"] > 0.2 and entry["category_id"] in config.coco_category_ids
        x, y, w, h = entry["bbox"]
        size = {42: (48, 80), 7: (70, 50)}[entry["image_id"]]
        assert 0 <= x and w > 0 and x + w <= size[1] + 1e-3 and 0 <= y and h > 0 and y + h <= size[0] + 1e-3
    assert decode_image(str(output / "7.png.jpg")).shape == (3, 70, 50)
    assert sorted(path.name for path in output.iterdir()) == ["000000000042.png.jpg", "7.png.jpg", "images.json", "results.json"]
    assert "2 image(s)" in capsys.readouterr().out


def test_same_stem_inputs_keep_their_own_drawings_and_ids(tmp_path):
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80), "a.jpg": gradient_image(70, 50), "2.png": gradient_image(40, 40)})
    output = tmp_path / "out"
    assert eager(inputs, output) == 0
    assert decode_image(str(output / "a.png.jpg")).shape == (3, 48, 80)
    assert decode_image(str(output / "a.jpg.jpg")).shape == (3, 70, 50)
    images = json.loads((output / "images.json").read_text())
    # not all stems are numbers: positions in name order, so "2.png" cannot collide with another id
    assert [(entry["id"], entry["file_name"]) for entry in images] == [(1, "2.png"), (2, "a.jpg"), (3, "a.png")]


def test_output_is_never_the_input_folder(tmp_path, capsys):
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80)})
    before = {path.name: path.read_bytes() for path in inputs.iterdir()}
    assert eager(inputs, inputs) == 2
    assert f"--output {inputs} is the input folder" in capsys.readouterr().err
    assert eager(inputs / "a.png", inputs / ".") == 2  # a single file's folder is its input folder too
    assert "is the input folder" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in inputs.iterdir()} == before


def test_output_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80)})
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    assert eager(inputs, existing) == 2
    assert f"--output {existing} exists and is not a directory" in capsys.readouterr().err
    assert existing.read_text() == "keep me"


def test_an_earlier_run_in_output_is_refused_unless_overwrite_replaces_it(tmp_path, capsys):
    """A second run never mixes its files with the first's: refused, or with --overwrite the
    folder holds this run's files only."""
    first = image_folder(tmp_path / "first", {"a.png": gradient_image(48, 80), "b.png": gradient_image(40, 40)})
    second = image_folder(tmp_path / "second", {"c.png": gradient_image(50, 60)})
    output = tmp_path / "out"
    assert eager(first, output) == 0
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    capsys.readouterr()
    assert eager(second, output) == 2
    assert f"--output {output} is not empty (holds a.png.jpg, b.png.jpg, images.json, results.json)" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    assert eager(second, output, "--overwrite") == 0
    assert sorted(path.name for path in output.iterdir()) == ["c.png.jpg", "images.json", "results.json"]
    assert [entry["file_name"] for entry in json.loads((output / "images.json").read_text())] == ["c.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first", "out", "second"]  # no staging folder left


def test_overwrite_never_replaces_a_folder_holding_the_input(tmp_path, capsys):
    output = tmp_path / "out"
    inputs = image_folder(output.mkdir() or output / "inputs", {"a.png": gradient_image(48, 80)})
    assert eager(inputs, output, "--overwrite") == 2
    assert f"--output {output} holds the input {inputs}" in capsys.readouterr().err
    assert (inputs / "a.png").is_file()


@pytest.mark.parametrize("option", ["--model", "--config", "--checkpoint"])
def test_overwrite_never_replaces_a_folder_holding_the_model(tmp_path, capsys, option):
    """``--model par/model/model.onnx --output par --overwrite`` would delete the model it runs."""
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80)})
    output = tmp_path / "par"
    given = output / "model" / {"--model": "model.onnx", "--config": "tiny.toml", "--checkpoint": "latest.pth"}[option]
    given.parent.mkdir(parents=True)
    given.write_bytes(TINY.read_bytes())  # never read: refused before any model loads
    source = ["--model", str(given)] if option == "--model" else ["--config", str(given if option == "--config" else TINY)]
    extra = ["--checkpoint", str(given)] if option == "--checkpoint" else []
    assert infer(*source, *extra, "--input", str(inputs), "--output", str(output), "--overwrite") == 2
    assert f"--output {output} holds the input {given}" in capsys.readouterr().err
    assert given.read_bytes() == TINY.read_bytes()


def test_interrupted_infer_leaves_the_output_as_it_was(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first drawing: no half-run in --output, the earlier run intact."""
    import codetr.cli.infer as infer_command

    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80), "b.png": gradient_image(40, 40)})
    output = tmp_path / "out"
    assert eager(inputs / "a.png", output) == 0
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    saved = []

    def save_then_interrupt(image, path):
        if saved:
            raise KeyboardInterrupt
        saved.append(path)
        image.save(path, format="JPEG")

    monkeypatch.setattr(infer_command, "save_jpeg", save_then_interrupt)
    assert eager(inputs, output, "--overwrite") == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted: {output} was left as it was"
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inputs", "out"]
    monkeypatch.undo()
    assert eager(inputs, tmp_path / "new" / "out") == 0 and (tmp_path / "new" / "out" / "b.png.jpg").is_file()


def test_unreadable_images_are_named_and_skipped(tmp_path, capsys):
    """Issue 9 item 5 and fault 5: a broken file costs only itself; 16-bit, grayscale, palette,
    RGBA and CMYK images run like 8-bit RGB ones."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray((gradient_image(40, 60)[0].numpy().astype("uint16") * 257)).save(inputs / "deep.png")  # 16-bit
    assert Image.open(inputs / "deep.png").mode.startswith("I")
    rgb = Image.fromarray(gradient_image(40, 60).permute(1, 2, 0).numpy())
    rgb.convert("L").save(inputs / "gray.png")
    rgb.convert("P").save(inputs / "palette.png")
    rgb.convert("RGBA").save(inputs / "alpha.png")
    rgb.convert("CMYK").save(inputs / "print.jpg")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    output = tmp_path / "out"
    assert eager(inputs, output, "--batch-size", "3") == 1
    captured = capsys.readouterr()
    assert f"skipped: cannot decode image {inputs / 'broken.jpg'}" in captured.err
    assert f"skipped 1 unreadable image(s): {inputs / 'broken.jpg'}" in captured.err
    images = json.loads((output / "images.json").read_text())
    assert sorted(entry["file_name"] for entry in images) == ["alpha.png", "deep.png", "gray.png", "palette.png", "print.jpg"]
    assert all((entry["height"], entry["width"]) == (40, 60) for entry in images)
    results = json.loads((output / "results.json").read_text())
    assert {entry["image_id"] for entry in results} <= {entry["id"] for entry in images}
    deep = decode_image(str(output / "deep.png.jpg"))
    assert deep.shape == (3, 40, 60) and deep.float().std() > 10  # not a blank white image

    only_broken = tmp_path / "only_broken"
    only_broken.mkdir()
    (only_broken / "broken.jpg").write_bytes(b"nothing")
    assert eager(only_broken, tmp_path / "out2") == 2
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err


def test_random_weights_are_marked_on_the_drawings(tmp_path, caplog):
    from codetr.checkpoint import save_checkpoint

    inputs = image_folder(tmp_path / "inputs", {"a.png": torch.full((3, 200, 300), 128, dtype=torch.uint8)})
    checkpoint = tmp_path / "tiny.pth"
    save_checkpoint(build_model(load_config(TINY), seed=9), checkpoint)
    assert eager(inputs, tmp_path / "random", "--score-threshold", "1") == 0
    assert "RANDOM WEIGHTS" in caplog.text
    caplog.clear()
    assert eager(inputs, tmp_path / "trained", "--score-threshold", "1", "--checkpoint", str(checkpoint)) == 0
    assert "RANDOM WEIGHTS" not in caplog.text
    random = decode_image(str(tmp_path / "random" / "a.png.jpg")).float()
    trained = decode_image(str(tmp_path / "trained" / "a.png.jpg")).float()
    banner = random[:, :8]  # no detections above threshold 1: only the banner differs from the input
    assert banner[0].mean() > 150 and banner[1].mean() < 60  # red
    assert (trained - 128).abs().max() <= 2  # the plain image (JPEG rounding)


def test_an_image_without_detections_is_drawn_without_a_warning(tmp_path, recwarn):
    """torchvision's draw_bounding_boxes warns "boxes doesn't contain any box" for none: no
    detection above the threshold is normal, not something to warn a user about."""
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(40, 60)})
    assert eager(inputs, tmp_path / "out", "--score-threshold", "1") == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == []
    assert [str(warning.message) for warning in recwarn if "box" in str(warning.message)] == []
    drawn = decode_image(str(tmp_path / "out" / "a.png.jpg")).float()
    # below the random-weights banner, the plain image (JPEG rounding)
    assert (drawn[:, 20:] - gradient_image(40, 60)[:, 20:].float()).abs().mean() < 2


def test_exported_model_runs_from_its_metadata(tmp_path, tiny_float16_export, capsys, caplog):
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80), "b.png": gradient_image(70, 50)})
    output = tmp_path / "out"
    model = tiny_float16_export / "model.onnx"
    assert infer("--model", str(model), "--input", str(inputs), "--output", str(output), "--score-threshold", "0.1", "--batch-size", "2") == 0
    assert "float16 and bfloat16 run many times slower than float32 on a CPU" in caplog.text
    images = json.loads((output / "images.json").read_text())
    assert [entry["file_name"] for entry in images] == ["a.png", "b.png"]
    results = json.loads((output / "results.json").read_text())
    assert results and {entry["image_id"] for entry in results} <= {1, 2}
    for option in (["--dtype", "float32"], ["--checkpoint", "x.pth"], ["--config", str(TINY)]):
        assert infer("--model", str(model), "--input", str(inputs), "--output", str(output), *option) == 2
        assert option[0] in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80)})
    with pytest.raises(SystemExit) as exit_:  # argparse's own error exit
        eager(inputs, tmp_path / "out", "--device", "cuda")
    assert exit_.value.code == 2
    assert "argument --device: cuda: no CUDA GPU is visible; use --device cpu" in capsys.readouterr().err


def test_option_errors(tmp_path, capsys):
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80)})
    for extra, name in ((["--score-threshold", "1.5"], "--score-threshold"), (["--batch-size", "0"], "--batch-size"),
                        (["--workers", "-1"], "--workers")):
        assert eager(inputs, tmp_path / "out", *extra) == 2
        assert name in capsys.readouterr().err
    assert infer("--input", str(inputs), "--output", str(tmp_path / "out")) == 2
    assert "give --model" in capsys.readouterr().err
    assert eager(tmp_path / "nothing", tmp_path / "out") == 2
    assert "nothing" in capsys.readouterr().err


def test_options_of_the_eager_model_are_refused_with_an_artifact(tmp_path, capsys):
    """--use-ema, like --checkpoint and --dtype, would be silently ignored with --model; checked
    before the artifact is even looked at. Without --checkpoint it has nothing to apply to."""
    inputs = image_folder(tmp_path / "inputs", {"a.png": gradient_image(48, 80)})
    artifact = ["--model", str(tmp_path / "model.onnx"), "--input", str(inputs), "--output", str(tmp_path / "out")]
    for option in (["--use-ema"], ["--dtype", "float32"], ["--allow-tf32"]):
        assert infer(*artifact, *option) == 2
        assert f"error: {option[0]} applies to --config only" in capsys.readouterr().err
    assert eager(inputs, tmp_path / "out", "--use-ema") == 2
    assert "--use-ema loads the EMA copy of --checkpoint; give --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_lists_every_artifact_file():
    from codetr.cli import build_parser

    infer_parser = build_parser()._subparsers._group_actions[0].choices["infer"]
    text = " ".join(infer_parser.format_help().split())
    for name in ("model.pt2", "model_aoti.pt2", "model.onnx", "model.engine", "model_torch_tensorrt.pt2"):
        assert name in text, name


def test_help_shows_every_default():
    from codetr.cli import build_parser

    parser = build_parser()
    infer_parser = parser._subparsers._group_actions[0].choices["infer"]
    for action in infer_parser._actions:
        if action.dest in ("help", "input", "output"):  # required ones have no default
            continue
        assert "default" in (action.help or ""), f"{action.option_strings} does not show its default"
    assert "float16 and bfloat16 on a CPU are many times slower" in " ".join(infer_parser.format_help().split())


def test_images_are_decoded_in_worker_processes(tmp_path):
    inputs = image_folder(tmp_path / "inputs", {f"{index}.png": gradient_image(40, 40 + index) for index in range(3)})
    output = tmp_path / "out"
    assert main(["infer", "--config", str(TINY), "--input", str(inputs), "--output", str(output), "--workers", "2"]) == 0
    assert [entry["width"] for entry in json.loads((output / "images.json").read_text())] == [40, 41, 42]
