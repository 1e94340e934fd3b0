"""How far one model's detections are from another's on the same images (e.g. an engine against
the PyTorch model it was exported from), beyond the difference in AP.

Per image, the reference's ``top_k`` highest-scoring detections are matched greedily, in score
order, to the candidate's unused detection of the same category with the highest IoU (matched if
IoU >= ``iou_threshold``); the image's differences are the largest |score difference| and the
largest |coordinate difference| (x1, y1, x2, y2, pixels) over its matched pairs, and the counts of
reference detections matched and left unmatched.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import torch
from torchvision.ops import box_convert, box_iou


@dataclasses.dataclass(frozen=True)
class ImageDifference:
    """max_score: largest |score difference|; max_box: largest |coordinate difference| in pixels,
    both over the matched pairs (0 when nothing matched: read them with ``matched``); matched /
    unmatched: reference detections with / without a match."""

    max_score: float
    max_box: float
    unmatched: int
    matched: int


def compare_detections(
    reference: list[dict], candidate: list[dict], top_k: int = 10, iou_threshold: float = 0.5
) -> dict[int, ImageDifference]:
    """Per image id of ``reference`` (COCO results), its :class:`ImageDifference` to ``candidate``."""
    reference_by_image, candidate_by_image = _by_image(reference), _by_image(candidate)
    differences = {}
    for image_id, entries in reference_by_image.items():
        entries = sorted(entries, key=lambda entry: -entry["score"])[:top_k]
        others = candidate_by_image.get(image_id, [])
        differences[image_id] = _image_difference(entries, others, iou_threshold)
    return differences


def _image_difference(reference: list[dict], candidate: list[dict], iou_threshold: float) -> ImageDifference:
    if not candidate:
        return ImageDifference(0.0, 0.0, len(reference), 0)
    reference_boxes, candidate_boxes = _xyxy(reference), _xyxy(candidate)
    overlaps = box_iou(reference_boxes, candidate_boxes)
    same_category = torch.tensor([[r["category_id"] == c["category_id"] for c in candidate] for r in reference])
    overlaps = torch.where(same_category, overlaps, torch.full_like(overlaps, -1.0))
    used = torch.zeros(len(candidate), dtype=torch.bool)
    max_score = max_box = 0.0
    unmatched = 0
    for index, entry in enumerate(reference):
        row = torch.where(used, torch.full_like(overlaps[index], -1.0), overlaps[index])
        best = int(row.argmax())
        if float(row[best]) < iou_threshold:
            unmatched += 1
            continue
        used[best] = True
        max_score = max(max_score, abs(entry["score"] - candidate[best]["score"]))
        max_box = max(max_box, float((reference_boxes[index] - candidate_boxes[best]).abs().max()))
    return ImageDifference(max_score, max_box, unmatched, len(reference) - unmatched)


def _by_image(results: list[dict]) -> dict[int, list[dict]]:
    grouped = defaultdict(list)
    for entry in results:
        grouped[entry["image_id"]].append(entry)
    return grouped


def _xyxy(entries: list[dict]) -> torch.Tensor:
    return box_convert(torch.tensor([entry["bbox"] for entry in entries], dtype=torch.float64), "xywh", "xyxy")
