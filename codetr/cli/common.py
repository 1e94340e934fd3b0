"""Argument checks and messages every subcommand shares, so each mistake reads the same."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from codetr.atomic import check_replaceable_dir
from codetr.config import shipped_configs

logger = logging.getLogger("codetr")

FLOAT16_ON_CPU = (
    "float16 and bfloat16 run many times slower than float32 on a CPU (one 1024x1024 image can take "
    "minutes); use them on a GPU"
)


def device_type(text: str) -> torch.device:
    """argparse ``type`` of ``--device``: a torch device that exists on this machine."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is visible; use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: only {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return device


USE_EMA_HELP = (
    "load the checkpoint's EMA-named copy (mmdet 2.x ema_* buffers or mmengine ema_state_dict) instead of its "
    "main weights (default: off; the training hooks already save the averaged weights as the main weights)"
)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to each option's help, unless the help already says its default
    or the option is required."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def check_use_ema(use_ema: bool, checkpoint: Path | None) -> None:
    """ValueError for --use-ema without a --checkpoint to take the EMA copy of."""
    if use_ema and checkpoint is None:
        raise ValueError("--use-ema loads the EMA copy of --checkpoint; give --checkpoint (without one the weights are random)")


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


RANDOM_WEIGHTS_SEED = 0
"""Seed of the eager model's random weights without --checkpoint (what Predictor.from_config builds)."""


def warn_random_weights(seed: int) -> None:
    """The loud warning of every command that runs or exports a model without a checkpoint."""
    message = (
        f"NO --checkpoint GIVEN: using DETERMINISTIC RANDOM WEIGHTS (seed {seed}). "
        "Everything runs, but the detections are meaningless; pass --checkpoint for a real model."
    )
    banner = "!" * len(message)
    logger.warning("\n%s\n%s\n%s", banner, message, banner)


CONFIG_HELP = f"a config TOML file, or a shipped config's name ({', '.join(shipped_configs())})"

OVERWRITE_HELP = "replace an --output folder that is not empty, and everything in it (default: refuse)"


def check_output_folder(output: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Raise, before any work, unless a run can be written to ``output`` as one unit
    (:func:`codetr.atomic.atomic_dir`): ``output`` must be missing or an empty folder, or, with
    ``overwrite``, a folder that is then replaced whole, so an earlier run's files never sit
    beside this run's. Never a file, the current folder, or a folder holding one of ``inputs``
    (replacing it would delete them). NotADirectoryError, FileExistsError, ValueError or
    PermissionError naming --output (:func:`codetr.atomic.check_replaceable_dir`)."""
    check_replaceable_dir(output, overwrite, argument="--output", inputs=inputs)


def left_as_it_was(output: Path) -> str:
    """What an output written as one unit (:func:`codetr.atomic.atomic_dir`) holds after a failed
    or interrupted run: what it held before, or nothing."""
    return f"{output} was left as it was" if output.exists() else f"nothing was written ({output} does not exist)"


def interrupted(output: Path) -> int:
    """Say, after Ctrl-C, that ``output`` (written as one unit) was left as it was, and return the
    front door's exit status for an interrupt, 130."""
    print(f"interrupted: {left_as_it_was(output)}", file=sys.stderr)
    return 130
