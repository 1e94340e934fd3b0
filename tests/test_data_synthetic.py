"""The generated dataset (codetr.data.synthetic) and ``codetr data synthetic``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from codetr.__main__ import main
from codetr.data import synthetic
from codetr.data.synthetic import CLASSES, generate_dataset, render_image


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    generate_dataset(tmp_path / "a", 5, 3, (96, 128), seed=7, workers=1)
    generate_dataset(tmp_path / "b", 5, 3, (96, 128), seed=7, workers=2)
    generate_dataset(tmp_path / "c", 5, 3, (96, 128), seed=8, workers=1)
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert sorted(a) == ["annotations/instances_train.json", "annotations/instances_val.json",
                         *(f"train/{i:012d}.jpg" for i in range(1, 6)), *(f"val/{i:012d}.jpg" for i in range(1, 4))]
    assert a == b
    assert sorted(c) == sorted(a) and all(c[name] != a[name] for name in a)  # another seed: every file differs
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging left behind


def test_annotations_are_valid_coco(synthetic_dataset):
    for split, count in (("train", 6), ("val", 4)):
        coco = COCO(str(synthetic_dataset / "annotations" / f"instances_{split}.json"))
        assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == [c.name for c in CLASSES]
        assert sorted(coco.imgs) == list(range(1, count + 1))
        assert len({a["id"] for a in coco.dataset["annotations"]}) == len(coco.dataset["annotations"])
        for image_id, image in coco.imgs.items():
            assert Image.open(synthetic_dataset / split / image["file_name"]).size == (image["width"], image["height"]) == (128, 128)
            annotations = coco.imgToAnns[image_id]
            assert 1 <= len(annotations) <= 12
            for annotation in annotations:
                x, y, w, h = annotation["bbox"]
                assert 0 <= x < x + w <= 128 and 0 <= y < y + h <= 128
                assert 0 < annotation["area"] <= w * h and annotation["iscrowd"] == 0
                assert annotation["category_id"] in coco.cats


def saturated_hues(pixels: np.ndarray, saturation: float = 0.55, value: float = 0.25) -> np.ndarray:
    """Hues in degrees (Pillow's HSV) of the pixels with more than this saturation and value
    (backgrounds and clutter have saturation <= 0.25 before noise)."""
    hsv = np.asarray(Image.fromarray(pixels).convert("HSV"), dtype=np.float64).reshape(-1, 3)
    keep = (hsv[:, 1] > saturation * 255) & (hsv[:, 2] > value * 255)
    return hsv[keep, 0] * 360.0 / 256.0


def hue_distance(a: np.ndarray | float, b: float) -> np.ndarray:
    return np.abs((np.asarray(a) - b + 180.0) % 360.0 - 180.0)


def circular_mean(degrees) -> float:
    angle = np.deg2rad(np.asarray(degrees))
    return float(np.rad2deg(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())) % 360)


def isolated_objects(objects, height, width, margin=3):
    """Objects whose box, grown by margin, meets no other box and lies inside the image."""
    boxes = np.array([[x - margin, y - margin, x + w + margin, y + h + margin] for x, y, w, h in (o.bbox for o in objects)])
    for index, item in enumerate(objects):
        x1, y1, x2, y2 = boxes[index]
        others = np.delete(boxes, index, axis=0)
        overlaps = (others[:, 0] < x2) & (others[:, 2] > x1) & (others[:, 1] < y2) & (others[:, 3] > y1)
        if not overlaps.any() and x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height:
            yield item


@pytest.fixture(scope="module")
def rendered():
    """24 rendered 256x256 images (arrays, before JPEG) and their objects."""
    return [render_image(3, "train", index, 256, 256) for index in range(24)]


def test_boxes_are_tight_and_classes_have_their_hue(rendered):
    checked = 0
    for pixels, objects in rendered:
        for item in isolated_objects(objects, 256, 256):
            x, y, w, h = (int(v) for v in item.bbox)
            hue = CLASSES[item.label].hue
            inside = saturated_hues(pixels[y:y + h, x:x + w])
            # the object's colour dominates its box, within its hue jitter (+ anti-aliasing and noise)
            assert np.median(hue_distance(inside, hue)) <= synthetic.HUE_JITTER + 4
            nearest = min(range(len(CLASSES)), key=lambda label: hue_distance(circular_mean(inside), CLASSES[label].hue))
            assert nearest == item.label
            # tight: each edge row/column shows the object (edge pixels are half covered, some in the
            # texture's darker shade: weaker thresholds), the frame 2 px outside (not covered at all) does not
            edges = [pixels[y, x:x + w], pixels[y + h - 1, x:x + w], pixels[y:y + h, x], pixels[y:y + h, x + w - 1]]
            assert all((hue_distance(saturated_hues(edge[None], 0.25, 0.12), hue) < 30).any() for edge in edges)
            frame = [pixels[y - 2, x - 2:x + w + 2], pixels[y + h + 1, x - 2:x + w + 2],
                     pixels[y - 2:y + h + 2, x - 2], pixels[y - 2:y + h + 2, x + w + 1]]
            assert not any((hue_distance(saturated_hues(side[None]), hue) < 30).any() for side in frame)
            checked += 1
    assert checked >= 30


def test_classes_differ_in_mean_colour(rendered):
    hues: dict[int, list[float]] = {}
    for pixels, objects in rendered:
        for item in isolated_objects(objects, 256, 256):
            x, y, w, h = (int(v) for v in item.bbox)
            crop = saturated_hues(pixels[y:y + h, x:x + w])
            if crop.size >= 10:
                hues.setdefault(item.label, []).append(circular_mean(crop))
    assert len(hues) >= 6
    means = {label: circular_mean(values) for label, values in hues.items()}
    for label, mean in means.items():
        others = [hue_distance(mean, other) for other_label, other in means.items() if other_label != label]
        assert min(others) > 15, (CLASSES[label].name, means)


def test_sizes_cover_coco_area_ranges_and_some_objects_are_cut_or_covered():
    rendered = [render_image(0, "val", index, 512, 512)[1] for index in range(12)]
    objects = [item for image_objects in rendered for item in image_objects]
    areas = np.array([item.area for item in objects])
    # COCO's area ranges (pycocotools COCOeval.Params.areaRng): small < 32^2 <= medium < 96^2 <= large
    assert (areas < 32**2).sum() >= 5 and ((areas >= 32**2) & (areas < 96**2)).sum() >= 5 and (areas >= 96**2).sum() >= 5
    boxes = np.array([item.bbox for item in objects])
    assert boxes[:, 2:].min() >= 4 and boxes[:, 2:].max() <= 0.6 * 512 + 3  # 8 px to 60% of the side (less when cut)
    touching = (boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 0] + boxes[:, 2] == 512) | (boxes[:, 1] + boxes[:, 3] == 512)
    assert touching.sum() >= 3
    overlapping = sum(len(image_objects) - len(list(isolated_objects(image_objects, 512, 512, margin=0)))
                      for image_objects in rendered)
    assert overlapping >= 5
    assert all(1 <= len(image_objects) <= 12 for image_objects in rendered)


def test_fewer_classes_uses_the_first_k_into_an_empty_folder(tmp_path):
    (tmp_path / "d").mkdir()
    generate_dataset(tmp_path / "d", 4, 0, (64, 64), seed=1, num_classes=3)
    coco = json.loads((tmp_path / "d" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["disc", "square", "triangle"]
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 2, 3}
    assert not (tmp_path / "d" / "val").exists()


def test_command_writes_the_dataset_and_refuses_to_clobber(tmp_path, capsys):
    output = tmp_path / "generated"
    argv = ["data", "synthetic", "--output", str(output), "--train-images", "3", "--val-images", "2",
            "--size", "64", "80", "--seed", "5", "--workers", "2"]
    assert main(argv) == 0
    assert "train: 3 images" in capsys.readouterr().out
    coco = COCO(str(output / "annotations" / "instances_val.json"))
    assert [(i["height"], i["width"]) for i in coco.imgs.values()] == [(64, 80)] * 2
    first = tree_bytes(output)

    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err and tree_bytes(output) == first
    assert main([*argv, "--seed", "6", "--overwrite"]) == 0
    assert tree_bytes(output).keys() == first.keys() and tree_bytes(output) != first

    (output / "notes.txt").write_text("mine")
    assert main([*argv, "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (output / "notes.txt").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--train-images", "-1"], "--train-images must be >= 0"),
        (["--train-images", "0", "--val-images", "0"], "nothing to generate"),
        (["--size", "16", "64"], "--size must be two integers"),
        (["--classes", "9"], "--classes must be in [1, 8]"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_bad_arguments_are_named(tmp_path, capsys, options, message):
    argv = ["data", "synthetic", "--output", str(tmp_path / "out"), "--train-images", "2", "--val-images", "1", *options]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls, render = [], synthetic._render_and_save

    def fail_on_third(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(job)

    monkeypatch.setattr(synthetic, "_render_and_save", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "out", 4, 2, (64, 64), seed=0, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_command_says_the_output_was_left_as_it_was(tmp_path, monkeypatch, capsys):
    output = tmp_path / "out"
    argv = ["data", "synthetic", "--output", str(output), "--train-images", "2", "--val-images", "0", "--size", "64", "64",
            "--workers", "1"]
    assert main(argv) == 0
    before = tree_bytes(output)
    capsys.readouterr()

    def interrupt(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_render_and_save", interrupt)
    assert main([*argv, "--overwrite", "--seed", "1"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted: {output} was left as it was"
    assert tree_bytes(output) == before
    assert main([*argv[:3], str(tmp_path / "new"), *argv[4:]]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted: nothing was written ({tmp_path / 'new'} does not exist)"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_refuses_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synthetic", "--output", ".", "--train-images", "1", "--val-images", "1"]) == 2
    assert "holds the current folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_output_below_a_file(tmp_path, capsys):
    """The shared output check (codetr.atomic.check_replaceable_dir) names the file in the way."""
    (tmp_path / "notes.txt").write_text("mine")
    output = tmp_path / "notes.txt" / "out"
    assert main(["data", "synthetic", "--output", str(output), "--train-images", "1", "--val-images", "1"]) == 2
    assert f"--output: cannot create directory {output}: {tmp_path / 'notes.txt'} is not a directory" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
