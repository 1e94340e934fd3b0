"""``codetr train``: train or fine-tune Co-DINO's query head on a COCO-format dataset.

Writes OUT/latest.pth (+ OUT/iter_<n>.pth every --save-every), OUT/train_log.jsonl, OUT/loss.png
and, with --eval-every, OUT/metrics.json. Several GPUs: ``torchrun --nproc-per-node N -m codetr
train ...`` (same global --batch-size, split over the processes).

``--resume`` continues the run in OUT as it was started: options left out take the run's values
(stored in the checkpoint's meta), and one given with another value is refused.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from codetr.cli.common import CONFIG_HELP, DefaultsHelpFormatter, device_type
from codetr.config import load_config
from codetr.training.trainer import AMP_DTYPES, TrainOptions, train


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune Co-DINO (query head with denoising) on a COCO-format dataset",
        description=__doc__,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--config", required=True, type=Path, help=f"{CONFIG_HELP}; its [train] table holds the recipe")
    parser.add_argument("--data", required=True, type=Path, help="dataset root: COCO 2017 layout or `codetr data synthetic` output")
    parser.add_argument("--output", required=True, type=Path, help="folder for checkpoints, logs and the loss plot")
    parser.add_argument("--checkpoint", type=Path, default=None, help="initial weights (official or own .pth) (default: from scratch)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, default=None, help="optimiser steps (default: 12 epochs; with --resume: the run's)")
    length.add_argument("--epochs", type=float, default=None, help="passes over the training split (default: see --iterations)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="shorten the run (and its schedule) to what fits this many minutes, measured after 40 iterations; "
                        "the iterations chosen are logged and stored in the checkpoint (default: no limit)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the config's train.batch_size; with --resume: the run's)")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate (default: the config's train.lr; with --resume: the run's)")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default=None,
                        help="automatic mixed precision; fp16 on CUDA only (default: none; with --resume: the run's)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of weights, sample order, augmentation and denoising noise (default: 0; with --resume: the run's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from OUTPUT/latest.pth, as the run was started: an option given that "
                        "differs from the run's is refused (to change one, start a new run with --checkpoint "
                        "OUTPUT/latest.pth)")
    parser.add_argument("--save-every", type=int, default=0, help="also write OUTPUT/iter_<n>.pth every n iterations (0: only latest.pth at the end)")
    parser.add_argument("--eval-every", type=int, default=0, help="val-split AP every n iterations and at the end (0: never)")
    parser.add_argument("--log-every", type=int, default=10, help="write a train_log.jsonl line every n iterations")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="data-loading processes per training process")
    parser.add_argument("--device", type=device_type, default=None, help="cpu, cuda or cuda:N (default: cuda when available; torchrun: cuda:LOCAL_RANK)")
    return parser


RUN_FILES = ("latest.pth", "train_log.jsonl")
"""Files that mark a folder as a training run."""


def check_run_folder(output: Path, data: Path, resume: bool) -> None:
    """ValueError, before any work, for an --output that would mix runs or land in the data:
    a folder holding files needs --resume (and a run to resume); --resume needs a run."""
    output, data = output.resolve(), data.resolve()
    if output == data or data in output.parents:
        raise ValueError(f"--output {output} is inside the dataset --data {data}; choose a folder outside it")
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} exists and is not a folder")
    holds_run = any((output / name).is_file() for name in RUN_FILES)
    if resume and not holds_run:
        raise FileNotFoundError(f"--resume: {output} holds no training run ({' or '.join(RUN_FILES)}) to resume")
    if not resume and output.is_dir() and any(output.iterdir()):
        what = "a training run" if holds_run else "other files"
        raise ValueError(
            f"--output {output} already holds {what}; pass --resume to continue that run, or choose a new or empty folder"
        )


def run(args: argparse.Namespace) -> int:
    for name in ("iterations", "epochs", "batch_size", "lr", "time_limit"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name in ("save_every", "eval_every", "workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.log_every < 1:
        raise ValueError(f"--log-every must be >= 1, got {args.log_every}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint not found: {args.checkpoint}")
    check_run_folder(args.output, args.data, args.resume)
    options = TrainOptions(
        config=load_config(args.config),
        data=args.data,
        output=args.output,
        checkpoint=args.checkpoint,
        iterations=args.iterations,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        amp=args.amp,
        seed=args.seed,
        resume=args.resume,
        save_every=args.save_every,
        eval_every=args.eval_every,
        log_every=args.log_every,
        workers=args.workers,
        device=args.device,
        time_limit=args.time_limit,
    )
    result = train(options)
    if result.metrics is not None:
        print(f"val AP {result.metrics['AP']:.4f} AP50 {result.metrics['AP50']:.4f} AP75 {result.metrics['AP75']:.4f}")
    print(f"trained {result.iterations} iterations, final loss {result.final_loss:.4f}; weights in {args.output / 'latest.pth'}")
    return 0
