"""COCO bbox scoring through pycocotools' ``COCOeval``, with the inputs checked first.

pycocotools asserts or raises KeyError deep inside for malformed inputs; here every annotation
file and results list is validated up front, and errors name the file, the entry and the key.
The metrics are COCOeval's twelve-number summary (``COCOeval.summarize``; Lin et al. 2014,
cocodataset.org/#detection-eval) minus AR by area, as fractions in [0, 1], -1 where undefined
(no ground truth in that area range), plus per-class AP taken from ``COCOeval.eval["precision"]``
the way ``summarize`` averages it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

BBOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
"""The summary metrics, in COCOeval.stats order (stats[0..5], then stats[6..8])."""

_REQUIRED_ANNOTATION_KEYS = ("image_id", "category_id", "bbox", "area")

BOX_TOLERANCE = 1.0
"""Pixels a result box may reach beyond its image (width x height of the annotation file's entry)
before it counts as beyond it: boxes clamped to the image and rounded stay within."""


@dataclasses.dataclass(frozen=True)
class Metrics:
    """COCO bbox metrics: ``bbox`` maps each of :data:`BBOX_METRICS` to a fraction in [0, 1]
    (-1: undefined); ``per_class`` maps category name -> AP@[.5:.95] (-1: no ground truth of that
    class); ``images`` is how many images were scored."""

    bbox: dict[str, float]
    per_class: dict[str, float]
    images: int

    def to_json(self) -> dict[str, object]:
        return {"bbox": dict(self.bbox), "per_class": dict(self.per_class), "images": self.images}


def load_annotations(annotation_file: str | Path) -> COCO:
    """The COCO ground truth in ``annotation_file``, checked for the keys COCOeval needs.

    Raises FileNotFoundError for a missing file and ValueError naming the file and the key for
    invalid JSON, missing ``images``/``annotations``/``categories`` or an annotation without
    image_id, category_id, bbox or area, or whose image or category is not in the file.
    """
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {annotation_file}")
    try:
        dataset = json.loads(annotation_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{annotation_file}: not a JSON file: {error}") from None
    if not isinstance(dataset, dict):
        raise ValueError(f"{annotation_file}: expected a COCO object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{annotation_file}: missing list '{key}' (COCO format: images, annotations, categories)")
    for position, image in enumerate(dataset["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise ValueError(f"{annotation_file}: images[{position}] has no 'id'")
    for position, category in enumerate(dataset["categories"]):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise ValueError(f"{annotation_file}: categories[{position}] needs 'id' and 'name'")
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    for position, annotation in enumerate(dataset["annotations"]):
        missing = [key for key in _REQUIRED_ANNOTATION_KEYS if key not in annotation]
        if missing:
            raise ValueError(f"{annotation_file}: annotations[{position}] has no {', '.join(map(repr, missing))}")
        if annotation["image_id"] not in image_ids:
            raise ValueError(f"{annotation_file}: annotations[{position}]: image_id {annotation['image_id']} is not in 'images'")
        if annotation["category_id"] not in category_ids:
            raise ValueError(
                f"{annotation_file}: annotations[{position}]: category_id {annotation['category_id']} is not in 'categories'"
            )
    ground_truth = COCO()
    ground_truth.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
        ground_truth.createIndex()
    return ground_truth


def check_results(results: object, ground_truth: COCO, source: str = "results") -> None:
    """Raise ValueError naming ``source``, the entry and the key unless ``results`` is a list of
    COCO bbox results: {"image_id": an image of the annotation file, "category_id": one of its
    categories, "bbox": [x, y, width, height] finite, width and height >= 0, not wholly outside
    the image's width x height (more than :data:`BOX_TOLERANCE` px; images without a size are
    not checked), "score": finite}. A box outside its image is the sign, found without scoring,
    of results for another dataset whose image ids overlap this one's."""
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a JSON list of detections, got {type(results).__name__}")
    image_ids, category_ids = set(ground_truth.getImgIds()), set(ground_truth.getCatIds())
    sizes = _image_sizes(ground_truth)
    for position, entry in enumerate(results):
        where = f"{source}[{position}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with image_id, category_id, bbox, score")
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in entry:
                raise ValueError(f"{where}: missing key '{key}'")
        if entry["image_id"] not in image_ids:
            raise ValueError(
                f"{where}: image_id {entry['image_id']!r} is not in the annotation file "
                f"({len(image_ids)} images, ids {_id_summary(image_ids)})"
            )
        if entry["category_id"] not in category_ids:
            raise ValueError(
                f"{where}: category_id {entry['category_id']!r} is not in the annotation file "
                f"(category ids {_id_summary(category_ids)})"
            )
        bbox = entry["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(value) for value in bbox)):
            raise ValueError(f"{where}: 'bbox' must be [x, y, width, height] of 4 finite numbers, got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{where}: 'bbox' width and height must be >= 0, got {bbox!r}")
        if not _is_finite_number(entry["score"]):
            raise ValueError(f"{where}: 'score' must be a finite number, got {entry['score']!r}")
        size = sizes.get(entry["image_id"])
        if size is not None and _outside(bbox, size):
            raise ValueError(
                f"{where}: bbox {bbox!r} lies wholly outside image {entry['image_id']} ({size[1]}x{size[0]} px in the "
                "annotation file); are these results for another dataset that shares image ids?"
            )


def results_mismatch(results: list[dict], ground_truth: COCO, source: str = "results") -> list[str]:
    """Signs, short of an error, that ``results`` (already passed by :func:`check_results`) belong
    to another dataset or another subset of this one: one message naming ``source`` for boxes that
    reach more than :data:`BOX_TOLERANCE` px beyond their image, one for images of the annotation
    file without any detection (COCOeval counts their ground truth as missed). Empty: no sign."""
    sizes = _image_sizes(ground_truth)
    messages = []
    beyond = [position for position, entry in enumerate(results)
              if entry["image_id"] in sizes and _beyond(entry["bbox"], sizes[entry["image_id"]])]
    if beyond:
        first = results[beyond[0]]
        height, width = sizes[first["image_id"]]
        messages.append(
            f"{source}: {len(beyond)} of {len(results)} boxes reach more than {BOX_TOLERANCE:g} px beyond their image's "
            f"size in the annotation file (first: {source}[{beyond[0]}], image {first['image_id']} ({width}x{height} px): "
            f"bbox {first['bbox']!r}); results for another dataset that shares image ids? (or of a detector that does "
            "not clip its boxes)"
        )
    covered = {entry["image_id"] for entry in results}
    image_ids = set(ground_truth.getImgIds())
    if results and covered != image_ids:
        messages.append(
            f"{source}: detections on only {len(covered)} of the {len(image_ids)} images of the annotation file "
            f"(ids {_id_summary(covered)}); the other {len(image_ids - covered)} count as all missed"
        )
    return messages


def _image_sizes(ground_truth: COCO) -> dict[object, tuple[float, float]]:
    """(height, width) of each image of the annotation file that states both."""
    return {
        image["id"]: (image["height"], image["width"]) for image in ground_truth.dataset["images"]
        if _is_finite_number(image.get("height")) and _is_finite_number(image.get("width"))
    }


def _outside(bbox: list[float], size: tuple[float, float]) -> bool:
    """Whether [x, y, width, height] lies wholly outside [0, width] x [0, height], beyond the tolerance."""
    x, y, box_width, box_height = bbox
    height, width = size
    return (x > width + BOX_TOLERANCE or y > height + BOX_TOLERANCE
            or x + box_width < -BOX_TOLERANCE or y + box_height < -BOX_TOLERANCE)


def _beyond(bbox: list[float], size: tuple[float, float]) -> bool:
    """Whether [x, y, width, height] reaches beyond [0, width] x [0, height] by more than the tolerance."""
    x, y, box_width, box_height = bbox
    height, width = size
    return (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE
            or x + box_width > width + BOX_TOLERANCE or y + box_height > height + BOX_TOLERANCE)


def load_results(results_file: str | Path) -> list[dict]:
    """The JSON list in a COCO results file (validated later, against the annotations)."""
    results_file = Path(results_file)
    if not results_file.is_file():
        raise FileNotFoundError(f"detections file not found: {results_file}")
    try:
        return json.loads(results_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{results_file}: not a JSON file: {error}") from None


def evaluate_detections(
    results: list[dict],
    annotation_file: str | Path | COCO,
    image_ids: Iterable[int] | None = None,
    source: str = "results",
) -> Metrics:
    """Score COCO-format detections against the ground truth with COCOeval (iouType "bbox").

    ``results``: COCO results entries (see :func:`check_results`; an empty list scores 0 wherever
    there is ground truth). ``annotation_file``: a COCO annotation file, or one already loaded by
    :func:`load_annotations`. ``image_ids``: score only these images (e.g. those that could be
    read), default all images of the file. ``source`` names the results in errors.
    """
    ground_truth = annotation_file if isinstance(annotation_file, COCO) else load_annotations(annotation_file)
    check_results(results, ground_truth, source)
    image_ids = sorted(ground_truth.getImgIds() if image_ids is None else set(image_ids))
    if not image_ids:
        raise ValueError("no images to score: the annotation file has no images, or none could be read")
    detections = _results_coco(results, ground_truth)
    evaluator = COCOeval(ground_truth, detections, iouType="bbox")
    evaluator.params.imgIds = image_ids
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints progress and the summary
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(value) for value in evaluator.stats]
    bbox = dict(zip(BBOX_METRICS, stats[:6] + stats[6:9]))
    return Metrics(bbox=bbox, per_class=_per_class_ap(evaluator, ground_truth), images=len(image_ids))


def _results_coco(results: list[dict], ground_truth: COCO) -> COCO:
    """The detections as a COCO object; ``COCO.loadRes`` fails on an empty list, so that case
    gets an empty one over the same images and categories."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return ground_truth.loadRes(copy.deepcopy(results))  # loadRes adds keys to the entries
    detections = COCO()
    detections.dataset = {
        "images": list(ground_truth.dataset["images"]),
        "categories": copy.deepcopy(ground_truth.dataset["categories"]),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        detections.createIndex()
    return detections


def _per_class_ap(evaluator: COCOeval, ground_truth: COCO) -> dict[str, float]:
    """AP@[.5:.95] of each category, all areas, 100 detections: the mean of the valid (> -1)
    entries of precision[T, R, K, A, M] over thresholds and recall points, as summarize() does."""
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    area_all = evaluator.params.areaRngLbl.index("all")
    max_dets = evaluator.params.maxDets.index(100)
    per_class = {}
    for index, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, index, area_all, max_dets]
        values = values[values > -1]
        per_class[ground_truth.cats[category_id]["name"]] = float(np.mean(values)) if values.size else -1.0
    return per_class


def map_categories(class_names: Sequence[str], ground_truth: COCO, source: str = "annotation file") -> tuple[int, ...]:
    """The annotation file's category id of each model label, matched by name.

    A COCO-trained model on COCO's own files gets COCO's category ids (the names are COCO's);
    a model for a custom dataset gets that dataset's ids. Raises ValueError listing both name
    lists unless the model's class names and the file's category names are the same set.
    """
    names = {category["name"]: category["id"] for category in ground_truth.dataset["categories"]}
    if len(names) != len(ground_truth.dataset["categories"]):
        raise ValueError(f"{source}: category names are not unique: {[c['name'] for c in ground_truth.dataset['categories']]}")
    if sorted(class_names) != sorted(names) or len(set(class_names)) != len(class_names):
        raise ValueError(
            f"the model's class names do not match the categories of {source}:\n"
            f"  model ({len(class_names)}): {list(class_names)}\n"
            f"  {source} ({len(names)}): {list(names)}\n"
            f"  only in the model: {sorted(set(class_names) - set(names))}; "
            f"only in the file: {sorted(set(names) - set(class_names))}"
        )
    return tuple(names[name] for name in class_names)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _id_summary(ids: set) -> str:
    ordered = sorted(ids, key=str)
    return ", ".join(map(str, ordered)) if len(ordered) <= 10 else f"{', '.join(map(str, ordered[:10]))}, ..."
