"""``codetr infer``: detect objects in an image or a folder of images, with any exported artifact
(``--model``) or the eager PyTorch model (``--config`` / ``--checkpoint``).

An artifact runs through :func:`codetr.runtime.load_runtime`; the ``metadata.json`` beside it
gives the pre-processing, input size, class names and NMS, so ``--model`` needs nothing else.
Images are decoded by :func:`codetr.data.images.image_loader` in DataLoader workers and run
``--batch-size`` at a time.

Writes one run into the output folder: new, empty, or with ``--overwrite`` an earlier one that is
replaced whole (never the input folder, nor one holding the inputs). The run is written into a
folder beside it and swapped in when done (:func:`codetr.atomic.atomic_dir`), so the folder never
mixes two runs' files, and an error or Ctrl-C leaves it as it was. It holds:

``<input file name>.jpg``
    each input with its boxes, class names and scores drawn, e.g. ``a.png`` -> ``a.png.jpg`` and
    ``a.jpg`` -> ``a.jpg.jpg`` (the full name keeps same-stem inputs apart). Drawings from random
    weights carry a red "RANDOM WEIGHTS" banner.
``results.json``
    the detections in COCO results format: a list of {image_id, category_id, bbox [x, y, width,
    height] in original-image pixels, score}.
``images.json``
    the COCO ``images`` entries of the inputs that were read, [{id, file_name, height, width}],
    which tell which file each ``image_id`` of results.json is (file_name is relative to the
    input folder; height and width in pixels after EXIF orientation). The ids are the file stems
    when every stem is a distinct number (as for COCO's own files, ``000000000042.jpg`` -> 42),
    else the 1-based position of the file in name order, so they never collide.

An image that cannot be read is named on stderr and skipped; the others are still run and the
JSON files describe them. Exit status: 0 when every image was run, 1 when some were skipped,
2 (``error: ...``) when none could be read or an option is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from codetr.atomic import atomic_dir, atomic_path
from codetr.cli.common import (
    CONFIG_HELP, FLOAT16_ON_CPU, OVERWRITE_HELP, RANDOM_WEIGHTS_SEED, USE_EMA_HELP, check_output_folder, check_use_ema,
    device_type, interrupted, warn_random_weights,
)
from codetr.contract.artifacts import ARTIFACTS
from codetr.data.images import IMAGE_SUFFIXES, image_loader, list_images
from codetr.models import DTYPES
from codetr.postprocess import ImageDetections, coco_results
from codetr.runtime.predictor import Predictor

logger = logging.getLogger(__name__)

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS - detections are meaningless"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "infer",
        help="detect objects in images with an exported model or the PyTorch model; draw them, write COCO JSON",
        description="Detect objects in an image or a folder of images with an exported artifact (--model, "
        "its metadata.json beside it) or the eager PyTorch model (--config, --checkpoint). Writes "
        "<input file name>.jpg drawings, results.json (COCO results) and images.json (COCO images "
        "entries: which file each image_id is) into --output, which must not be the input folder.",
    )
    source = parser.add_argument_group("model (give --model, or --config with an optional --checkpoint)")
    source.add_argument("--model", type=Path, help="an exported artifact: "
                        f"{', '.join(spec.file_name for spec in ARTIFACTS.values())}, with the export's metadata.json beside it (default: none)")
    source.add_argument("--config", type=Path, help=f"the eager PyTorch model's config: {CONFIG_HELP} (default: none)")
    source.add_argument("--checkpoint", type=Path, help="with --config: official .pth (either layout) or codetr's own "
                        "(default: none = deterministic random weights, meaningless detections)")
    source.add_argument("--use-ema", action="store_true", help=USE_EMA_HELP)
    parser.add_argument("--input", required=True, type=Path,
                        help=f"an image file or a folder of images ({', '.join(IMAGE_SUFFIXES)}; not recursive)")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for drawn images, results.json and images.json: new or empty (created if "
                        "missing; never the input folder)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--score-threshold", type=float, default=0.3,
                        help="keep detections scoring above this and above the model's own test threshold (default: 0.3)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="images per run (default: 1); an export with a fixed batch size runs its own size "
                        "at a time, filling the last batch with blank images")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"image-decoding worker processes, 0 = decode in the main process "
                        f"(default: min(4, CPU count) = {DEFAULT_WORKERS})")
    parser.add_argument("--device", type=device_type, default=None,
                        help="cpu, cuda or cuda:N (default: with --config, cuda when a GPU is visible, else cpu; "
                        "with --model, the artifact's own: model.pt2 where it was exported, ONNX cpu, "
                        "TensorRT cuda)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="with --config: the eager model's precision (default: float32, the reference "
                        "precision; export defaults to float16 because it targets GPUs; float16 and bfloat16 on "
                        "a CPU are many times slower than float32). An artifact's precision is fixed by its export")
    parser.add_argument("--allow-tf32", action="store_true",
                        help="with --config on a GPU: let float32 matmuls and convolutions use TF32 "
                        "(default: off, IEEE float32)")
    return parser


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    paths = list_images(args.input)
    check_output(args.output, args.input, args.overwrite, models=[args.model, args.checkpoint, args.config])
    try:
        image_entries, results, skipped = _infer_into(args, paths)
    except KeyboardInterrupt:
        return interrupted(args.output)
    print(f"{len(image_entries)} image(s), {len(results)} detection(s) -> {args.output}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s): {', '.join(str(path) for path in skipped)}", file=sys.stderr)
        return 1
    return 0


def _infer_into(args: argparse.Namespace, paths: list[Path]) -> tuple[list[dict], list[dict], list[Path]]:
    """Run the model on ``paths`` and write the run to ``args.output`` as one unit."""
    # Workers start decoding now, while the model loads (and fork before its libraries start threads).
    batches = iter(image_loader(paths, args.batch_size, args.workers))
    predictor = make_predictor(args)
    warn_slow_precision(predictor)
    if predictor.random_weights and args.model is None:
        warn_random_weights(RANDOM_WEIGHTS_SEED)
    elif predictor.random_weights:
        logger.warning("%s was exported without --checkpoint: RANDOM WEIGHTS, its detections are meaningless", args.model)
    image_ids = coco_image_ids(paths)
    with atomic_dir(args.output) as staging:
        return run_images(predictor, batches, paths, image_ids, args.score_threshold, staging)


def run_images(
    predictor: Predictor, batches, paths: list[Path], image_ids: list[int], score_threshold: float, output: Path
) -> tuple[list[dict], list[dict], list[Path]]:
    """Run every batch, drawing into ``output``: (COCO images entries, COCO results, skipped paths).
    ValueError when no image could be read."""
    results, image_entries, skipped = [], [], []
    with tqdm(total=len(paths), desc="infer", unit="image", disable=len(paths) == 1) as progress:
        for records in batches:
            for record in records:
                if record.image is None:
                    skipped.append(record.path)
                    tqdm.write(f"skipped: {record.error}", file=sys.stderr)
            readable = [record for record in records if record.image is not None]
            detections = predictor([record.image for record in readable], score_threshold) if readable else []
            for record, found in zip(readable, detections):
                image_id = image_ids[record.index]
                results += coco_results(image_id, found, predictor.category_ids)
                height, width = record.image.shape[1:]
                image_entries.append(
                    {"id": image_id, "file_name": record.path.name, "height": int(height), "width": int(width)}
                )
                drawing = draw(record.image, found, predictor.class_names, predictor.random_weights)
                save_jpeg(drawing, output / f"{record.path.name}.jpg")
            progress.update(len(records))
    if not image_entries:
        raise ValueError(f"none of the {len(paths)} image(s) could be read (see the messages above)")
    write_json(output / "results.json", results, indent=None)
    write_json(output / "images.json", image_entries, indent=1)
    return image_entries, results, skipped


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the option for every combination or value that cannot work."""
    if (args.model is None) == (args.config is None):
        raise ValueError("give --model (an exported artifact) or --config (the eager PyTorch model), not both or neither")
    if args.model is not None:
        for option, given in (("--checkpoint", args.checkpoint is not None), ("--use-ema", args.use_ema),
                              ("--dtype", args.dtype is not None)):
            if given:
                raise ValueError(f"{option} applies to --config only; an artifact's weights and precision are fixed by its export")
        if args.allow_tf32:
            raise ValueError("--allow-tf32 applies to --config only; an artifact's TF32 setting is fixed by its export")
    check_use_ema(args.use_ema, args.checkpoint)
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")


