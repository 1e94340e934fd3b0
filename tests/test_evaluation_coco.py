"""COCO scoring (codetr.evaluation.coco) against pycocotools run directly and hand-computed APs."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from codetr.evaluation.coco import (
    BBOX_METRICS,
    check_results,
    evaluate_detections,
    load_annotations,
    load_results,
    map_categories,
    results_mismatch,
)

CATEGORIES = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}, {"id": 9, "name": "star"}]


def write_coco(path: Path, boxes_per_image: list[list[tuple[int, list[float]]]], size: tuple[int, int] = (128, 128)) -> Path:
    """A COCO annotation file: image i+1 holds boxes_per_image[i] = [(category_id, [x, y, w, h])]."""
    images, annotations = [], []
    for index, boxes in enumerate(boxes_per_image, start=1):
        images.append({"id": index, "file_name": f"{index:03d}.png", "height": size[0], "width": size[1]})
        for category_id, bbox in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index, "category_id": category_id, "bbox": bbox,
                 "area": bbox[2] * bbox[3], "iscrowd": 0}
            )
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def random_scene(seed: int, images: int = 6) -> list[list[tuple[int, list[float]]]]:
    generator = random.Random(seed)
    scenes = []
    for _ in range(images):
        boxes = []
        for _ in range(generator.randint(0, 5)):
            w, h = generator.uniform(4, 100), generator.uniform(4, 100)
            boxes.append((generator.choice([3, 7, 9]), [generator.uniform(0, 128 - w), generator.uniform(0, 128 - h), w, h]))
        scenes.append(boxes)
    return scenes


def jittered_detections(annotation_file: Path, seed: int) -> list[dict]:
    """Ground truth moved by a few pixels, some relabelled or dropped, plus false positives."""
    generator = random.Random(seed)
    dataset = json.loads(annotation_file.read_text())
    results = []
    for annotation in dataset["annotations"]:
        if generator.random() < 0.15:
            continue
        x, y, w, h = annotation["bbox"]
        shift = lambda: generator.uniform(-0.2, 0.2)  # noqa: E731
        category = annotation["category_id"] if generator.random() > 0.1 else generator.choice([3, 7, 9])
        results.append({"image_id": annotation["image_id"], "category_id": category,
                        "bbox": [x + shift() * w, y + shift() * h, w * (1 + shift()), h * (1 + shift())],
                        "score": generator.random()})
    for image in dataset["images"]:
        for _ in range(generator.randint(0, 3)):
            results.append({"image_id": image["id"], "category_id": generator.choice([3, 7, 9]),
                            "bbox": [generator.uniform(0, 60), generator.uniform(0, 60), generator.uniform(5, 60), generator.uniform(5, 60)],
                            "score": generator.random() * 0.5})
    return results


def test_ground_truth_as_detections_scores_one(tmp_path: Path) -> None:
    annotation_file = write_coco(tmp_path / "gt.json", [[(3, [10, 10, 8, 8]), (7, [20, 30, 50, 40])], [(9, [0, 0, 120, 100])]])
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in json.loads(annotation_file.read_text())["annotations"]]
    metrics = evaluate_detections(results, annotation_file)
    assert metrics.bbox == pytest.approx({name: 1.0 for name in BBOX_METRICS}, abs=1e-12)
    assert metrics.per_class == pytest.approx({"circle": 1.0, "square": 1.0, "star": 1.0}, abs=1e-12)
    assert metrics.images == 2


def test_one_detection_at_iou_0625_hand_computed(tmp_path: Path) -> None:
    # GT 10x10 at the origin, detection 10x6.25 inside it: IoU = 62.5 / 100 = 0.625, which passes the
    # thresholds 0.50, 0.55, 0.60 of the ten in [.5:.95] with precision 1 -> AP = 3/10. Area 100 < 32^2: small.
    annotation_file = write_coco(tmp_path / "gt.json", [[(3, [0, 0, 10, 10])]])
    metrics = evaluate_detections([{"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 6.25], "score": 0.9}], annotation_file)
    assert metrics.bbox == pytest.approx(
        {"AP": 0.3, "AP50": 1.0, "AP75": 0.0, "APs": 0.3, "APm": -1.0, "APl": -1.0, "AR1": 0.3, "AR10": 0.3, "AR100": 0.3}
    )
    assert metrics.per_class == pytest.approx({"circle": 0.3, "square": -1.0, "star": -1.0})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools_on_random_cases(tmp_path: Path, seed: int, pycocotools_stats) -> None:
    annotation_file = write_coco(tmp_path / "gt.json", random_scene(seed))
    results = jittered_detections(annotation_file, seed)
    metrics = evaluate_detections(results, annotation_file)
    reference = pycocotools_stats(annotation_file, results)
    assert [metrics.bbox[name] for name in BBOX_METRICS] == pytest.approx(list(reference[:9]), abs=1e-12)
    assert 0.0 < metrics.bbox["AP"] < 1.0


def test_per_class_ap_matches_pycocotools_restricted_to_the_class(tmp_path: Path) -> None:
    annotation_file = write_coco(tmp_path / "gt.json", random_scene(5, images=8))
    results = jittered_detections(annotation_file, 5)
    metrics = evaluate_detections(results, annotation_file)
    for category in CATEGORIES:
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO(str(annotation_file))
            evaluator = COCOeval(ground_truth, ground_truth.loadRes(json.loads(json.dumps(results))), "bbox")
            evaluator.params.catIds = [category["id"]]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        assert metrics.per_class[category["name"]] == pytest.approx(evaluator.stats[0], abs=1e-12)


def test_scoring_a_subset_of_images_ignores_the_others(tmp_path: Path) -> None:
    annotation_file = write_coco(tmp_path / "gt.json", [[(3, [0, 0, 50, 50])], [(7, [0, 0, 50, 50])]])
    results = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "score": 0.5}]
    assert evaluate_detections(results, annotation_file).bbox["AP"] == pytest.approx(0.5)  # 'square' missed
    subset = evaluate_detections(results, annotation_file, image_ids=[1])
    assert subset.bbox["AP"] == pytest.approx(1.0) and subset.images == 1


def test_empty_results_score_zero(tmp_path: Path) -> None:
    annotation_file = write_coco(tmp_path / "gt.json", [[(3, [0, 0, 50, 50])], [(7, [0, 0, 10, 10])]])
    metrics = evaluate_detections([], annotation_file)
    assert metrics.bbox["AP"] == 0.0 and metrics.bbox["AR100"] == 0.0
    assert metrics.bbox["APl"] == -1.0  # no large ground truth: undefined
    assert metrics.per_class == {"circle": 0.0, "square": 0.0, "star": -1.0}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image_id": 42, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}, r"results\[1\]: image_id 42 is not in the annotation file \(2 images, ids 1, 2\)"),
        ({"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 1}, r"results\[1\]: category_id 4 is not in the annotation file \(category ids 3, 7, 9\)"),
        ({"image_id": 1, "category_id": 3, "score": 1}, r"results\[1\]: missing key 'bbox'"),
        ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 1}, r"results\[1\]: 'bbox' must be \[x, y, width, height\]"),
        ({"image_id": 1, "category_id": 3, "bbox": [0, 0, -1, 1], "score": 1}, r"results\[1\]: 'bbox' width and height must be >= 0"),
        ({"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": float("nan")}, r"results\[1\]: 'score' must be a finite number"),
        ([1, 2], r"results\[1\]: expected an object"),
    ],
)
def test_malformed_results_name_the_entry_and_key(tmp_path: Path, entry: object, message: str) -> None:
    annotation_file = write_coco(tmp_path / "gt.json", [[(3, [0, 0, 50, 50])], []])
    good = {"image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "score": 0.5}
    with pytest.raises(ValueError, match=message):
        evaluate_detections([good, entry], annotation_file)


def test_a_box_wholly_outside_its_image_is_an_error_naming_the_source(tmp_path: Path) -> None:
    """Results of another dataset that shares image and category ids: a box that cannot lie in the
    annotation file's image of that id (128x128 here) is refused."""
    ground_truth = load_annotations(write_coco(tmp_path / "gt.json", [[(3, [0, 0, 50, 50])], []]))
    good = {"image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "score": 0.5}
    check_results([good, {**good, "bbox": [128.5, 0, 10, 10]}], ground_truth, source="dets.json")  # within 1 px
    for bbox in ([300, 40, 50, 50], [10, 129.5, 5, 5], [-60, 0, 50, 50]):
        with pytest.raises(ValueError, match=rf"dets.json\[1\]: bbox {re.escape(str(bbox))} lies wholly outside image 2 \(128x128 px in "
                           r"the annotation file\); are these results for another dataset that shares image ids\?"):
            check_results([good, {**good, "image_id": 2, "bbox": bbox}], ground_truth, source="dets.json")


def test_results_mismatch_names_boxes_beyond_their_image_and_uncovered_images(tmp_path: Path) -> None:
    ground_truth = load_annotations(write_coco(tmp_path / "gt.json", [[(3, [0, 0, 50, 50])], [], []]))
    entry = {"image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "score": 0.5}
    covering = [entry, {**entry, "image_id": 2, "bbox": [77.5, 77.5, 51, 51]}, {**entry, "image_id": 3}]  # 128.5: within 1 px
    assert results_mismatch(covering, ground_truth, source="dets.json") == []
    beyond = [entry, {**entry, "bbox": [100, 10, 40, 20]}, {**entry, "bbox": [10, 100, 20, 40]}]
    assert results_mismatch(beyond, ground_truth, source="dets.json") == [
        "dets.json: 2 of 3 boxes reach more than 1 px beyond their image's size in the annotation file (first: "
        "dets.json[1], image 1 (128x128 px): bbox [100, 10, 40, 20]); results for another dataset that shares image "
        "ids? (or of a detector that does not clip its boxes)",
        "dets.json: detections on only 1 of the 3 images of the annotation file (ids 1); the other 2 count as all missed",
    ]


def test_results_must_be_a_list(tmp_path: Path) -> None:
    ground_truth = load_annotations(write_coco(tmp_path / "gt.json", [[]]))
    with pytest.raises(ValueError, match=r"dets.json: expected a JSON list of detections, got dict"):
        check_results({"annotations": []}, ground_truth, source="dets.json")


def test_bad_annotation_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="annotation file not found: .*missing.json"):
        load_annotations(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a JSON file"):
        load_annotations(tmp_path / "broken.json")
    (tmp_path / "partial.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="partial.json: missing list 'categories'"):
        load_annotations(tmp_path / "partial.json")
    path = write_coco(tmp_path / "noarea.json", [[(3, [0, 0, 5, 5])]])
    dataset = json.loads(path.read_text())
    del dataset["annotations"][0]["area"]
    path.write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"noarea.json: annotations\[0\] has no 'area'"):
        load_annotations(path)
    with pytest.raises(FileNotFoundError, match="detections file not found: .*dets.json"):
        load_results(tmp_path / "dets.json")


def test_an_annotation_file_without_images_cannot_be_scored(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images to score"):
        evaluate_detections([], write_coco(tmp_path / "gt.json", []))


def test_map_categories_by_name(tmp_path: Path) -> None:
    ground_truth = load_annotations(write_coco(tmp_path / "gt.json", [[]]))
    assert map_categories(("star", "circle", "square"), ground_truth) == (9, 3, 7)
    with pytest.raises(ValueError, match=r"(?s)do not match.*model \(3\): \['star', 'circle', 'cat'\].*only in the model: \['cat'\]; only in the file: \['square'\]"):
        map_categories(("star", "circle", "cat"), ground_truth)
