"""COCO bbox AP of the model on a validation split, during and after training."""

from __future__ import annotations

import contextlib
import io
import json

import torch

from codetr.config import Config
from codetr.data.images import read_image
from codetr.models import CoDINO
from codetr.postprocess import coco_results, postprocess
from codetr.preprocess import make_batch
from codetr.training.data import DatasetSplit, category_labels

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
"""The 12-number COCO summary's first nine entries, pycocotools' order."""


class _ImageList(torch.utils.data.Dataset):
    def __init__(self, split: DatasetSplit, images: list[dict]) -> None:
        self.split = split
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        entry = self.images[index]
        return entry["id"], read_image(self.split.image_dir / entry["file_name"])


@torch.no_grad()
def evaluate_model(
    model: CoDINO, config: Config, split: DatasetSplit, device: torch.device, batch_size: int = 8, workers: int = 0
) -> dict[str, float]:
    """Runs the eval-mode model over the split (test pre-processing, the config's NMS) and
    scores it. Returns {"AP": ..., "AP50": ..., ...} as fractions."""
    with split.annotation_file.open() as file:
        coco = json.load(file)
    labels = category_labels(coco.get("categories", []), config, split.annotation_file)
    category_ids = tuple(sorted(labels, key=labels.get))
    loader = torch.utils.data.DataLoader(
        _ImageList(split, coco["images"]), batch_size=batch_size, num_workers=workers, collate_fn=lambda items: list(zip(*items))
    )
    was_training = model.training
    model.eval()
    results: list[dict] = []
    try:
        for image_ids, images in loader:
            batch = make_batch(list(images), config.preprocess)
            detections = model(batch.images.to(device), batch.image_sizes.to(device))
            detections = type(detections)(*(tensor.cpu() for tensor in detections))
            for image_id, found in zip(image_ids, postprocess(detections, batch, config.test.nms, config.test.score_threshold)):
                results.extend(coco_results(image_id, found, category_ids))
    finally:
        model.train(was_training)
    return coco_bbox_metrics(results, split.annotation_file)


def coco_bbox_metrics(results: list[dict], annotation_file) -> dict[str, float]:
    """COCO bbox protocol through pycocotools (the one place to swap for
    ``codetr.evaluation.coco.evaluate_detections`` once it is on main)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluation.stats)}
