"""Per-image detection differences between two models (codetr.evaluation.compare), hand-computed."""

from __future__ import annotations

import pytest

from codetr.evaluation.compare import ImageDifference, compare_detections


def detection(image_id: int, category_id: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_identical_detections_differ_by_nothing() -> None:
    results = [detection(1, 3, [0, 0, 10, 10], 0.9), detection(2, 4, [5, 5, 20, 10], 0.5)]
    assert compare_detections(results, list(reversed(results))) == {1: ImageDifference(0.0, 0.0, 0, 1), 2: ImageDifference(0.0, 0.0, 0, 1)}


def test_differences_of_matched_detections() -> None:
    reference = [detection(1, 3, [0, 0, 10, 10], 0.9), detection(1, 3, [50, 50, 10, 10], 0.8)]
    # first: x2 moves 10 -> 10.5 (0.5 px), score -0.01; second: y moves by 1 px (y1 and y2), score +0.05
    candidate = [detection(1, 3, [50, 51, 10, 10], 0.85), detection(1, 3, [0, 0, 10.5, 10], 0.89)]
    [(image_id, difference)] = compare_detections(reference, candidate).items()
    assert image_id == 1
    assert difference.max_score == pytest.approx(0.05) and difference.max_box == pytest.approx(1.0) and difference.unmatched == 0


def test_other_category_low_overlap_or_missing_image_is_unmatched() -> None:
    reference = [detection(1, 3, [0, 0, 10, 10], 0.9), detection(1, 3, [50, 50, 10, 10], 0.8), detection(2, 3, [0, 0, 5, 5], 0.7)]
    candidate = [detection(1, 4, [0, 0, 10, 10], 0.9), detection(1, 3, [55, 50, 10, 10], 0.8)]  # IoU 50/150 = 1/3
    assert compare_detections(reference, candidate) == {1: ImageDifference(0.0, 0.0, 2, 0), 2: ImageDifference(0.0, 0.0, 1, 0)}


def test_a_candidate_detection_is_matched_once_and_only_top_k_count() -> None:
    reference = [detection(1, 3, [0, 0, 10, 10], 0.9), detection(1, 3, [0, 0, 10, 10], 0.8), detection(1, 3, [90, 90, 5, 5], 0.1)]
    candidate = [detection(1, 3, [0, 0, 10, 10], 0.9)]
    assert compare_detections(reference, candidate, top_k=2) == {1: ImageDifference(0.0, 0.0, 1, 1)}
