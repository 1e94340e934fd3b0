"""COCO-format detection datasets: reading an annotation file and its images as tensors.

Labels are contiguous indices 0..K-1 in the order of the file's categories sorted by id (as
mmdetection's CocoDataset maps ``cat_ids``); :attr:`CocoDetection.category_ids` maps them back.
Boxes are converted from COCO's [x, y, w, h] to [x1, y1, x2, y2] pixels. As mmdetection's
CocoDataset does, an annotation whose box has w < 1 or h < 1, area <= 0, or no overlap with
the image is left out; crowd annotations (``iscrowd`` 1) are kept and flagged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from codetr.data.images import read_image

_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANNOTATION_KEYS = ("image_id", "category_id", "bbox")
_CATEGORY_KEYS = ("id", "name")


class CocoSample(NamedTuple):
    """One image and its ground truth.

    image: uint8 [3, H, W] RGB; boxes: float32 [N, 4] x1, y1, x2, y2 in image pixels;
    labels: int64 [N] in 0..K-1; iscrowd: bool [N].
    """

    image: torch.Tensor
    image_id: int
    file_name: str
    boxes: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor


class CocoDetection(Dataset):
    """A COCO-format annotation file over a folder of images, item i = :class:`CocoSample`.

    Images keep the file's order. The file is read and checked when the dataset is made;
    an image is read when its item is: a missing image raises FileNotFoundError naming it, an
    undecodable one :class:`codetr.data.images.ImageReadError`. Raises FileNotFoundError for a
    missing annotation file or image folder and ValueError (naming the file and the key) for
    invalid JSON, missing keys, unknown image or category ids, and a file without images or
    categories.
    """

    def __init__(self, annotation_file: str | Path, image_dir: str | Path) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        data = _load_json(self.annotation_file)
        where = str(self.annotation_file)
        images = _entries(data, "images", _IMAGE_KEYS, where)
        categories = _entries(data, "categories", _CATEGORY_KEYS, where)
        annotations = _entries(data, "annotations", _ANNOTATION_KEYS, where)
        if not images:
            raise ValueError(f"{where}: the dataset is empty ('images' lists no image)")
        if not categories:
            raise ValueError(f"{where}: 'categories' lists no category")

        self.categories: list[dict] = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in categories),
                                             key=lambda category: category["id"])
        self.category_ids: tuple[int, ...] = tuple(category["id"] for category in self.categories)
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"{where}: 'categories' repeats a category id")
        self.class_names: tuple[str, ...] = tuple(category["name"] for category in self.categories)
        label_of = {category_id: label for label, category_id in enumerate(self.category_ids)}

        self._images = [{key: image[key] for key in _IMAGE_KEYS} for image in images]
        self.image_ids: tuple[int, ...] = tuple(int(image["id"]) for image in self._images)
        position = {image_id: index for index, image_id in enumerate(self.image_ids)}
        if len(position) != len(self.image_ids):
            raise ValueError(f"{where}: 'images' repeats an image id")
        self._targets: list[list[tuple[list[float], int, bool]]] = [[] for _ in self._images]
        for index, annotation in enumerate(annotations):
            image_id, category_id, bbox = annotation["image_id"], annotation["category_id"], annotation["bbox"]
            if image_id not in position:
                raise ValueError(f"{where}: annotations[{index}] has image_id {image_id}, which 'images' does not list")
            if category_id not in label_of:
                raise ValueError(f"{where}: annotations[{index}] has category_id {category_id}, "
                                 f"which 'categories' does not list")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise ValueError(f"{where}: annotations[{index}] 'bbox' must be [x, y, w, h] numbers, got {bbox!r}")
            image = self._images[position[image_id]]
            if not _usable_box(bbox, annotation.get("area"), image["width"], image["height"]):
                continue
            x, y, w, h = (float(v) for v in bbox)
            self._targets[position[image_id]].append(([x, y, x + w, y + h], label_of[category_id],
                                                      bool(annotation.get("iscrowd", 0))))

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> CocoSample:
        info = self._images[index]
        image = read_image(self.image_dir / info["file_name"])
        targets = self._targets[index]
        return CocoSample(
            image=image,
            image_id=int(info["id"]),
            file_name=str(info["file_name"]),
            boxes=torch.tensor([box for box, _, _ in targets], dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor([label for _, label, _ in targets], dtype=torch.int64),
            iscrowd=torch.tensor([crowd for _, _, crowd in targets], dtype=torch.bool),
        )

    def image_info(self, index: int) -> dict:
        """The file's ``images`` entry of item ``index``: id, file_name, height, width."""
        return dict(self._images[index])


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO JSON object with 'images', 'annotations', 'categories', "
                         f"got a {type(data).__name__}")
    return data


def _entries(data: dict, key: str, required: tuple[str, ...], where: str) -> list[dict]:
    if key not in data:
        raise ValueError(f"{where}: missing key '{key}' (a COCO detection file has 'images', 'annotations' "
                         f"and 'categories')")
    entries = data[key]
    if not isinstance(entries, list):
        raise ValueError(f"{where}: '{key}' must be a list, got {type(entries).__name__}")
    for index, entry in enumerate(entries):
        missing = [name for name in required if not isinstance(entry, dict) or name not in entry]
        if missing:
            raise ValueError(f"{where}: {key}[{index}] lacks {', '.join(repr(m) for m in missing)}")
    return entries


def _usable_box(bbox: list[float], area: float | None, width: int, height: int) -> bool:
    """mmdetection's CocoDataset.parse_data_info rule for keeping a box."""
    x, y, w, h = bbox
    overlap_w = max(0.0, min(x + w, width) - max(x, 0.0))
    overlap_h = max(0.0, min(y + h, height) - max(y, 0.0))
    return overlap_w * overlap_h > 0 and w >= 1 and h >= 1 and (area is None or area > 0)


def resolve_dataset(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of ``split`` in a dataset folder (``--data DIR``).

    Looks for the COCO 2017 layout, ``annotations/instances_{split}2017.json`` with
    ``{split}2017/``, then the generated layout (``codetr data synthetic``),
    ``annotations/instances_{split}.json`` with ``{split}/``. FileNotFoundError lists what was
    looked for when neither annotation file exists, or names the missing image folder.
    """
    data_dir = Path(data_dir)
    layouts = [(data_dir / "annotations" / f"instances_{split}2017.json", data_dir / f"{split}2017"),
               (data_dir / "annotations" / f"instances_{split}.json", data_dir / split)]
    for annotation_file, image_dir in layouts:
        if annotation_file.is_file():
            if not image_dir.is_dir():
                raise FileNotFoundError(f"--data {data_dir}: found {annotation_file} but not its image folder {image_dir}")
            return annotation_file, image_dir
    looked_for = " or ".join(f"{a} with {i}/" for a, i in layouts)
    raise FileNotFoundError(f"--data {data_dir}: no '{split}' split found; looked for {looked_for}")
