"""Running a model over a COCO-format dataset (codetr.evaluation.runner): one process, several
(gloo), eager against exported, unreadable images, category mismatches."""

from __future__ import annotations

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

from codetr.data.coco import CocoDetection
from codetr.evaluation.coco import BBOX_METRICS
from codetr.evaluation.runner import evaluate_model

@pytest.fixture(scope="module")
def single_process(tiny_coco, tiny_predictor):
    """Results, metrics and stats of the eager model in this process, batch 1, no workers."""
    return evaluate_model(tiny_predictor(), CocoDetection(*tiny_coco), batch_size=1, workers=0, progress=False)


def test_eager_model_results_and_ap(tiny_coco, single_process, pycocotools_stats) -> None:
    results, metrics, stats = single_process
    assert stats.images == 5 and stats.images_skipped == 0 and stats.images_per_second > 0
    assert len(results) == 5 * 20  # tiny.toml max_per_img; score threshold 0 keeps every detection
    assert {entry["category_id"] for entry in results} <= {c["id"] for c in json.loads(tiny_coco[0].read_text())["categories"]}
    assert [metrics.bbox[name] for name in BBOX_METRICS] == pytest.approx(pycocotools_stats(tiny_coco[0], results), abs=1e-12)
    assert 0.2 < metrics.bbox["AP"] < 1.0 and metrics.bbox["AP50"] > metrics.bbox["AP75"]


def test_batches_and_workers_give_the_same_results(tiny_coco, tiny_predictor, single_process) -> None:
    results, metrics, _ = evaluate_model(tiny_predictor(), CocoDetection(*tiny_coco), batch_size=2, workers=2, progress=False)
    expected_results, expected_metrics, _ = single_process
    assert [(r["image_id"], r["category_id"]) for r in results] == [(r["image_id"], r["category_id"]) for r in expected_results]
    assert np.allclose([r["bbox"] for r in results], [r["bbox"] for r in expected_results], atol=2e-3)
    assert metrics.bbox == pytest.approx(expected_metrics.bbox, abs=1e-4)


def test_score_threshold_drops_detections(tiny_coco, tiny_predictor, single_process) -> None:
    results, _, _ = evaluate_model(tiny_predictor(), CocoDetection(*tiny_coco), workers=0, progress=False, score_threshold=0.5)
    assert results == [entry for entry in single_process[0] if entry["score"] > 0.5]


def test_unreadable_images_are_named_skipped_and_counted(
    tmp_path: Path, make_tiny_coco, tiny_predictor, caplog, pycocotools_stats
) -> None:
    annotation_file, image_dir = make_tiny_coco(tmp_path, images=4)
    (image_dir / "0002.png").write_bytes(b"not a png")
    (image_dir / "0003.png").unlink()
    with caplog.at_level(logging.WARNING, logger="codetr.evaluation"):
        results, metrics, stats = evaluate_model(tiny_predictor(), CocoDetection(annotation_file, image_dir), workers=0, progress=False)
    assert (stats.images, stats.images_skipped, stats.skipped) == (2, 2, ("0002.png", "0003.png"))
    assert metrics.images == 2 and {entry["image_id"] for entry in results} == {1, 4}
    assert "cannot decode image" in caplog.text and "0002.png" in caplog.text and "0003.png" in caplog.text
    # scored over the readable images only: the skipped images' ground truth is not counted as missed
    subset = json.loads(annotation_file.read_text())
    subset["images"] = [image for image in subset["images"] if image["id"] in (1, 4)]
    subset["annotations"] = [a for a in subset["annotations"] if a["image_id"] in (1, 4)]
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    assert metrics.bbox["AP"] == pytest.approx(pycocotools_stats(tmp_path / "subset.json", results)[0], abs=1e-12)


def test_no_readable_image_is_an_error(tmp_path: Path, make_tiny_coco, tiny_predictor) -> None:
    annotation_file, image_dir = make_tiny_coco(tmp_path, images=2)
    for path in image_dir.iterdir():
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 2 images of .*instances.json could be read"):
        evaluate_model(tiny_predictor(), CocoDetection(annotation_file, image_dir), workers=0, progress=False)


def test_category_names_that_do_not_match_are_an_error(tmp_path: Path, tiny_coco, tiny_predictor) -> None:
    dataset = json.loads(tiny_coco[0].read_text())
    dataset["categories"][0]["name"] = "truck"
    (tmp_path / "renamed.json").write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"(?s)renamed.json.*only in the model: \['car'\]; only in the file: \['truck'\]"):
        evaluate_model(tiny_predictor(), CocoDetection(tmp_path / "renamed.json", tiny_coco[1]), workers=0, progress=False)


def _distributed_worker(rank: int, world_size: int, port: int, make_predictor, tiny_coco: tuple[Path, Path], output: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results, metrics, stats = evaluate_model(make_predictor(), CocoDetection(*tiny_coco), workers=0, progress=False)
        (output / f"rank{rank}.pkl").write_bytes(pickle.dumps((results, metrics, stats)))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_single_process_ap(tmp_path: Path, tiny_coco, tiny_predictor, single_process) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # spawn, not fork: a forked child inherits whatever lock another thread of this process held
    # (torch's, the logging module's) and can wait on it forever; CI hung so once.
    mp.start_processes(_distributed_worker, args=(2, port, tiny_predictor, tiny_coco, tmp_path), nprocs=2, start_method="spawn")
    results, metrics, stats = pickle.loads((tmp_path / "rank0.pkl").read_bytes())
    expected_results, expected_metrics, _ = single_process
    assert results == expected_results
    assert metrics == expected_metrics
    assert stats.images == 5
    other_results, other_metrics, _ = pickle.loads((tmp_path / "rank1.pkl").read_bytes())
    assert other_results == expected_results and other_metrics is None
