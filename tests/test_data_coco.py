"""COCO-format datasets (codetr.data.coco): CocoDetection and resolve_dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from codetr.data.coco import CocoDetection, resolve_dataset
from codetr.data.images import ImageReadError


def write_dataset(root: Path, data: dict, images: dict[str, tuple[int, int]]) -> tuple[Path, Path]:
    """data as root/ann.json; each images name -> (height, width) as a PNG of that size in root/images."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    for index, (name, (height, width)) in enumerate(images.items()):
        pixels = np.full((height, width, 3), 40 * index, dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / name)
    annotation_file = root / "ann.json"
    annotation_file.write_text(json.dumps(data))
    return annotation_file, image_dir


HAND_BUILT = {
    "images": [{"id": 42, "file_name": "b.png", "height": 20, "width": 30},
               {"id": 7, "file_name": "a.png", "height": 10, "width": 12}],
    "annotations": [
        {"id": 1, "image_id": 42, "category_id": 9, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0},
        {"id": 2, "image_id": 42, "category_id": 3, "bbox": [0.5, 0.25, 4.5, 6], "area": 27, "iscrowd": 1},
        {"id": 3, "image_id": 42, "category_id": 3, "bbox": [5, 5, 0.5, 4], "area": 2, "iscrowd": 0},  # w < 1: dropped
        {"id": 4, "image_id": 42, "category_id": 9, "bbox": [40, 5, 4, 4], "area": 16, "iscrowd": 0},  # outside: dropped
        {"id": 5, "image_id": 42, "category_id": 9, "bbox": [2, 2, 4, 4], "area": 0, "iscrowd": 0},  # area 0: dropped
    ],
    "categories": [{"id": 9, "name": "nine"}, {"id": 3, "name": "three"}],
}


def test_hand_built_file(tmp_path):
    dataset = CocoDetection(*write_dataset(tmp_path, HAND_BUILT, {"b.png": (20, 30), "a.png": (10, 12)}))
    assert len(dataset) == 2 and dataset.image_ids == (42, 7)  # the file's order
    assert dataset.categories == [{"id": 3, "name": "three"}, {"id": 9, "name": "nine"}]
    assert dataset.category_ids == (3, 9) and dataset.class_names == ("three", "nine")
    assert dataset.annotation_file == tmp_path / "ann.json"

    sample = dataset[0]
    assert sample.image.dtype == torch.uint8 and sample.image.shape == (3, 20, 30)
    assert sample.image_id == 42 and sample.file_name == "b.png"
    assert sample.boxes.dtype == torch.float32
    assert sample.boxes.tolist() == [[1, 2, 11, 7], [0.5, 0.25, 5, 6.25]]
    assert sample.labels.dtype == torch.int64 and sample.labels.tolist() == [1, 0]
    assert sample.iscrowd.dtype == torch.bool and sample.iscrowd.tolist() == [False, True]

    empty = dataset[1]  # an image without annotations
    assert empty.image.shape == (3, 10, 12) and empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    assert empty.iscrowd.shape == (0,)


def test_generated_dataset_matches_pycocotools(synthetic_dataset):
    annotation_file, image_dir = resolve_dataset(synthetic_dataset, "val")
    dataset = CocoDetection(annotation_file, image_dir)
    coco = COCO(str(annotation_file))
    category_ids = sorted(coco.getCatIds())
    assert dataset.category_ids == tuple(category_ids)
    assert list(dataset.class_names) == [coco.cats[i]["name"] for i in category_ids]
    for sample in dataset:
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[sample.image_id]))
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)])
        assert torch.equal(sample.boxes, expected.float())
        assert sample.labels.tolist() == [category_ids.index(a["category_id"]) for a in annotations]
        info = coco.imgs[sample.image_id]
        assert sample.image.shape == (3, info["height"], info["width"])
        assert sample.file_name == info["file_name"]


def test_resolve_dataset_layouts(tmp_path):
    coco_layout = tmp_path / "coco"
    (coco_layout / "annotations").mkdir(parents=True)
    (coco_layout / "annotations" / "instances_val2017.json").write_text("{}")
    (coco_layout / "val2017").mkdir()
    assert resolve_dataset(coco_layout, "val") == (coco_layout / "annotations" / "instances_val2017.json",
                                                   coco_layout / "val2017")

    generated = tmp_path / "generated"
    (generated / "annotations").mkdir(parents=True)
    (generated / "annotations" / "instances_train.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"found .*instances_train\.json but not its image folder .*train"):
        resolve_dataset(generated, "train")
    (generated / "train").mkdir()
    assert resolve_dataset(generated, "train") == (generated / "annotations" / "instances_train.json", generated / "train")

    with pytest.raises(FileNotFoundError, match=r"no 'val' split found; looked for .*instances_val2017\.json .*instances_val\.json"):
        resolve_dataset(generated, "val")


def broken(data: dict, change) -> dict:
    data = json.loads(json.dumps(data))
    change(data)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (broken(HAND_BUILT, lambda d: d.pop("categories")), r"missing key 'categories'"),
        (broken(HAND_BUILT, lambda d: d["annotations"][1].pop("bbox")), r"annotations\[1\] lacks 'bbox'"),
        (broken(HAND_BUILT, lambda d: d["images"][0].pop("file_name")), r"images\[0\] lacks 'file_name'"),
        (broken(HAND_BUILT, lambda d: d["annotations"][0].update(image_id=5)), r"image_id 5, which 'images' does not list"),
        (broken(HAND_BUILT, lambda d: d["annotations"][0].update(category_id=4)), r"category_id 4, which 'categories'"),
        (broken(HAND_BUILT, lambda d: d["annotations"][0].update(bbox=[1, 2, 3])), r"'bbox' must be \[x, y, w, h\]"),
        (broken(HAND_BUILT, lambda d: d.update(images=[], annotations=[])), r"the dataset is empty"),
        (broken(HAND_BUILT, lambda d: d.update(categories=[], annotations=[])), r"lists no category"),
        (broken(HAND_BUILT, lambda d: d.update(images={})), r"'images' must be a list"),
        ([], r"expected a COCO JSON object"),
    ],
)
def test_invalid_annotation_files_are_named(tmp_path, data, message):
    annotation_file, image_dir = write_dataset(tmp_path, data, {})
    with pytest.raises(ValueError, match=message) as error:
        CocoDetection(annotation_file, image_dir)
    assert str(annotation_file) in str(error.value)


def test_missing_or_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found: .*nothing.json"):
        CocoDetection(tmp_path / "nothing.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder not found: .*no_folder"):
        CocoDetection(tmp_path / "nothing.json", tmp_path / "no_folder")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        CocoDetection(tmp_path / "bad.json", tmp_path)

    annotation_file, image_dir = write_dataset(tmp_path / "d", HAND_BUILT, {"b.png": (20, 30)})
    dataset = CocoDetection(annotation_file, image_dir)  # a missing image fails only when its item is read
    assert dataset[0].image.shape == (3, 20, 30)
    with pytest.raises(FileNotFoundError, match=r"a\.png"):
        dataset[1]
    (image_dir / "a.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"a\.png"):
        dataset[1]
