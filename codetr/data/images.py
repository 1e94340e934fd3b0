"""Reading images as 8-bit RGB tensors, whatever their bit depth, colour mode and orientation.

Decoding goes through Pillow, which opens more formats than torchvision's decoder (BMP, TIFF,
16-bit PNG, palette and CMYK images). Every image becomes uint8 RGB [3, H, W] with its EXIF
orientation applied; alpha is dropped (composited on black, as a plain RGB conversion does).
:func:`image_loader` decodes a list of files in DataLoader workers, carrying read failures as
records instead of raising.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
"""File suffixes treated as images when a folder is listed (all decoded by Pillow)."""


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded; the message names the file."""


def read_image(path: str | Path) -> torch.Tensor:
    """The image at ``path`` as uint8 RGB [3, H, W], EXIF orientation applied.

    16- and 32-bit images are scaled to 8 bits (a 16-bit value v becomes round(v / 257)), not
    clamped; grayscale, palette, RGBA and CMYK images are converted to RGB. Raises
    FileNotFoundError for a missing file and :class:`ImageReadError` for one Pillow cannot decode.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            array = _to_rgb8(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"cannot decode image {path}: {error}") from None
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """[H, W, 3] uint8 of a Pillow image in any mode."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit PNGs (and TIFFs) open as I;16 or I with values 0-65535; float images as F in 0-1 or 0-255.
        full_scale = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            full_scale = 1.0
        gray = np.clip(np.rint(values / full_scale * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def list_images(source: str | Path) -> list[Path]:
    """``source`` itself if it is a file, else the images (by :data:`IMAGE_SUFFIXES`) directly in
    the folder, sorted by name. FileNotFoundError if it does not exist or holds no image."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        images = sorted(path for path in source.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {source}")
        return images
    raise FileNotFoundError(f"no such file or folder: {source}")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One listed image after decoding: ``image`` uint8 RGB [3, H, W], or None with ``error`` (the
    message of the FileNotFoundError / ImageReadError that :func:`read_image` raised)."""

    index: int
    path: Path
    image: torch.Tensor | None
    error: str | None = None


class ImageFolderDataset(Dataset):
    """The images at ``paths`` (e.g. from :func:`list_images`), decoded by :func:`read_image` —
    in DataLoader workers when used with :func:`image_loader`. A file that cannot be read
    becomes an :class:`ImageRecord` carrying the error instead of raising, so one bad file does
    not stop the others."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(path) for path in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> ImageRecord:
        path = self.paths[index]
        try:
            return ImageRecord(index, path, read_image(path))
        except (FileNotFoundError, ImageReadError) as error:
            return ImageRecord(index, path, None, str(error))


def collate_records(records: list[ImageRecord]) -> list[ImageRecord]:
    """DataLoader collate function: the records as a list (images differ in size; no stacking)."""
    return records


def image_loader(paths: Sequence[str | Path], batch_size: int = 1, workers: int = 0) -> DataLoader:
    """A DataLoader yielding lists of ``batch_size`` :class:`ImageRecord` in ``paths`` order,
    decoded in ``workers`` worker processes (0: in this process)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    return DataLoader(
        ImageFolderDataset(paths), batch_size=batch_size, num_workers=workers, collate_fn=collate_records
    )
