"""Training data: COCO-format detection datasets, augmentation, global-batch sampling, padding.

``--data DIR`` is the COCO 2017 layout (``annotations/instances_{split}2017.json`` +
``{split}2017/``) or the layout of ``codetr data synthetic`` (``annotations/instances_{split}.json``
+ ``{split}/``). Augmentation follows the official large-scale-jitter pipeline in spirit
(``RandomResize`` ratio 0.1-2.0 around the training scale, ``RandomCrop`` to it, ``RandomFlip``
0.5; mmdetection 3.x ``projects/CO-DETR/configs/codino/co_dino_5scale_r50_lsj_8xb2_1x_coco.py``),
done with torchvision.transforms.v2 so the boxes follow the image.

Determinism: the order of samples is a permutation per epoch seeded by (seed, epoch), split into
global batches, each split evenly over the ranks; a sample's augmentation and denoising noise come
from a seed derived from (seed, epoch, index). So any number of processes with the same global
batch see the same samples with the same augmentation, and a run resumes exactly mid-epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2

from codetr.config import Config, PreprocessConfig
from codetr.data.images import read_image


@dataclass(frozen=True)
class DatasetSplit:
    """A COCO-format split: the annotation file and the folder its ``file_name``s are in."""

    annotation_file: Path
    image_dir: Path


def resolve_split(data: str | Path, split: str) -> DatasetSplit:
    """Finds ``split`` ("train" / "val") of the COCO 2017 or the generated layout under ``data``."""
    data = Path(data)
    candidates = [
        DatasetSplit(data / "annotations" / f"instances_{split}2017.json", data / f"{split}2017"),
        DatasetSplit(data / "annotations" / f"instances_{split}.json", data / split),
    ]
    for candidate in candidates:
        if candidate.annotation_file.is_file() and candidate.image_dir.is_dir():
            return candidate
    expected = " or ".join(f"{c.annotation_file} + {c.image_dir}/" for c in candidates)
    raise FileNotFoundError(f"--data {data}: no {split} split found; expected {expected}")


def category_labels(categories: list[dict], config: Config, source: Path) -> dict[int, int]:
    """Annotation category id -> model label: by the config's category ids when it has them
    (COCO), else by class name."""
    if config.category_ids:
        return {category_id: label for label, category_id in enumerate(config.category_ids)}
    by_name = {category["name"]: category["id"] for category in categories}
    missing = [name for name in config.class_names if name not in by_name]
    if missing:
        raise ValueError(
            f"{source}: categories {sorted(by_name)} do not include the config's class names {missing}; "
            "train with a config whose class_names are the dataset's (for `codetr data synthetic` output: "
            "synthetic_r50, or a copy of tiny.toml with those 8 names and num_classes = 8)"
        )
    return {by_name[name]: label for label, name in enumerate(config.class_names)}


@dataclass(frozen=True)
class Sample:
    """image [3, h, w] float32 RGB 0-255; boxes [n, 4] xyxy pixels of that image; labels [n] int64;
    seed: the sample's seed for its denoising noise."""

    image: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    seed: int


class CocoTrainDataset(torch.utils.data.Dataset):
    """Indexed by (index, epoch); returns an augmented :class:`Sample`. Crowd boxes are skipped."""

    def __init__(self, split: DatasetSplit, config: Config, seed: int) -> None:
        with split.annotation_file.open() as file:
            coco = json.load(file)
        self.split = split
        labels = category_labels(coco.get("categories", []), config, split.annotation_file)
        per_image: dict[int, list[tuple[list[float], int]]] = {image["id"]: [] for image in coco["images"]}
        for annotation in coco.get("annotations", []):
            if annotation.get("iscrowd", 0) or annotation["category_id"] not in labels:
                continue
            x, y, w, h = annotation["bbox"]
            if w > 0 and h > 0:
                per_image[annotation["image_id"]].append(([x, y, x + w, y + h], labels[annotation["category_id"]]))
        self.images = [(image["file_name"], per_image[image["id"]]) for image in sorted(coco["images"], key=lambda i: i["id"])]
        if not self.images:
            raise ValueError(f"{split.annotation_file}: the dataset has no images")
        self.seed = seed
        self.transform = train_transform(config)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, epoch = key
        file_name, objects = self.images[index]
        image = read_image(self.split.image_dir / file_name)
        boxes = torch.tensor([box for box, _ in objects], dtype=torch.float32).view(-1, 4)
        labels = torch.tensor([label for _, label in objects], dtype=torch.int64)
        sample_seed = _mix(self.seed, epoch, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            image, boxes, labels = self.transform(
                tv_tensors.Image(image), tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=image.shape[1:]), labels
            )
        return Sample(image.as_subclass(torch.Tensor).float(), boxes.as_subclass(torch.Tensor), labels, _mix(sample_seed, 1, 0))


