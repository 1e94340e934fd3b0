"""Running a detector over a COCO-format dataset and scoring it, on one process or several.

Images are decoded in DataLoader workers (:func:`codetr.data.images.read_image`), batched, run
through a predictor and turned into COCO results; an image that cannot be read is named in a
warning, skipped, left out of the scoring and counted. Under ``torchrun`` (torch.distributed
initialised) every rank takes every world_size-th image, and rank 0 gathers the detections
(``all_gather_object``) and scores them: the same detections, so the same AP, as one process
with the same batching (batches of images padded differently may differ in the last bits).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from codetr.data.coco import CocoDetection
from codetr.data.images import ImageReadError
from codetr.evaluation.coco import Metrics, evaluate_detections, load_annotations, map_categories
from codetr.postprocess import coco_results

if TYPE_CHECKING:
    from codetr.runtime.predictor import Predictor

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Item:
    """A dataset item as the detection loop needs it: ``image`` None (and ``error`` set) when the
    file could not be read."""

    index: int
    image_id: int | None
    image: torch.Tensor | None
    error: str | None = None


class _ReadableItems(Dataset):
    """``dataset``'s images and ids, an unreadable image reported in its item instead of raised
    (a DataLoader worker that raises stops the whole loop)."""

    def __init__(self, dataset: CocoDetection, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> _Item:
        index = self.indices[position]
        try:
            sample = self.dataset[index]
        except (FileNotFoundError, ImageReadError) as error:
            return _Item(index, None, None, str(error))
        return _Item(index, sample.image_id, sample.image)


@dataclasses.dataclass(frozen=True)
class RunStats:
    """images: images detected and scored; images_skipped: unreadable ones (``skipped`` names
    them); seconds: wall time of the detection loop (decoding, pre-processing, model,
    post-processing), the slowest rank's when distributed."""

    images: int
    images_skipped: int
    skipped: tuple[str, ...]
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def evaluate_model(
    predictor: Predictor,
    dataset: CocoDetection,
    batch_size: int = 1,
    workers: int = 2,
    progress: bool = True,
    score_threshold: float = 0.0,
) -> tuple[list[dict], Metrics | None, RunStats]:
    """Detect objects in every image of ``dataset`` and score them against its annotation file.

    ``predictor(images: list of uint8 [3, H, W], score_threshold) -> list[ImageDetections]`` (boxes
    in original pixels) with ``class_names``: a :class:`codetr.runtime.predictor.Predictor`.
    Returns (COCO results in dataset order, metrics, stats). The model's class names are mapped
    to the file's categories by name (:func:`~codetr.evaluation.coco.map_categories`; ValueError
    listing both on a mismatch). ``score_threshold`` 0 keeps every detection (AP needs them all).
    Under torch.distributed every rank must call this; all get the gathered results and stats,
    rank 0 alone the metrics (None elsewhere). ValueError if no image can be read.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    ground_truth = load_annotations(dataset.annotation_file)
    category_ids = map_categories(predictor.class_names, ground_truth, str(dataset.annotation_file))
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    shard = _ReadableItems(dataset, range(rank, len(dataset), world_size))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=list)

    results: list[tuple[int, list[dict]]] = []  # (dataset index, that image's results)
    skipped: list[str] = []
    started = time.perf_counter()
    with tqdm(total=len(shard), desc="eval", unit="image", disable=not progress or rank != 0) as bar:
        for items in loader:
            for item in items:
                if item.image is None:
                    logger.warning("skipping an image that cannot be read: %s", item.error)
                    skipped.append(dataset.image_info(item.index)["file_name"])
            readable = [item for item in items if item.image is not None]
            if readable:
                detections = predictor([item.image for item in readable], score_threshold=score_threshold)
                for item, image_detections in zip(readable, detections, strict=True):
                    results.append((item.index, coco_results(item.image_id, image_detections, category_ids)))
            bar.update(len(items))
    seconds = time.perf_counter() - started

    if world_size > 1:
        gathered: list[object] = [None] * world_size
        dist.all_gather_object(gathered, (results, skipped, seconds))
        results = sorted((entry for part in gathered for entry in part[0]), key=lambda entry: entry[0])
        skipped = [name for part in gathered for name in part[1]]
        seconds = max(part[2] for part in gathered)

    stats = RunStats(len(results), len(skipped), tuple(skipped), seconds)
    if not results:
        raise ValueError(f"none of the {len(dataset)} images of {dataset.annotation_file} could be read from {dataset.image_dir}")
    flat = [entry for _, image_results in results for entry in image_results]
    metrics = None
    if rank == 0:
        scored = [dataset.image_ids[index] for index, _ in results]
        metrics = evaluate_detections(flat, ground_truth, image_ids=scored, source="detections")
    return flat, metrics, stats
