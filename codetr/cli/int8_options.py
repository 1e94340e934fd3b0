"""The INT8 options shared by ``codetr export`` and ``codetr quantize-sensitivity``.

Not a subcommand: :func:`add_int8_arguments` declares the options on a parser, and
:func:`calibration_from_args` checks them (before any model work) and picks the images.
"""

from __future__ import annotations

import argparse

import torch

from codetr.config import Config
from codetr.models import build_model
from codetr.quantization.calibration import DEFAULT_CALIBRATION_IMAGES, CalibrationSet, calibration_set
from codetr.quantization.int8 import DEFAULT_EXCLUDE, excluded_names, import_modelopt, quantizable_modules

ALL = "all"


def _image_count(text: str) -> int | None:
    if text == ALL:
        return None
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or '{ALL}', got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or '{ALL}', got {count}")
    return count


def add_int8_arguments(parser: argparse.ArgumentParser, for_export: bool) -> None:
    """``--calibration-data``, ``--calibration-images``, ``--calibration-split``; for an export also
    ``--int8``, ``--int8-exclude`` and ``--int8-no-default-exclude``."""
    if for_export:
        parser.add_argument("--int8", action="store_true",
                            help="INT8 post-training quantization with NVIDIA ModelOpt (needs --calibration-data; "
                            "pip install 'codetr[int8]'; default: off)")
    parser.add_argument("--calibration-data", type=str, metavar="DIR",
                        help="INT8 calibration images: a folder of images, or a COCO-format dataset folder "
                        "(annotations/instances_<split>[2017].json with its image folder)"
                        + ("; default: none" if for_export else "; default: --data"))
    parser.add_argument("--calibration-images", type=_image_count, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                        help="use the first N calibration images, or 'all' (default: %(default)s)")
    parser.add_argument("--calibration-split", default="train",
                        help="split of a COCO-format --calibration-data (default: %(default)s)")
    if not for_export:
        return
    parser.add_argument("--int8-exclude", action="append", default=[], metavar="PATTERN",
                        help="keep the Linear/Conv2d modules whose name (or a parent's) matches this glob in floating "
                        "point, on top of the defaults; repeatable (defaults: " + ", ".join(DEFAULT_EXCLUDE) + ")")
    parser.add_argument("--int8-no-default-exclude", action="store_true",
                        help="drop the default exclusions: quantize every Linear/Conv2d not matched by --int8-exclude")


def calibration_from_args(args: argparse.Namespace, config: Config, enabled: bool = True) -> CalibrationSet | None:
    """The calibration images of ``args`` (None when INT8 is off); ValueError / FileNotFoundError
    naming the option for a missing ModelOpt, missing or empty calibration data, an
    ``--int8-exclude`` pattern that matches no module of ``config``'s model, or INT8 options given
    without ``--int8``. Checks only: builds the model on the meta device (no memory, no weights)."""
    if not enabled:
        given = [name for name, value in (("--calibration-data", args.calibration_data),
                                          ("--int8-exclude", args.int8_exclude),
                                          ("--int8-no-default-exclude", args.int8_no_default_exclude)) if value]
        if given:
            raise ValueError(f"{', '.join(given)}: only used with --int8")
        return None
    import_modelopt()
    if args.calibration_data is None:
        raise ValueError("--int8 needs --calibration-data DIR (a folder of images or a COCO-format dataset)")
    patterns = getattr(args, "int8_exclude", [])
    if patterns:
        with torch.device("meta"):
            names = quantizable_modules(build_model(config, seed=0))
        excluded_names(names, patterns, required=patterns)
    try:
        return calibration_set(args.calibration_data, args.calibration_images, args.calibration_split)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--calibration-data: {error}") from None
