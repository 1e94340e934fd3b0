"""``codetr data``: make datasets. ``codetr data synthetic`` writes a generated COCO-format dataset."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from codetr.cli.common import interrupted
from codetr.data.synthetic import CLASSES, generate_dataset


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("data", help="make datasets (a generated COCO-format dataset)",
                                   description="Make datasets for evaluation and training.")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synthetic = commands.add_parser(
        "synthetic",
        help="generate a COCO-format dataset of coloured, textured shapes",
        description=(
            "Write OUTPUT/annotations/instances_{train,val}.json (COCO format) and the JPEG images in "
            "OUTPUT/train/ and OUTPUT/val/: objects of K classes (" + ", ".join(c.name for c in CLASSES)
            + ") differing in shape, colour and texture, 1-12 per image, 8 px to 60% of the image, partly "
            "occluded or cut by the border, on cluttered backgrounds. Boxes are the visible extent. "
            "Byte-identical for a seed whatever --workers."
        ),
    )
    synthetic.add_argument("--output", type=Path, required=True, help="dataset folder (must not exist or be empty)")
    synthetic.add_argument("--train-images", type=int, default=1000, help="images in the train split, 0 for none (default: %(default)s)")
    synthetic.add_argument("--val-images", type=int, default=200, help="images in the val split, 0 for none (default: %(default)s)")
    synthetic.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"), help="image height and width in pixels (default: 512 512)")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default: %(default)s)")
    synthetic.add_argument("--classes", type=int, default=len(CLASSES), help=f"number of classes K, 1-{len(CLASSES)}: the first K of the list above (default: %(default)s)")
    synthetic.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                           help="processes rendering images (default: the usable CPU cores, here %(default)s)")
    synthetic.add_argument("--overwrite", action="store_true", help="replace an existing generated dataset in --output")
    synthetic.set_defaults(data_run=run_synthetic)
    return parser


def run(args: argparse.Namespace) -> int:
    return args.data_run(args)


def run_synthetic(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        summaries = generate_dataset(args.output, args.train_images, args.val_images, args.size, args.seed,
                                     num_classes=args.classes, workers=args.workers, overwrite=args.overwrite,
                                     progress=True)
    except KeyboardInterrupt:
        return interrupted(args.output)
    seconds = time.perf_counter() - started
    images = sum(summary.images for summary in summaries)
    for summary in summaries:
        print(f"{summary.split}: {summary.images} images, {summary.objects} objects")
    print(f"{images} images in {seconds:.1f} s ({images / seconds:.0f} images/s) -> {args.output}")
    return 0
