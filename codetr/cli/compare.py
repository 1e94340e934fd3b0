"""``codetr compare A B``: how far two models' outputs are apart on real images, and where a
difference starts.

A and B are exported artifacts (any file ``codetr infer --model`` runs, with its metadata.json)
or a config TOML (the eager PyTorch model, weights from ``--checkpoint``). Both get the same
pre-processed input (A's pre-processing) and their raw outputs (boxes, scores, labels, before
host post-processing) are compared by Polygraphy's comparator (``SimpleCompareFunc``).
``--per-layer``, when one side is an ONNX file and the other a config: the ONNX graph's module
outputs (found through the exporter's name-scope metadata, :mod:`codetr.runtime.layers`) are
compared with the PyTorch modules' outputs (forward hooks), in graph order, and the first layer
that fails the tolerance is named: where the error jumps.

An image that cannot be read is named on stderr and skipped (as by ``codetr infer`` and ``eval``);
``--max-images`` counts the images that were read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from codetr.cli.common import CONFIG_HELP, RANDOM_WEIGHTS_SEED, warn_random_weights
from codetr.config import resolve_config
from codetr.contract.io import OUTPUT_NAMES
from codetr.data.images import ImageReadError, list_images, read_image
from codetr.preprocess import make_batch
from codetr.runtime.predictor import Predictor

logger = logging.getLogger("codetr.compare")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="compare two models' outputs (and layers) on images",
        description="Compare two models (exported artifacts or a config TOML for the PyTorch model) output by "
        "output on real images with Polygraphy's comparator; with --per-layer, an ONNX file against the PyTorch "
        "model layer by layer, naming the first layer whose error exceeds the tolerance.",
    )
    parser.add_argument("model_a", type=Path,
                        help=f"artifact (model.pt2, model.onnx, model.engine, ...), or for the PyTorch model {CONFIG_HELP}")
    parser.add_argument("model_b", type=Path, help="artifact or config, as model_a")
    parser.add_argument("--images", type=Path, required=True, help="image file or folder of images")
    parser.add_argument("--max-images", type=int, default=4, help="images to compare at most (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, help="weights of a config-TOML side (default: random weights)")
    parser.add_argument("--atol", type=float, default=1e-3, help="absolute tolerance (default: %(default)s)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default: %(default)s)")
    parser.add_argument("--check-error-stat", choices=["max", "mean", "median"], default="mean",
                        help="error statistic checked against the tolerances, per tensor (Polygraphy's "
                        "check_error_stat; default: %(default)s)")
    parser.add_argument("--per-layer", action="store_true",
                        help="also compare layer outputs (one side an ONNX file, the other a config TOML) "
                        "(default: off)")
    return parser


def _load(path: Path, checkpoint: Path | None) -> Predictor:
    """An artifact file, else a config TOML file or a shipped config's name (the eager model)."""
    if path.is_file() and path.suffix != ".toml":
        return Predictor.from_artifact(path, device="cpu")
    try:
        config = resolve_config(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path} is no model file, and {error}") from None
    return Predictor.from_config(config, checkpoint=checkpoint, device="cpu")


def _check_sides(args: argparse.Namespace, sides: list[tuple[Path, Predictor]]) -> None:
    """Refuse two models whose labels mean different classes (their outputs cannot agree) and a
    --checkpoint no side uses; warn, as every command does, about random weights (an eager side
    without --checkpoint, or an export made without one): the outputs then differ by design."""
    (path_a, side_a), (path_b, side_b) = sides
    if side_a.class_names != side_b.class_names:
        raise ValueError(
            f"{path_a} and {path_b} do not detect the same classes, so their outputs cannot agree:\n"
            f"  {path_a} ({len(side_a.class_names)}): {list(side_a.class_names)}\n"
            f"  {path_b} ({len(side_b.class_names)}): {list(side_b.class_names)}\n"
            "compare an export with the config (and --checkpoint) it was exported from"
        )
    eager = [path for path, side in sides if side.runtime.metadata is None]
    if args.checkpoint is not None and not eager:
        raise ValueError("--checkpoint applies to a config side only; an artifact's weights are fixed by its export")
    if eager and args.checkpoint is None:
        warn_random_weights(RANDOM_WEIGHTS_SEED)
    for path, side in dict(sides).items():  # each export once
        if side.random_weights and side.runtime.metadata is not None:
            logger.warning("%s was exported without --checkpoint: RANDOM WEIGHTS", path)


