"""Reading images as 8-bit RGB tensors, whatever their bit depth, colour mode and orientation.

Decoding goes through Pillow, which opens more formats than torchvision's decoder (BMP, TIFF,
16-bit PNG, palette and CMYK images). Every image becomes uint8 RGB [3, H, W] with its EXIF
orientation applied; alpha is dropped (composited on black, as a plain RGB conversion does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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