def check_output(output: Path, source: Path, overwrite: bool, models: Sequence[Path | None] = ()) -> None:
    """Refuse an ``--output`` that is the folder the inputs are in, and any that
    :func:`codetr.cli.common.check_output_folder` refuses: with ``overwrite`` it is replaced
    whole, so it must not hold ``source`` or one of ``models`` (--model, --checkpoint, --config)."""
    input_folder = source if source.is_dir() else source.parent
    if output.exists() and os.path.samefile(output, input_folder):
        raise ValueError(
            f"--output {output} is the input folder; write the drawn images and JSON to another folder, "
            f"e.g. --output {input_folder.resolve().name}_detections"
        )
    check_output_folder(output, overwrite, inputs=[source, *(path for path in models if path is not None)])


def make_predictor(args: argparse.Namespace) -> Predictor:
    if args.model is not None:
        return Predictor.from_artifact(args.model, device=args.device)
    return Predictor.from_config(
        args.config, args.checkpoint, device=args.device, dtype=args.dtype or "float32", allow_tf32=args.allow_tf32,
        use_ema=args.use_ema,
    )


def warn_slow_precision(predictor: Predictor) -> None:
    dtype = predictor.runtime.metadata.dtype if predictor.runtime.metadata else str(getattr(predictor.runtime, "dtype", ""))
    if predictor.runtime.device.type == "cpu" and dtype.removeprefix("torch.") in ("float16", "bfloat16"):
        logger.warning("%s; or run --dtype float32 (eager) or a float32 export", FLOAT16_ON_CPU)


