"""``codetr infer``: detect objects in an image or a folder of images.

Writes, into the output folder, one ``<stem>.jpg`` per input with the boxes and class names
drawn, and ``results.json`` (COCO results format, boxes in original pixels) plus
``images.json`` (COCO ``images`` entries: id, file_name, height, width). Image ids are the file
stem when it is a number (as for COCO's own files), else the 1-based position in sorted order.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from torchvision.io import encode_jpeg
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from codetr.atomic import atomic_path
from codetr.checkpoint import load_checkpoint
from codetr.config import Config, load_config
from codetr.models import DTYPES, build_model
from codetr.postprocess import ImageDetections, coco_results, postprocess
from codetr.preprocess import IMAGE_SUFFIXES, load_image, make_batch

logger = logging.getLogger(__name__)



def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("infer", help="detect objects in images, draw them, write COCO JSON")
    parser.add_argument("--config", required=True, type=Path, help="configs/*.toml")
    parser.add_argument("--checkpoint", type=Path, help="official .pth (either layout) or our own; omitted = random weights")
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, type=Path, help="folder for drawn images and JSON results")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="keep detections scoring above this (default 0.3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    return parser


def list_images(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        images = sorted(path for path in source.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {source}")
        return images
    raise FileNotFoundError(f"--input does not exist: {source}")


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    config = load_config(args.config)
    images = list_images(args.input)
    model = build_model(config)
    if args.checkpoint is None:
        logger.warning(
            "\n%s\nNO CHECKPOINT GIVEN: the model has deterministic RANDOM weights and its detections are "
            "MEANINGLESS.\nPass --checkpoint to use trained weights.\n%s",
            "!" * 80,
            "!" * 80,
        )
    else:
        report = load_checkpoint(model, args.checkpoint)
        logger.info("loaded %d tensors (%s layout) from %s", report.loaded, report.layout, args.checkpoint)
    model = model.to(device=args.device, dtype=DTYPES[args.dtype])
    args.output.mkdir(parents=True, exist_ok=True)

    results, image_entries = [], []
    for position, path in enumerate(tqdm(images, desc="infer", unit="image", disable=len(images) == 1), start=1):
        image = load_image(path)
        image_id = int(path.stem) if path.stem.isdigit() else position
        detections = detect(model, config, image, args.device, args.score_threshold)
        results.extend(coco_results(image_id, detections, config.coco_category_ids))
        image_entries.append({"id": image_id, "file_name": path.name, "height": image.shape[1], "width": image.shape[2]})
        _write_bytes(args.output / f"{path.stem}.jpg", bytes(encode_jpeg(draw(image, detections, config)).numpy()))
    _write_bytes(args.output / "results.json", json.dumps(results).encode())
    _write_bytes(args.output / "images.json", json.dumps(image_entries, indent=1).encode())
    print(f"{len(images)} image(s), {len(results)} detection(s) -> {args.output}")
    return 0


@torch.inference_mode()
def detect(model: torch.nn.Module, config: Config, image: torch.Tensor, device: str, score_threshold: float) -> ImageDetections:
    batch = make_batch([image], config.preprocess)
    detections = model(batch.images.to(device), batch.image_sizes.to(device))
    return postprocess(detections, batch, config.test.nms, max(score_threshold, config.test.score_threshold))[0]


def draw(image: torch.Tensor, detections: ImageDetections, config: Config) -> torch.Tensor:
    captions = [f"{config.class_names[label]} {score:.2f}" for label, score in zip(detections.labels.tolist(), detections.scores.tolist())]
    return draw_bounding_boxes(image, detections.boxes, labels=captions, colors="red", width=2)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
