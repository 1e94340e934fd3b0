"""Calibration images for post-training quantization: which files, and feeding them to a model.

A calibration source is a folder of images or a COCO-format dataset folder (the layouts of
:func:`codetr.data.coco.resolve_dataset`, train split by default). The first ``count`` images in
file order are used, so a calibration run is reproducible. Each image is pre-processed exactly as
inference pre-processes it (:func:`codetr.preprocess.make_batch` with the model's config) and fed
one at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from codetr.config import PreprocessConfig
from codetr.data.coco import CocoDetection, resolve_dataset
from codetr.data.images import list_images, read_image
from codetr.preprocess import make_batch

DEFAULT_CALIBRATION_IMAGES = 512


@dataclasses.dataclass(frozen=True)
class CalibrationSet:
    """The images a calibration uses.

    ``source``: the folder given; ``kind``: "folder" or "coco"; ``annotation_file``: the COCO
    file (None for a folder); ``paths``: the images used; ``available``: how many the source has.
    """

    source: Path
    kind: str
    paths: tuple[Path, ...]
    available: int
    annotation_file: Path | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "source": str(self.source),
            "kind": self.kind,
            "annotation_file": str(self.annotation_file) if self.annotation_file else None,
            "images": len(self.paths),
            "available": self.available,
            "selection": "the first images in file order",
        }


def calibration_set(source: str | Path, count: int | None = DEFAULT_CALIBRATION_IMAGES, split: str = "train") -> CalibrationSet:
    """The first ``count`` images (None: all) of ``source``.

    ``source`` is a COCO-format dataset folder when it has an ``annotations`` subfolder (then
    ``split`` picks the annotation file), else a folder of images. Raises FileNotFoundError
    (naming the folder) when it does not exist or holds no image, PermissionError when it cannot be
    listed, ValueError for ``count`` < 1; a COCO dataset's errors come from
    :class:`codetr.data.coco.CocoDetection`.
    """
    source = Path(source)
    if count is not None and count < 1:
        raise ValueError(f"calibration images: need at least 1, got {count}")
    if not source.is_dir():
        raise FileNotFoundError(f"calibration data: no such folder {source}")
    annotation_file = None
    if (source / "annotations").is_dir():
        annotation_file, image_dir = resolve_dataset(source, split)
        dataset = CocoDetection(annotation_file, image_dir)
        paths = [image_dir / dataset.image_info(index)["file_name"] for index in range(len(dataset))]
        kind = "coco"
    else:
        try:
            paths = list_images(source)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"calibration data: {error}") from None
        except PermissionError as error:
            raise PermissionError(f"calibration data: cannot read folder {source}: {error.strerror}") from None
        kind = "folder"
    if not paths:
        raise FileNotFoundError(f"calibration data: {source} holds no images")
    chosen = paths if count is None else paths[:count]
    return CalibrationSet(source, kind, tuple(chosen), len(paths), annotation_file)


def calibration_batches(images: CalibrationSet, preprocess: PreprocessConfig, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images [1, 3, H, W] float32 0-255, image_sizes [1, 2] int64) per calibration image, on
    ``device``, pre-processed as inference does. Raises the image reader's errors naming a file."""
    for path in images.paths:
        batch = make_batch([read_image(path)], preprocess)
        yield batch.images.to(device), batch.image_sizes.to(device)


def forward_loop(images: CalibrationSet, preprocess: PreprocessConfig, device: torch.device,
                 progress: bool = False) -> Callable[[torch.nn.Module], None]:
    """A calibration loop (ModelOpt's ``forward_loop``): runs the model on every image, no grad."""

    def run(model: torch.nn.Module) -> None:
        batches = calibration_batches(images, preprocess, device)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, total=len(images.paths), desc="calibrating", unit="image")
        with torch.no_grad():
            for batch_images, image_sizes in batches:
                model(batch_images, image_sizes)

    return run