def coco_image_ids(paths: list[Path]) -> list[int]:
    """COCO image id per path: the stems when all are distinct numbers, else positions 1..N."""
    stems = [path.stem for path in paths]
    if all(stem.isdigit() for stem in stems) and len({int(stem) for stem in stems}) == len(stems):
        return [int(stem) for stem in stems]
    return list(range(1, len(paths) + 1))


def draw(image: torch.Tensor, detections: ImageDetections, class_names: tuple[str, ...], random_weights: bool) -> Image.Image:
    """``image`` (uint8 RGB [3, H, W]) with each box and "<class> <score>" drawn in red; with
    ``random_weights``, a red banner across the top saying so."""
    captions = [f"{class_names[label]} {score:.2f}" for label, score in zip(detections.labels.tolist(), detections.scores.tolist())]
    if captions:
        image = draw_bounding_boxes(image, detections.boxes, labels=captions, colors="red", width=2)
    drawing = to_pil_image(image)  # without detections the image as it is (torchvision would warn "no box")
    if random_weights:
        font = ImageFont.load_default(size=max(10, min(drawing.size) // 24))
        canvas = ImageDraw.Draw(drawing)
        left, top, right, bottom = canvas.textbbox((4, 2), RANDOM_WEIGHTS_BANNER, font=font)
        canvas.rectangle((0, 0, drawing.width, bottom + 2), fill=(200, 0, 0))
        canvas.text((4, 2), RANDOM_WEIGHTS_BANNER, fill=(255, 255, 255), font=font)
    return drawing


def save_jpeg(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as temporary:
        image.save(temporary, format="JPEG", quality=90)


def write_json(path: Path, value: object, indent: int | None) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=indent) + "\n")
