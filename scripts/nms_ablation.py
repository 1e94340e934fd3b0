"""COCO AP of one detector's results under each host NMS of codetr: none, hard class-wise NMS
(torchvision's batched_nms) and soft-NMS (codetr.postprocess.soft_nms, mmcv's linear rule).

Host post-processing only reorders and rescores a model's top-k detections, so a results file of
a run without NMS (``codetr eval`` with a config whose ``[test.nms] kind = "none"`` writes every
top-k detection, score threshold 0) holds everything each NMS needs: this script applies them per
image and scores each with pycocotools. Boxes are the results file's (original-image pixels,
rounded to 3 decimals by the COCO writer).

    python scripts/nms_ablation.py RESULTS.json ANNOTATIONS.json [--iou-threshold 0.8] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections import defaultdict
from pathlib import Path

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import batched_nms

from codetr.postprocess import soft_nms

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def score(annotations: COCO, results: list[dict]) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(annotations, annotations.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return dict(zip(METRICS, (float(value) for value in evaluation.stats)))


def suppressed(results: list[dict], kind: str, iou_threshold: float) -> list[dict]:
    by_image = defaultdict(list)
    for result in results:
        by_image[result["image_id"]].append(result)
    kept = []
    for image_results in by_image.values():
        xywh = torch.tensor([result["bbox"] for result in image_results], dtype=torch.float64)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1).float()
        scores = torch.tensor([result["score"] for result in image_results], dtype=torch.float32)
        labels = torch.tensor([result["category_id"] for result in image_results])
        if kind == "nms":
            keep = batched_nms(boxes, scores, labels, iou_threshold)
            new_scores = scores[keep]
        else:
            keep, new_scores = soft_nms(boxes, scores, labels, iou_threshold)
        kept += [{**image_results[index], "score": float(value)} for index, value in zip(keep.tolist(), new_scores.tolist())]
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="COCO results JSON written without NMS")
    parser.add_argument("annotations", type=Path, help="the COCO annotation file it was evaluated on")
    parser.add_argument("--iou-threshold", type=float, default=0.8, help="both NMS kinds (default: %(default)s, Co-DINO's)")
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    args = parser.parse_args()
    with contextlib.redirect_stdout(io.StringIO()):
        annotations = COCO(str(args.annotations))
    results = json.loads(args.results.read_text())
    rows = {kind: score(annotations, results if kind == "none" else suppressed(results, kind, args.iou_threshold))
            for kind in ("none", "nms", "soft_nms")}
    print("host NMS   " + "".join(f"{name:>8}" for name in METRICS))
    for kind, metrics in rows.items():
        print(f"{kind:<10} " + "".join(f"{metrics[name]:8.4f}" for name in METRICS))
    if args.json:
        args.json.write_text(json.dumps({"iou_threshold": args.iou_threshold, "metrics": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
