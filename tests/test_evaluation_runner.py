"""Running a model over a COCO-format dataset (codetr.evaluation.runner): one process, several
(gloo), eager against exported, unreadable images, category mismatches."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from codetr.config import load_config
from codetr.data.coco import CocoDetection
from codetr.evaluation.coco import BBOX_METRICS
from codetr.evaluation.runner import evaluate_model
from codetr.models import build_model
from codetr.postprocess import postprocess
from codetr.preprocess import make_batch

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
IMAGE_SIZE = (64, 96)  # (h, w): the tiny config's input size as is, so every batch has the same canvas
CATEGORY_IDS = {"cat": 17, "dog": 18, "car": 3, "tree": 90, "cup": 47}  # not the config's label + 1


class ModelPredictor:
    """Stand-in for codetr.runtime.predictor.Predictor: a model or runtime between the config's
    pre- and post-processing."""

    def __init__(self, config, model) -> None:
        self.config, self.model, self.class_names = config, model, config.class_names

    @torch.inference_mode()
    def __call__(self, images: list[torch.Tensor], score_threshold: float = 0.0):
        batch = make_batch(images, self.config.preprocess)
        return postprocess(self.model(batch.images, batch.image_sizes), batch, self.config.test.nms, score_threshold)


def eager_predictor() -> ModelPredictor:
    config = load_config(TINY)
    return ModelPredictor(config, build_model(config).eval())


def write_dataset(root: Path, images: int = 5, per_image: int = 3) -> tuple[Path, Path]:
    """Random images and a ground truth made of the eager tiny model's own top detections, each
    moved a little, so that its AP is neither 0 nor 1 and sensitive to every box and score."""
    generator = np.random.default_rng(0)
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    predictor = eager_predictor()
    entries, annotations = [], []
    for image_id in range(1, images + 1):
        pixels = generator.integers(0, 256, (*IMAGE_SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / f"{image_id:04d}.png")
        entries.append({"id": image_id, "file_name": f"{image_id:04d}.png", "height": IMAGE_SIZE[0], "width": IMAGE_SIZE[1]})
        detections = predictor([torch.from_numpy(pixels).permute(2, 0, 1).contiguous()])[0]
        for box, label in zip(detections.boxes[:per_image].tolist(), detections.labels[:per_image].tolist()):
            x1, y1, x2, y2 = (value + generator.uniform(-2, 2) for value in box)
            w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x1, y1, w, h], "area": w * h,
                                "category_id": CATEGORY_IDS[predictor.class_names[label]], "iscrowd": 0})
    categories = [{"id": category_id, "name": name} for name, category_id in sorted(CATEGORY_IDS.items())]
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return annotation_file, image_dir


@pytest.fixture(scope="module")
def dataset_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def single_process(dataset_files):
    """Results, metrics and stats of the eager model in this process, batch 1, no workers."""
    return evaluate_model(eager_predictor(), CocoDetection(*dataset_files), batch_size=1, workers=0, progress=False)


def pycocotools_stats(annotation_file: Path, results: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(json.loads(json.dumps(results))), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats[:9])


def test_eager_model_results_and_ap(dataset_files, single_process) -> None:
    results, metrics, stats = single_process
    assert stats.images == 5 and stats.images_skipped == 0 and stats.images_per_second > 0
    assert len(results) == 5 * load_config(TINY).model.max_per_img  # score threshold 0: every detection
    assert {entry["category_id"] for entry in results} <= set(CATEGORY_IDS.values())
    assert [metrics.bbox[name] for name in BBOX_METRICS] == pytest.approx(pycocotools_stats(dataset_files[0], results), abs=1e-12)
    assert 0.2 < metrics.bbox["AP"] < 1.0 and metrics.bbox["AP50"] > metrics.bbox["AP75"]


def test_batches_and_workers_give_the_same_results(dataset_files, single_process) -> None:
    results, metrics, _ = evaluate_model(eager_predictor(), CocoDetection(*dataset_files), batch_size=2, workers=2, progress=False)
    expected_results, expected_metrics, _ = single_process
    assert [(r["image_id"], r["category_id"]) for r in results] == [(r["image_id"], r["category_id"]) for r in expected_results]
    assert np.allclose([r["bbox"] for r in results], [r["bbox"] for r in expected_results], atol=2e-3)
    assert metrics.bbox == pytest.approx(expected_metrics.bbox, abs=1e-4)


def test_score_threshold_drops_detections(dataset_files, single_process) -> None:
    results, _, _ = evaluate_model(eager_predictor(), CocoDetection(*dataset_files), workers=0, progress=False, score_threshold=0.5)
    assert results == [entry for entry in single_process[0] if entry["score"] > 0.5]


def test_unreadable_images_are_named_skipped_and_counted(tmp_path: Path, caplog) -> None:
    annotation_file, image_dir = write_dataset(tmp_path, images=4)
    (image_dir / "0002.png").write_bytes(b"not a png")
    (image_dir / "0003.png").unlink()
    with caplog.at_level(logging.WARNING, logger="codetr.evaluation"):
        results, metrics, stats = evaluate_model(eager_predictor(), CocoDetection(annotation_file, image_dir), workers=0, progress=False)
    assert (stats.images, stats.images_skipped, stats.skipped) == (2, 2, ("0002.png", "0003.png"))
    assert metrics.images == 2 and {entry["image_id"] for entry in results} == {1, 4}
    assert "cannot decode image" in caplog.text and "0002.png" in caplog.text and "0003.png" in caplog.text
    # scored over the readable images only: the skipped images' ground truth is not counted as missed
    subset = json.loads(annotation_file.read_text())
    subset["images"] = [image for image in subset["images"] if image["id"] in (1, 4)]
    subset["annotations"] = [a for a in subset["annotations"] if a["image_id"] in (1, 4)]
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    assert metrics.bbox["AP"] == pytest.approx(pycocotools_stats(tmp_path / "subset.json", results)[0], abs=1e-12)


def test_no_readable_image_is_an_error(tmp_path: Path) -> None:
    annotation_file, image_dir = write_dataset(tmp_path, images=2)
    for path in image_dir.iterdir():
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 2 images of .*instances.json could be read"):
        evaluate_model(eager_predictor(), CocoDetection(annotation_file, image_dir), workers=0, progress=False)


def test_category_names_that_do_not_match_are_an_error(tmp_path: Path, dataset_files) -> None:
    dataset = json.loads(dataset_files[0].read_text())
    dataset["categories"][0]["name"] = "truck"
    (tmp_path / "renamed.json").write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"(?s)renamed.json.*only in the model: \['car'\]; only in the file: \['truck'\]"):
        evaluate_model(eager_predictor(), CocoDetection(tmp_path / "renamed.json", dataset_files[1]), workers=0, progress=False)


def _distributed_worker(rank: int, world_size: int, port: int, dataset_files: tuple[Path, Path], output: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results, metrics, stats = evaluate_model(eager_predictor(), CocoDetection(*dataset_files), workers=0, progress=False)
        (output / f"rank{rank}.pkl").write_bytes(pickle.dumps((results, metrics, stats)))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_single_process_ap(tmp_path: Path, dataset_files, single_process) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # fork: the children need no fresh interpreter (spawn re-imports torch and pytest: ~20 s)
    mp.start_processes(_distributed_worker, args=(2, port, dataset_files, tmp_path), nprocs=2, start_method="fork")
    results, metrics, stats = pickle.loads((tmp_path / "rank0.pkl").read_bytes())
    expected_results, expected_metrics, _ = single_process
    assert results == expected_results
    assert metrics == expected_metrics
    assert stats.images == 5
    other_results, other_metrics, _ = pickle.loads((tmp_path / "rank1.pkl").read_bytes())
    assert other_results == expected_results and other_metrics is None