def compare_arrays(name_a: str, outputs_a: list[dict], name_b: str, outputs_b: list[dict], args) -> dict[str, object]:
    """Polygraphy's accuracy comparison of two runners' iteration outputs: {output name:
    OutputCompareResult} of the last iteration that failed, else of the last one."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    # Polygraphy logs every comparison in detail; codetr prints its own summary (-v shows Polygraphy's).
    G_LOGGER.module_severity = G_LOGGER.INFO if logger.isEnabledFor(logging.DEBUG) else G_LOGGER.ERROR
    results = RunResults()
    results.append((name_a, [IterationResult(outputs=outputs, runner_name=name_a) for outputs in outputs_a]))
    results.append((name_b, [IterationResult(outputs=outputs, runner_name=name_b) for outputs in outputs_b]))
    compare = SimpleCompareFunc(atol=args.atol, rtol=args.rtol, check_error_stat=args.check_error_stat)
    accuracy = Comparator.compare_accuracy(results, compare_func=compare)
    iterations = next(iter(accuracy[0].values()))  # one compare function, one runner pair
    failed = [iteration for iteration in iterations if not all(iteration.values())]
    return dict((failed or iterations)[-1])


def first_jump(layer_results: dict[str, object], order: list[str]) -> str | None:
    """The first layer, in ``order``, whose comparison failed (None if none did)."""
    return next((name for name in order if name in layer_results and not layer_results[name]), None)


def run(args: argparse.Namespace) -> int:
    if args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    side_a, side_b = _load(args.model_a, args.checkpoint), _load(args.model_b, args.checkpoint)
    _check_sides(args, [(args.model_a, side_a), (args.model_b, side_b)])
    paths = list_images(args.images)
    images = read_images(paths, args.max_images)
    if not images:
        raise ValueError(f"--images: none of the {len(paths)} image(s) in {args.images} could be read")
    # Both sides get the same tensors: an export's pre-processing (its fixed input size) when one
    # side is an export, as the eager model runs on any size an export accepts.
    preprocess = side_b.preprocess if side_a.runtime.metadata is None and side_b.runtime.metadata is not None else side_a.preprocess
    batches = [make_batch([image], preprocess) for image in images]

    def raw(side: Predictor) -> list[dict[str, np.ndarray]]:
        return [{name: tensor.detach().float().cpu().numpy() for name, tensor in
                 zip(OUTPUT_NAMES, side.runtime(batch.images, batch.image_sizes))} for batch in batches]

    outputs = compare_arrays(str(args.model_a), raw(side_a), str(args.model_b), raw(side_b), args)
    print(f"{len(images)} image(s), {args.check_error_stat} error against atol {args.atol} / rtol {args.rtol}:")
    for name, result in outputs.items():
        print(f"  {name:<8} {'ok  ' if result else 'FAIL'} max abs {result.max_absdiff:.3g}  "
              f"mean abs {result.mean_absdiff:.3g}  mean rel {result.mean_reldiff:.3g}")
    passed = all(bool(result) for result in outputs.values())
    if args.per_layer:
        passed &= _per_layer(args, side_a, side_b, batches[0])
    return 0 if passed else 1


def read_images(paths: list[Path], count: int) -> list[torch.Tensor]:
    """The first ``count`` images of ``paths`` that can be read (uint8 RGB [3, H, W]); each one
    that cannot is named on stderr and skipped."""
    images = []
    for path in paths:
        if len(images) == count:
            break
        try:
            images.append(read_image(path))
        except (FileNotFoundError, ImageReadError) as error:
            print(f"skipped: {error}", file=sys.stderr)
    return images


def _per_layer(args, side_a: Predictor, side_b: Predictor, batch) -> bool:
    from codetr.runtime.eager import EagerRuntime
    from codetr.runtime.layers import comparable_modules, eager_layer_outputs, onnx_layer_outputs, onnx_module_outputs

    sides = {args.model_a: side_a, args.model_b: side_b}
    onnx_path = next((path for path in sides if path.suffix == ".onnx"), None)
    eager = next((side.runtime for side in sides.values() if isinstance(side.runtime, EagerRuntime)), None)
    if onnx_path is None or eager is None:
        raise ValueError("--per-layer compares an ONNX file with a config TOML (the PyTorch model); give one of each")
    model = onnx.load(str(onnx_path))
    tensors = onnx_module_outputs(model)
    modules = comparable_modules(eager.model, tensors)
    feeds = {"images": batch.images.float().numpy(), "image_sizes": batch.image_sizes.long().numpy()}
    from_onnx = onnx_layer_outputs(model, feeds, [tensors[name] for name in modules])
    from_torch = eager_layer_outputs(eager.model, batch.images, batch.image_sizes, modules)
    onnx_side = [{name: from_onnx[tensors[name]].reshape(from_torch[name].shape) for name in modules
                  if from_onnx[tensors[name]].size == from_torch[name].size}]
    results = compare_arrays("onnx", onnx_side, "pytorch", [{name: from_torch[name] for name in onnx_side[0]}], args)
    print(f"per layer ({len(results)} layers, graph order):")
    for name in modules:
        if name in results:
            result = results[name]
            print(f"  {'ok  ' if result else 'FAIL'} {name:<48} mean rel {result.mean_reldiff:.3g}  max abs {result.max_absdiff:.3g}")
    jump = first_jump(results, modules)
    print(f"first layer whose error exceeds the tolerance: {jump}" if jump else "every layer is within the tolerance")
    return jump is None
