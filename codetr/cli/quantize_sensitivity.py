"""``codetr quantize-sensitivity``: the AP cost of INT8 per layer group (table + JSON).

Calibrates once with ModelOpt, then evaluates the model with one group quantized at a time (see
:mod:`codetr.quantization.sensitivity`) on a COCO-format validation set.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from codetr.atomic import check_writable_file
from codetr.checkpoint import load_checkpoint
from codetr.cli.common import CONFIG_HELP, default_device, device_type, warn_random_weights
from codetr.cli.int8_options import add_int8_arguments, calibration_from_args
from codetr.config import load_config
from codetr.data.coco import CocoDetection, resolve_dataset
from codetr.evaluation.runner import evaluate_model
from codetr.models import DTYPES, build_model
from codetr.quantization.int8 import calibrate
from codetr.quantization.sensitivity import format_table, run_sensitivity, write_sensitivity
from codetr.runtime.eager import EagerRuntime
from codetr.runtime.predictor import Predictor

logger = logging.getLogger("codetr.quantization")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "quantize-sensitivity",
        help="AP drop of INT8 per layer group (backbone stages, neck, encoder/decoder layers, heads)",
        description="Calibrate INT8 once with NVIDIA ModelOpt, then quantize one layer group at a time and "
        "evaluate COCO AP: writes the AP drop per group as JSON and a Markdown table. Needs "
        "pip install 'codetr[int8]'.",
    )
    parser.add_argument("--config", type=Path, required=True, help=CONFIG_HELP)
    parser.add_argument("--checkpoint", type=Path, help="weights (default: none, random weights: meaningless AP)")
    parser.add_argument("--data", type=Path, required=True,
                        help="COCO-format dataset folder (annotations/instances_<split>[2017].json and its images)")
    parser.add_argument("--split", default="val", help="split of --data to evaluate (default: %(default)s)")
    parser.add_argument("--max-images", type=int, help="evaluate only the first N images of the split (default: all)")
    parser.add_argument("--output", type=Path, required=True,
                        help="JSON file for the table; the Markdown table is written beside it (.md)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="floating-point dtype of the model and of the unquantized parts (default: %(default)s)")
    parser.add_argument("--device", type=device_type, default=default_device(), help="device (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images (default: %(default)s)")
    add_int8_arguments(parser, for_export=False)
    return parser


class _FirstImages:
    """The first ``count`` images of a :class:`CocoDetection` (the view evaluate_model reads)."""

    def __init__(self, dataset: CocoDetection, count: int) -> None:
        self._dataset = dataset
        self._count = min(count, len(dataset))
        self.annotation_file, self.image_dir = dataset.annotation_file, dataset.image_dir
        self.image_ids = dataset.image_ids[: self._count]

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int):
        return self._dataset[index]

    def image_info(self, index: int) -> dict:
        return self._dataset.image_info(index)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file {args.checkpoint}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    # Before any evaluation: the table and its Markdown copy are written at the end.
    inputs = [path for path in (args.config, args.checkpoint, args.data) if path is not None and path.exists()]
    check_writable_file(args.output, argument="--output", suffixes=(".json",), inputs=inputs)
    check_writable_file(args.output.with_suffix(".md"), argument="--output's Markdown copy", inputs=inputs)
    config = load_config(args.config)
    annotation_file, image_dir = resolve_dataset(args.data, args.split)
    dataset = CocoDetection(annotation_file, image_dir)
    if args.max_images is not None:
        dataset = _FirstImages(dataset, args.max_images)
    if args.calibration_data is None:
        args.calibration_data = str(args.data)  # the dataset's own calibration split (default train)
    calibration = calibration_from_args(args, config)

    model = build_model(config, seed=0)
    if args.checkpoint is None:
        warn_random_weights(0)
    else:
        load_checkpoint(model, args.checkpoint)
    model.eval().requires_grad_(False)
    amax = calibrate(model, calibration, config.preprocess, args.device, progress=True)

    def evaluate(candidate: torch.nn.Module) -> float:
        runtime = EagerRuntime(candidate, device=args.device, dtype=args.dtype)
        predictor = Predictor(runtime, config.preprocess, config.test, config.class_names, config.coco_category_ids,
                              random_weights=args.checkpoint is None)
        _, metrics, _ = evaluate_model(predictor, dataset, batch_size=args.batch_size, workers=args.workers,
                                       progress=False)
        runtime.model.to("cpu")  # free the device before the next configuration
        return metrics.bbox["AP"]

    rows = run_sensitivity(model, amax, evaluate, log=logger.info)
    details = {
        "config": config.name, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "dtype": args.dtype, "device": str(args.device), "split": args.split, "images": len(dataset),
        "calibration": calibration.to_json(), "ap_units": "fraction in [0, 1]; drop = floating point AP - row AP",
    }
    write_sensitivity(rows, args.output, details)
    print(format_table(rows), end="")
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0
