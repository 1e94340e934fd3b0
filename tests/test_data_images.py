"""Decoding a list of image files in DataLoader workers (codetr.data.images.image_loader)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codetr.data.images import ImageFolderDataset, image_loader


def write_images(folder: Path) -> list[Path]:
    paths = []
    for index in range(5):
        path = folder / f"{index}.png"
        pixels = np.full((10 + index, 20, 3), 40 * index, dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_a_bad_file_becomes_a_record_with_its_error(tmp_path: Path) -> None:
    good, broken, missing = tmp_path / "good.png", tmp_path / "broken.png", tmp_path / "missing.png"
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(good)
    broken.write_bytes(b"\x89PNG truncated")
    dataset = ImageFolderDataset([good, broken, missing])
    records = [dataset[index] for index in range(len(dataset))]
    assert records[0].image.shape == (3, 4, 6) and records[0].error is None
    assert records[1].image is None and f"cannot decode image {broken}" in records[1].error
    assert records[2].image is None and f"image not found: {missing}" in records[2].error
    assert [record.index for record in records] == [0, 1, 2]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_keeps_the_order_in_batches(tmp_path: Path, workers: int) -> None:
    paths = write_images(tmp_path)
    batches = list(image_loader(paths, batch_size=2, workers=workers))
    assert [len(batch) for batch in batches] == [2, 2, 1]
    records = [record for batch in batches for record in batch]
    assert [record.path for record in records] == paths
    assert [record.image.shape[1] for record in records] == [10, 11, 12, 13, 14]
    assert [int(record.image[0, 0, 0]) for record in records] == [0, 40, 80, 120, 160]


def test_loader_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch size must be at least 1, got 0"):
        image_loader([], batch_size=0)
    with pytest.raises(ValueError, match="workers must be 0 or more, got -1"):
        image_loader([], workers=-1)
