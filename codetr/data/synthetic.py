"""A generated COCO-format detection dataset: coloured, textured shapes on cluttered backgrounds.

Public datasets cannot be downloaded where codetr is tested, so it makes its own: K classes
(at most :data:`CLASSES`, default all 8) that differ in shape, hue and texture, 1-12 objects per
image with diameters from 8 px to 60% of the shorter image side (so COCO's small, medium and large
area ranges all occur), partial occlusion and objects truncated at the image border.

Annotation conventions (COCO's, for a detector trained and evaluated with COCO's tools):

- ``bbox`` [x, y, w, h] in pixels is the tight box of the object's *visible* pixels: clipped at
  the image border and shrunk where a later object covers part of it. COCO's boxes are likewise
  the extent of the visible-region polygon. A pixel belongs to an object when the anti-aliased
  shape covers at least half of it and no later object does.
- ``area`` is the visible pixel count (COCO's ``area`` is the segmentation area, not w*h); it
  selects COCO's small/medium/large ranges (area < 32**2, < 96**2, >= 96**2).
- Every object keeps at least :data:`MIN_VISIBLE` of its pixels visible (inside the image and
  not covered): a placement that would break this for it or an earlier object is retried
  elsewhere, and dropped after a few tries. So no image holds an unannotated object remnant.
- Background clutter (lines, arcs, irregular blobs) is grey-ish, never a class shape or hue.

Each image is rendered from its own random generator seeded by (seed, split, index), so the
output is byte-identical for a seed whatever the number of worker processes (numpy's generator
streams and Pillow's JPEG encoder may change between their versions: regenerate rather than
compare datasets across installations). Images are JPEG (quality 95, no chroma subsampling),
named ``{image_id:012d}.jpg`` as COCO's are; image and annotation ids count from 1 per split.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from codetr.atomic import atomic_dir, check_replaceable_dir

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
"""Split names, in the order they are generated; also their seed index."""

MIN_VISIBLE = 0.5
"""Smallest fraction of an object's pixels that stays visible (in the image, not occluded)."""

MIN_VISIBLE_PIXELS = 16
"""Smallest visible pixel count of a partly hidden object (no slivers)."""

MIN_DIAMETER = 8.0
"""Smallest object diameter in pixels."""

MAX_DIAMETER_FRACTION = 0.6
"""Largest object diameter as a fraction of the shorter image side."""

MAX_OBJECTS = 12
"""Objects per image are drawn uniformly from 1..MAX_OBJECTS (before dropped placements)."""

TRUNCATED_SHARE = 0.3
"""Share of placements that may cross the image border."""

PLACEMENT_TRIES = 20
"""Positions tried for an object before it is dropped."""

JPEG_QUALITY = 95

SUPERSAMPLING = 3
"""Shapes are drawn at this multiple of the image resolution and box-filtered: anti-aliased edges."""

MIN_SIZE, MAX_SIZE = 32, 8192
"""Allowed image height and width in pixels."""


@dataclass(frozen=True)
class ShapeClass:
    """One object class: its shape, hue (degrees) and surface texture."""

    name: str
    hue: float
    texture: str  # "solid", "stripes", "dots" or "checker"


CLASSES = (
    ShapeClass("disc", 0.0, "solid"),  # red
    ShapeClass("square", 120.0, "stripes"),  # green
    ShapeClass("triangle", 225.0, "solid"),  # blue
    ShapeClass("ring", 55.0, "solid"),  # yellow
    ShapeClass("cross", 300.0, "dots"),  # magenta
    ShapeClass("star", 28.0, "checker"),  # orange
    ShapeClass("ellipse", 185.0, "stripes"),  # cyan
    ShapeClass("hexagon", 265.0, "dots"),  # violet
)
"""The classes, in category id order (id = position + 1); ``--classes K`` uses the first K."""

HUE_JITTER = 8.0
"""Degrees an object's hue may differ from its class hue (the nearest classes are 27 apart)."""


class SyntheticObject(NamedTuple):
    """One annotated object: label in 0..K-1, visible box [x, y, w, h] and visible pixel count."""

    label: int
    bbox: tuple[float, float, float, float]
    area: int


class SplitSummary(NamedTuple):
    """What :func:`generate_dataset` wrote for one split."""

    split: str
    images: int
    objects: int


@dataclass(frozen=True)
class _Job:
    seed: int
    split: str
    index: int
    height: int
    width: int
    num_classes: int
    image_path: Path


# ---- shapes ------------------------------------------------------------------------------------

