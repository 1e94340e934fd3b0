"""``codetr eval``: COCO bbox AP of exported models, the eager model, or an existing results file.

One model: ``OUT/metrics.json`` and ``OUT/results.json``. Several (``--model`` repeated, and/or
``--config`` for the eager model, which comes first): one subfolder per model and
``OUT/comparison.json`` with each model's AP difference to the first and, per image, the largest
score and box differences of matched top detections (:mod:`codetr.evaluation.compare`).
``OUT`` is new, empty, or with ``--overwrite`` an earlier run's folder that is replaced whole; the
files are written beside it and swapped in at the end (:func:`codetr.atomic.atomic_dir`), so it
never mixes two runs' files and an error or Ctrl-C leaves it as it was.
Under ``torchrun --nproc-per-node N -m codetr eval ...`` the images are sharded over the ranks
and rank 0 scores, prints and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist

from codetr.atomic import atomic_dir, atomic_path
from codetr.cli.common import (
    CONFIG_HELP, OVERWRITE_HELP, USE_EMA_HELP, check_output_folder, check_use_ema, device_type, interrupted,
)
from codetr.config import PreprocessConfig, load_config
from codetr.data.coco import CocoDetection, resolve_dataset
from codetr.evaluation.coco import (
    BBOX_METRICS, Metrics, evaluate_detections, load_annotations, load_results, results_mismatch,
)
from codetr.evaluation.compare import compare_detections
from codetr.evaluation.runner import RunStats, evaluate_model
from codetr.models import DTYPES
from codetr.runtime.predictor import Predictor

logger = logging.getLogger("codetr.eval")

COMPARED_DETECTIONS = 10
"""Top detections per image whose score and box differences --model comparisons report."""


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluated model (or results file): its name in tables and folders, and what it scored."""

    label: str
    results: list[dict]
    metrics: Metrics
    stats: RunStats | None  # None for a results file: nothing was run


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="COCO bbox AP of exported models, the eager model or a results file",
        description="Run models over a COCO-format dataset and score them with pycocotools' COCOeval (bbox), "
        "or score an existing COCO results file.",
    )
    source = parser.add_argument_group("what to evaluate (--model and/or --config, or --detections)")
    source.add_argument("--model", type=Path, action="append", default=[], dest="models", metavar="ARTIFACT",
                        help="exported model (.pt2, .onnx, .engine, ...) with its metadata.json; repeat to "
                        "compare several on the same images (the first is the reference)")
    source.add_argument("--config", type=Path, help=f"evaluate the eager PyTorch model (first in the table) of this config: {CONFIG_HELP}")
    source.add_argument("--checkpoint", type=Path, help="weights for --config (default: none, random weights)")
    source.add_argument("--use-ema", action="store_true", help=USE_EMA_HELP)
    source.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="precision of --config's model (default: float32); an artifact's is fixed by its export")
    source.add_argument("--allow-tf32", action="store_true", help="let --config's float32 model use TF32 on GPUs (default: off)")
    source.add_argument("--detections", type=Path, help="score this COCO results file instead of running a model")
    data = parser.add_argument_group("dataset (--annotations [--images], or --data)")
    data.add_argument("--annotations", type=Path, help="COCO annotation file (instances_*.json)")
    data.add_argument("--images", type=Path, help="folder of the annotation file's images (file_name is relative to it)")
    data.add_argument("--data", type=Path, help="dataset folder: COCO 2017 layout (annotations/instances_val2017.json, "
                      "val2017/) or the generated one (annotations/instances_val.json, val/)")
    data.add_argument("--split", default="val", help="split of --data (default: %(default)s)")
    parser.add_argument("--output", type=Path,
                        help="new or empty folder for metrics.json and results.json (default: print only)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes decoding images (default: %(default)s)")
    parser.add_argument("--device", type=device_type, default=None,
                        help="cpu, cuda or cuda:N (default: for --config, cuda when a GPU is visible, else cpu; for "
                        "--model, the artifact's own); under torchrun, cuda means each rank's own GPU (LOCAL_RANK)")
    parser.add_argument("--score-threshold", type=float, default=0.0,
                        help="drop detections scoring at or below this; AP needs them all (default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    if args.output is None:
        return _evaluate(args)
    inputs = [path for path in (args.annotations, args.images, args.data, args.detections, args.checkpoint, args.config,
                                *args.models) if path]
    check_output_folder(args.output, args.overwrite, inputs)
    try:
        return _evaluate(args)
    except KeyboardInterrupt:
        return interrupted(args.output)


def _evaluate(args: argparse.Namespace) -> int:
    """Score, print, and write ``args.output`` (when given) as one unit."""
    annotation_file, image_dir = _dataset_files(args)
    if args.detections is not None:
        results = load_results(args.detections)
        ground_truth = load_annotations(annotation_file)
        metrics = evaluate_detections(results, ground_truth, source=str(args.detections))
        for message in results_mismatch(results, ground_truth, source=str(args.detections)):
            logger.warning("%s", message)
        evaluations = [Evaluation(args.detections.name, results, metrics, None)]
    else:
        evaluations = _run_models(args, annotation_file, image_dir)
        if evaluations is None:  # a rank other than 0: rank 0 reports
            return 0
    print(format_table(evaluations))
    print(format_per_class(evaluations))
    comparison = compare(evaluations) if len(evaluations) > 1 else None
    if comparison is not None:
        print(format_comparison(comparison))
    if args.output is not None:
        write_outputs(args.output, evaluations, comparison, write_results=args.detections is None)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    if args.detections is not None and (args.models or args.config is not None):
        raise ValueError("--detections scores a results file; it cannot be combined with --model or --config")
    if args.detections is None and not args.models and args.config is None:
        raise ValueError("nothing to evaluate: give --model ARTIFACT, --config CONFIG or --detections RESULTS.json")
    if args.config is None:
        for option, given in (("--checkpoint", args.checkpoint is not None), ("--use-ema", args.use_ema),
                              ("--dtype", args.dtype is not None), ("--allow-tf32", args.allow_tf32)):
            if given:
                raise ValueError(f"{option} applies to --config only; an artifact's weights and precision are fixed by its export")
    check_use_ema(args.use_ema, args.checkpoint)
    if (args.annotations is None) == (args.data is None):
        raise ValueError("give the dataset as --annotations A.json --images DIR, or as --data DIR (one of the two)")
    if args.data is not None and args.images is not None:
        raise ValueError("--images goes with --annotations; --data finds the images itself")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    for model in args.models:  # before any model is loaded or any image evaluated
        if not Path(model).is_file():
            raise FileNotFoundError(f"--model: no model file at {model}")


def _dataset_files(args: argparse.Namespace) -> tuple[Path, Path | None]:
    if args.data is not None:
        return resolve_dataset(args.data, args.split)
    if args.images is None and args.detections is None:
        raise ValueError("--annotations needs --images DIR (the folder of its images) to run a model")
    return args.annotations, args.images


def _run_models(args: argparse.Namespace, annotation_file: Path, image_dir: Path) -> list[Evaluation] | None:
    dataset = CocoDetection(annotation_file, image_dir)
    device = _start_distributed(None if args.device is None else str(args.device))
    try:
        artifacts = ([None] if args.config is not None else []) + list(args.models)  # None: the eager model
        evaluations = []
        reference = None
        for label, artifact in zip(_labels(artifacts), artifacts):
            predictor = _predictor(args, artifact, device)
            if reference is None:
                reference = (label, predictor.preprocess)
            elif (note := preprocessing_note(label, predictor.preprocess, *reference)) is not None:
                logger.info("%s", note)
            results, metrics, stats = evaluate_model(
                predictor, dataset, args.batch_size, args.workers, score_threshold=args.score_threshold
            )
            del predictor
            if metrics is not None:
                evaluations.append(Evaluation(label, results, metrics, stats))
        return evaluations or None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _predictor(args: argparse.Namespace, artifact: Path | None, device: str | None) -> Predictor:
    if artifact is None:
        predictor = Predictor.from_config(
            load_config(args.config), checkpoint=args.checkpoint, device=device, dtype=args.dtype or "float32",
            allow_tf32=args.allow_tf32, use_ema=args.use_ema,
        )
    else:
        predictor = Predictor.from_artifact(artifact, device=device)
    if predictor.random_weights:
        logger.warning("%s has RANDOM WEIGHTS: its AP is meaningless", artifact or args.config)
    return predictor


def preprocessing_note(label: str, preprocess: PreprocessConfig, reference_label: str, reference: PreprocessConfig) -> str | None:
    """A note when ``label`` pads its inputs unlike the ΔAP reference (None when alike): e.g. a
    static export pads to its exported size while the eager model pads each batch to the size
    divisor, so their ΔAP also measures that padding wherever the two canvases differ."""
    differing = [f"{field.name} {getattr(preprocess, field.name)} vs {getattr(reference, field.name)}"
                 for field in dataclasses.fields(PreprocessConfig)
                 if getattr(preprocess, field.name) != getattr(reference, field.name)]
    if not differing:
        return None
    return (f"note: {label} pre-processes unlike the reference {reference_label} ({'; '.join(differing)}): where an "
            f"image's padded canvas differs, its ΔAP includes that difference, not only the export's own "
            f"(export at the images' padded size, or use codetr compare, which runs both at the export's size)")


def _start_distributed(device: str | None) -> str | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL with one GPU per rank
    (LOCAL_RANK) when the device is cuda (or unset with a GPU visible), else gloo. Returns the
    device this rank runs on."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device is not None and device.startswith("cuda") else "gloo")
    return device


def _labels(artifacts: list[Path | None]) -> list[str]:
    """Table and folder names: "eager", else the artifact's file name (with its folder's name
    when two artifacts share a file name)."""
    names = [path.name for path in artifacts if path is not None]
    labels = []
    for path in artifacts:
        if path is None:
            labels.append("eager")
        elif names.count(path.name) > 1:
            labels.append(f"{path.resolve().parent.name}-{path.name}")
        else:
            labels.append(path.name)
    if len(set(labels)) != len(labels):
        raise ValueError(f"--model: the same artifact is given twice: {labels}")
    return labels


def compare(evaluations: list[Evaluation]) -> dict[str, object]:
    """comparison.json: each model against the first (ΔAP and per-image detection differences)."""
    reference = evaluations[0]
    models = {}
    for evaluation in evaluations[1:]:
        per_image = compare_detections(reference.results, evaluation.results, top_k=COMPARED_DETECTIONS)
        models[evaluation.label] = {
            "delta_AP": evaluation.metrics.bbox["AP"] - reference.metrics.bbox["AP"],
            "delta_AP50": evaluation.metrics.bbox["AP50"] - reference.metrics.bbox["AP50"],
            # over matched pairs only; None when no detection matched (not "no difference")
            "max_score_difference": max((d.max_score for d in per_image.values() if d.matched), default=None),
            "max_box_difference": max((d.max_box for d in per_image.values() if d.matched), default=None),
            "matched": sum(d.matched for d in per_image.values()),
            "unmatched": sum(d.unmatched for d in per_image.values()),
            "per_image": {str(image_id): dataclasses.asdict(d) for image_id, d in per_image.items()},
        }
    return {"reference": reference.label, "top_detections": COMPARED_DETECTIONS, "models": models}


def format_table(evaluations: list[Evaluation]) -> str:
    width = max(12, *(len(e.label) for e in evaluations))
    several = len(evaluations) > 1
    header = f"{'model':<{width}}" + "".join(f"{name:>8}" for name in BBOX_METRICS) + f"{'images':>8}{'img/s':>9}"
    lines = [header + (f"{'ΔAP':>8}" if several else "")]
    for position, evaluation in enumerate(evaluations):
        line = f"{evaluation.label:<{width}}" + "".join(_fraction(evaluation.metrics.bbox[name]) for name in BBOX_METRICS)
        line += f"{evaluation.metrics.images:>8}"
        line += f"{evaluation.stats.images_per_second:>9.2f}" if evaluation.stats else f"{'-':>9}"
        if several:
            delta = evaluation.metrics.bbox["AP"] - evaluations[0].metrics.bbox["AP"]
            line += f"{delta:>+8.3f}" if position else f"{'-':>8}"
        lines.append(line)
    for evaluation in evaluations:
        stats = evaluation.stats
        if stats is not None and stats.images_skipped:
            shown = ", ".join(stats.skipped[:5]) + (", ..." if stats.images_skipped > 5 else "")
            lines.append(f"{evaluation.label}: {stats.images_skipped} unreadable image(s) skipped and not scored: {shown}")
    return "\n".join(lines)


def format_per_class(evaluations: list[Evaluation]) -> str:
    names = list(evaluations[0].metrics.per_class)
    width = max(12, *(len(name) for name in names))
    columns = max(10, *(len(e.label) + 2 for e in evaluations))
    lines = [f"{'class AP':<{width}}" + "".join(f"{e.label:>{columns}}" for e in evaluations)]
    for name in names:
        lines.append(f"{name:<{width}}" + "".join(_fraction(e.metrics.per_class[name], columns) for e in evaluations))
    return "\n".join(lines)


def format_comparison(comparison: dict[str, object]) -> str:
    lines = [f"against {comparison['reference']} (top {comparison['top_detections']} detections per image):"]
    for label, entry in comparison["models"].items():
        compared = entry["matched"] + entry["unmatched"]
        if entry["matched"]:
            differences = (f"max |Δscore| {entry['max_score_difference']:.2e}, "
                           f"max |Δbox| {entry['max_box_difference']:.3f} px over them")
        else:
            differences = "the models' detections disagree"
        lines.append(f"  {label}: ΔAP {entry['delta_AP']:+.4f}, matched {entry['matched']} of {compared}; {differences}")
    return "\n".join(lines)


def _fraction(value: float, width: int = 8) -> str:
    return f"{value:>{width}.3f}" if value >= 0 else f"{'-':>{width}}"


def write_outputs(output: Path, evaluations: list[Evaluation], comparison: dict[str, object] | None, write_results: bool) -> None:
    """OUT/metrics.json (+ results.json) for one model; OUT/<label>/... and comparison.json for several;
    OUT is replaced whole (see the module docstring)."""
    with atomic_dir(output) as staging:
        for evaluation in evaluations:
            folder = staging / evaluation.label if len(evaluations) > 1 else staging
            folder.mkdir(exist_ok=True)
            _write_json(folder / "metrics.json", metrics_document(evaluation), indent=1)
            if write_results:
                _write_json(folder / "results.json", evaluation.results)
        if comparison is not None:
            _write_json(staging / "comparison.json", comparison, indent=1)
    logger.info("wrote %s", output)


def metrics_document(evaluation: Evaluation) -> dict[str, object]:
    stats = evaluation.stats
    return {
        "model": evaluation.label,
        **evaluation.metrics.to_json(),
        "images_skipped": stats.images_skipped if stats else 0,
        "skipped": list(stats.skipped) if stats else [],
        "images_per_second": stats.images_per_second if stats else None,
    }


def _write_json(path: Path, document: object, indent: int | None = None) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=indent))