def _mix(*values: int) -> int:
    """A 63-bit seed from a few integers (splitmix-style), stable across processes."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = ((state ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state & 0x7FFFFFFFFFFFFFFF


class _CropToCanvas(v2.Transform):
    """Random crop to at most ``size`` (h, w); smaller images are left whole (padded later)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        crop_height, crop_width = min(height, self.size[0]), min(width, self.size[1])
        top = int(torch.randint(0, height - crop_height + 1, ()))
        left = int(torch.randint(0, width - crop_width + 1, ()))
        return {"top": top, "left": left, "height": crop_height, "width": crop_width}

    def transform(self, inpt, params: dict):  # noqa: ANN001 - torchvision's signature
        return self._call_kernel(v2.functional.crop, inpt, **params)

    # torchvision < 0.21 calls these names
    _get_params = make_params
    _transform = transform


def train_transform(config: Config) -> v2.Transform:
    """Scale jitter around the canvas (``config.train.scale_range``; (1, 1) = a plain
    keep-ratio resize to fit it), random crop to the canvas, horizontal flip
    (``config.train.flip_prob``). Boxes are clamped to the image and those under 1 pixel dropped."""
    canvas = training_canvas(config.preprocess)
    return v2.Compose(
        [
            v2.ScaleJitter(canvas, scale_range=config.train.scale_range, antialias=False),
            _CropToCanvas(canvas),
            v2.RandomHorizontalFlip(config.train.flip_prob),
            v2.ClampBoundingBoxes(),
            v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=lambda inputs: inputs[2]),
        ]
    )


def training_canvas(preprocess: PreprocessConfig) -> tuple[int, int]:
    """(h, w) the training images are cropped to: the LSJ pad size, else (short, long) of scale."""
    if preprocess.pad_size is not None:
        return tuple(preprocess.pad_size)
    return (min(preprocess.scale), max(preprocess.scale))


@dataclass(frozen=True)
class TrainBatch:
    """images [B, 3, H, W] float32 RGB 0-255 padded bottom/right with the pad colour;
    image_sizes [B, 2] int64 (h, w) as the model is given them (the content, or the canvas when
    the config does not mask padding); gt_boxes [n_b, 4] normalised (cx, cy, w, h) relative to
    image_sizes; gt_labels [n_b] int64; seeds: per-sample denoising seeds."""

    images: torch.Tensor
    image_sizes: torch.Tensor
    gt_boxes: list[torch.Tensor]
    gt_labels: list[torch.Tensor]
    seeds: list[int]

    def to(self, device: torch.device) -> TrainBatch:
        return TrainBatch(
            self.images.to(device, non_blocking=True),
            self.image_sizes.to(device),
            [b.to(device) for b in self.gt_boxes],
            [label.to(device) for label in self.gt_labels],
            self.seeds,
        )


def collate(samples: list[Sample], preprocess: PreprocessConfig) -> TrainBatch:
    """Pads bottom/right to the training canvas (:func:`training_canvas`, as LSJ's
    ``Pad(size=image_size)`` does; also keeps scaled-down batches large enough for the query
    selection), rounded up to ``size_divisor``, and normalises the boxes by each image's size
    as the model sees it."""
    heights = [s.image.shape[1] for s in samples]
    widths = [s.image.shape[2] for s in samples]
    divisor = 1 if preprocess.pad_size is not None else preprocess.size_divisor
    canvas_height, canvas_width = training_canvas(preprocess)
    canvas_height = -(-max(*heights, canvas_height) // divisor) * divisor
    canvas_width = -(-max(*widths, canvas_width) // divisor) * divisor
    colour = torch.tensor(preprocess.pad_colour, dtype=torch.float32).view(3, 1, 1)
    images = colour.expand(len(samples), 3, canvas_height, canvas_width).clone()
    for index, sample in enumerate(samples):
        images[index, :, : heights[index], : widths[index]] = sample.image
    if preprocess.mask_padding:
        image_sizes = torch.tensor(list(zip(heights, widths)), dtype=torch.int64)
    else:
        image_sizes = torch.tensor([[canvas_height, canvas_width]] * len(samples), dtype=torch.int64)
    boxes = []
    for sample, (height, width) in zip(samples, image_sizes.tolist()):
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes.append(box_convert(sample.boxes.float() / scale, "xyxy", "cxcywh"))
    return TrainBatch(images, image_sizes, boxes, [s.labels for s in samples], [s.seed for s in samples])


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each global batch as [(index, epoch), ...], forever.

    Global batch k of epoch e is positions [k*G, (k+1)*G) of a permutation seeded by (seed, e);
    the last incomplete batch of an epoch is dropped. Rank r of W takes the r-th of W equal parts.
    Starts at ``start_iteration`` (for resuming).
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int, start_iteration: int = 0) -> None:
        if global_batch % world_size:
            raise ValueError(f"--batch-size {global_batch} must be divisible by the number of processes ({world_size})")
        if num_samples < global_batch:
            raise ValueError(f"--batch-size {global_batch} is larger than the dataset ({num_samples} images)")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.start_iteration = start_iteration

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iteration
        while True:
            epoch, position = divmod(iteration, self.batches_per_epoch)
            generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=generator)
            start = position * self.global_batch + self.rank * self.per_rank
            yield [(int(index), epoch) for index in order[start : start + self.per_rank]]
            iteration += 1