def _regular_polygon(vertices: int, radius: float, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(vertices) / vertices
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _outline(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Polygons of a shape of diameter 1 centred on 0: the first is filled, later ones are holes."""
    circle = _regular_polygon(96, 0.5)
    if name == "disc":
        return [circle]
    if name == "ellipse":
        return [circle * np.array([1.0, rng.uniform(0.45, 0.65)])]
    if name == "ring":
        return [circle, circle * rng.uniform(0.5, 0.62)]
    if name == "square":
        return [_regular_polygon(4, 0.5, math.pi / 4)]
    if name == "triangle":
        return [_regular_polygon(3, 0.5, -math.pi / 2)]
    if name == "hexagon":
        return [_regular_polygon(6, 0.5)]
    if name == "star":
        radii = np.tile([0.5, 0.21], 5)
        angles = -math.pi / 2 + math.pi * np.arange(10) / 5
        return [radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)]
    if name == "cross":
        a, b = 0.48, 0.16  # arm length and half-width: a plus sign
        return [np.array([(b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b),
                          (-a, b), (-b, b), (-b, a), (b, a)])]
    raise ValueError(f"unknown shape {name!r}")


def _coverage(polygons: list[np.ndarray], diameter: float, angle: float, offset: np.ndarray, canvas: int) -> np.ndarray:
    """[canvas, canvas] float32 in [0, 1]: how much of each pixel the rotated, scaled shape covers."""
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    fine = canvas * SUPERSAMPLING
    mask = Image.new("L", (fine, fine), 0)
    draw = ImageDraw.Draw(mask)
    centre = (canvas / 2 + offset) * SUPERSAMPLING
    for fill, polygon in zip((255, 0), polygons):
        points = polygon @ rotation.T * diameter * SUPERSAMPLING + centre
        draw.polygon([tuple(point) for point in points], fill=fill)
    coverage = mask.reduce(SUPERSAMPLING)  # box filter: the mean of each SUPERSAMPLING^2 block
    return np.asarray(coverage, dtype=np.float32) / 255.0


def _hsv(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_degrees / 360.0) % 1.0, saturation, value), dtype=np.float32) * 255.0


def _surface(shape: ShapeClass, rng: np.random.Generator, diameter: float, angle: float, canvas: int) -> np.ndarray:
    """[canvas, canvas, 3] float32 colours of the object: class hue, its texture, a light gradient."""
    colour = _hsv(shape.hue + rng.uniform(-HUE_JITTER, HUE_JITTER), rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))
    second = colour * 0.5  # the texture's darker shade keeps the hue
    coordinates = np.arange(canvas, dtype=np.float32) - canvas / 2
    y, x = np.meshgrid(coordinates, coordinates, indexing="ij")
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    period = max(3.0, diameter * rng.uniform(0.14, 0.2))
    if shape.texture == "solid":
        pattern = np.zeros_like(u, dtype=bool)
    elif shape.texture == "stripes":
        pattern = np.floor(u / period) % 2 == 1
    elif shape.texture == "checker":
        pattern = (np.floor(u / period) + np.floor(v / period)) % 2 == 1
    elif shape.texture == "dots":
        du, dv = u / period - np.round(u / period), v / period - np.round(v / period)
        pattern = du * du + dv * dv < 0.09
    else:
        raise ValueError(f"unknown texture {shape.texture!r}")
    surface = np.where(pattern[..., None], second, colour)
    light = 1.0 + 0.3 * rng.uniform(-1, 1) * u / max(diameter, 1.0)  # up to +-15% across the object
    return surface * light[..., None]


# ---- backgrounds -------------------------------------------------------------------------------

def _dull_colour(rng: np.random.Generator) -> np.ndarray:
    """A colour no object has: saturation at most 0.2 (objects have 0.65 or more)."""
    return _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.2), rng.uniform(0.3, 0.85))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W, 3] float32: a linear gradient between dull colours with smooth blotches, then clutter."""
    grid = int(rng.integers(3, 9))  # the field is drawn on a grid x grid lattice and interpolated
    y, x = np.meshgrid(np.linspace(-1, 1, grid, dtype=np.float32), np.linspace(-1, 1, grid, dtype=np.float32), indexing="ij")
    direction = rng.uniform(0, 2 * math.pi)
    ramp = ((x * math.cos(direction) + y * math.sin(direction)) * 0.5 + 0.5)[..., None]
    field = _dull_colour(rng) * (1 - ramp) + _dull_colour(rng) * ramp
    field += rng.normal(0.0, rng.uniform(5, 20), size=(grid, grid, 1))  # brightness blotches
    field += rng.normal(0.0, 3.0, size=(grid, grid, 3))  # and a little tint
    lattice = Image.fromarray(np.clip(field + 0.5, 0, 255).astype(np.uint8))
    canvas = lattice.resize((width, height), Image.BICUBIC, reducing_gap=None)
    draw = ImageDraw.Draw(canvas)
    side = min(height, width)
    for _ in range(rng.integers(0, 9)):
        colour = tuple(int(c) for c in _dull_colour(rng))
        kind = rng.integers(3)
        if kind == 0:
            draw.line([tuple(rng.uniform(0, (width, height))) for _ in range(2)], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:
            centre, radius = rng.uniform(0, (width, height)), rng.uniform(0.05, 0.3) * side
            start = rng.uniform(0, 360)
            draw.arc([*(centre - radius), *(centre + radius)], start, start + rng.uniform(30, 200), fill=colour,
                     width=int(rng.integers(1, 4)))
        else:  # an irregular blob: 7-12 vertices at random angles and radii
            count = int(rng.integers(7, 13))
            angles = np.sort(rng.uniform(0, 2 * math.pi, count))
            radii = rng.uniform(0.3, 1.0, count) * rng.uniform(0.02, 0.12) * side
            centre = rng.uniform(0, (width, height))
            points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            draw.polygon([tuple(point) for point in points], fill=colour)
    return np.asarray(canvas, dtype=np.float32)


# ---- one image ---------------------------------------------------------------------------------

def render_image(seed: int, split: str, index: int, height: int, width: int, num_classes: int = len(CLASSES)
                 ) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Image ``index`` of ``split`` for ``seed``: uint8 [H, W, 3] RGB and its objects (in drawing order).

    A pure function of its arguments (its generator is seeded by (seed, split, index)).
    """
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int16)  # which object each pixel shows, -1: background
    windows: list[tuple[int, int, int]] = []  # canvas top, left, size
    full_pixels: list[int] = []
    visible_pixels: list[int] = []
    labels: list[int] = []
    largest = MAX_DIAMETER_FRACTION * min(height, width)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        label = int(rng.integers(num_classes))
        shape = CLASSES[label]
        diameter = math.exp(rng.uniform(math.log(MIN_DIAMETER), math.log(largest)))
        angle = rng.uniform(0, 2 * math.pi)
        canvas = math.ceil(diameter) + 2
        coverage = _coverage(_outline(shape.name, rng), diameter, angle, rng.uniform(-0.5, 0.5, 2), canvas)
        solid = coverage >= 0.5
        full = int(solid.sum())
        # the first object stays inside the image: every image has one object at least
        margin = canvas // 2 if labels and rng.uniform() < TRUNCATED_SHARE else 0
        for _ in range(PLACEMENT_TRIES):
            top = int(rng.integers(-margin, height - canvas + margin + 1))
            left = int(rng.integers(-margin, width - canvas + margin + 1))
            inside = (slice(max(top, 0), min(top + canvas, height)), slice(max(left, 0), min(left + canvas, width)))
            local = solid[inside[0].start - top:inside[0].stop - top, inside[1].start - left:inside[1].stop - left]
            shown = int(local.sum())
            if not _visible_enough(shown, full):
                continue
            covered = np.bincount(owner[inside][local] + 1, minlength=len(labels) + 1)[1:]
            if all(_visible_enough(visible_pixels[i] - int(covered[i]), full_pixels[i]) for i in np.flatnonzero(covered)):
                break
        else:
            continue  # no room for it
        for i in np.flatnonzero(covered):
            visible_pixels[i] -= int(covered[i])
        region = owner[inside]
        region[local] = len(labels)
        alpha = coverage[inside[0].start - top:inside[0].stop - top, inside[1].start - left:inside[1].stop - left, None]
        surface = _surface(shape, rng, diameter, angle, canvas)
        surface = surface[inside[0].start - top:inside[0].stop - top, inside[1].start - left:inside[1].stop - left]
        image[inside] = image[inside] * (1 - alpha) + surface * alpha
        labels.append(label)
        full_pixels.append(full)
        visible_pixels.append(shown)
        windows.append((top, left, canvas))
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * rng.uniform(1.0, 5.0)  # sensor noise (grey)
    objects = []
    for number, (label, (top, left, canvas)) in enumerate(zip(labels, windows)):
        y0, x0 = max(top, 0), max(left, 0)
        mine = owner[y0:top + canvas, x0:left + canvas] == number
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        bbox = (float(x0 + cols[0]), float(y0 + rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))
        objects.append(SyntheticObject(label, bbox, int(mine.sum())))
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), objects


def _visible_enough(visible: int, full: int) -> bool:
    """Whether an object of ``full`` pixels, ``visible`` of them shown, stays annotatable (always
    true for a fully visible one, so the first object of an image placed inside it is never dropped)."""
    return visible >= MIN_VISIBLE * full and visible >= min(full, MIN_VISIBLE_PIXELS)


def _render_and_save(job: _Job) -> list[SyntheticObject]:
    pixels, objects = render_image(job.seed, job.split, job.index, job.height, job.width, job.num_classes)
    Image.fromarray(pixels).save(job.image_path, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return objects


# ---- the dataset -------------------------------------------------------------------------------

def image_file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def check_arguments(train_images: int, val_images: int, size: Sequence[int], num_classes: int, workers: int) -> None:
    """ValueError naming the option for image counts, sizes, class or worker counts out of range."""
    for option, count in (("--train-images", train_images), ("--val-images", val_images)):
        if count < 0:
            raise ValueError(f"{option} must be >= 0, got {count}")
    if train_images + val_images == 0:
        raise ValueError("--train-images and --val-images are both 0: nothing to generate")
    if len(size) != 2 or not all(MIN_SIZE <= side <= MAX_SIZE for side in size):
        raise ValueError(f"--size must be two integers H W in [{MIN_SIZE}, {MAX_SIZE}], got {' '.join(map(str, size))}")
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"--classes must be in [1, {len(CLASSES)}], got {num_classes}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")


def generate_dataset(output: Path, train_images: int, val_images: int, size: Sequence[int], seed: int,
                     num_classes: int = len(CLASSES), workers: int = 1, overwrite: bool = False,
                     progress: bool = False) -> list[SplitSummary]:
    """Write the dataset to ``output``: ``annotations/instances_{split}.json`` and ``{split}/*.jpg``.

    A split with 0 images is not written. The dataset is built in a hidden sibling folder and
    swapped in when complete (:func:`codetr.atomic.atomic_dir`), so an interrupted run leaves no
    partial dataset and ``output`` as it was.
    ``output`` must not exist or be empty; with ``overwrite`` an earlier generated dataset (a
    folder holding only ``annotations``, ``train`` and ``val``) is replaced. ``workers`` processes
    render the images; the output does not depend on their number. Raises ValueError for bad
    arguments and OSError (FileExistsError for an occupied ``output``) for an ``output`` that
    cannot be written (:func:`codetr.atomic.check_replaceable_dir`).
    """
    output = Path(output)
    check_arguments(train_images, val_images, size, num_classes, workers)
    _check_output(output, overwrite)
    height, width = size
    with atomic_dir(output) as staging:
        (staging / "annotations").mkdir()
        summaries = []
        for split, count in zip(SPLITS, (train_images, val_images)):
            if count == 0:
                continue
            (staging / split).mkdir()
            jobs = [_Job(seed, split, index, height, width, num_classes, staging / split / image_file_name(index + 1))
                    for index in range(count)]
            started = time.perf_counter()
            objects = list(_run_jobs(jobs, workers, progress, desc=split))
            coco = _coco_json(split, seed, height, width, num_classes, objects)
            (staging / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
            summaries.append(SplitSummary(split, count, len(coco["annotations"])))
            logger.info("%s: %d images, %d objects in %.1f s", split, count, len(coco["annotations"]),
                        time.perf_counter() - started)
    return summaries


def _run_jobs(jobs: list[_Job], workers: int, progress: bool, desc: str) -> Iterator[list[SyntheticObject]]:
    with tqdm(total=len(jobs), desc=desc, unit="image", disable=not progress) as bar:
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                yield _render_and_save(job)
                bar.update()
            return
        # fork: the workers need nothing but this module, and start at once
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with context.Pool(min(workers, len(jobs))) as pool:
            for objects in pool.imap(_render_and_save, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers)))):
                yield objects
                bar.update()


def _coco_json(split: str, seed: int, height: int, width: int, num_classes: int,
               per_image: list[list[SyntheticObject]]) -> dict:
    images, annotations = [], []
    for image_id, objects in enumerate(per_image, start=1):
        images.append({"id": image_id, "file_name": image_file_name(image_id), "height": height, "width": width})
        for item in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": item.label + 1,
                                "bbox": list(item.bbox), "area": float(item.area), "iscrowd": 0})
    return {
        "info": {"description": "codetr synthetic shapes", "generator": "codetr.data.synthetic", "version": 1,
                 "split": split, "seed": seed, "size": [height, width]},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": label + 1, "name": CLASSES[label].name, "supercategory": "shape"}
                       for label in range(num_classes)],
    }


_DATASET_ENTRIES = {"annotations", *SPLITS}


def _check_output(output: Path, overwrite: bool) -> None:
    """:func:`codetr.atomic.check_replaceable_dir`, and --overwrite replaces only a generated dataset."""
    check_replaceable_dir(output, overwrite, argument="--output", overwrite_replaces="a generated dataset")
    foreign = sorted(entry.name for entry in output.iterdir() if entry.name not in _DATASET_ENTRIES) if output.is_dir() else []
    if foreign:
        raise FileExistsError(f"--output {output} holds {', '.join(foreign)}, not only a generated dataset "
                              f"({', '.join(sorted(_DATASET_ENTRIES))}); refusing to replace it")
