"""A runtime plus its pre- and post-processing: decoded images in, detections in original pixels out.

:meth:`Predictor.from_artifact` takes everything from the export's ``metadata.json`` (the
pre-processing that produces the exported input, class names, COCO category ids, the
post-processing and NMS), so a deployment passes the model file and nothing else;
:meth:`Predictor.from_config` runs the eager PyTorch model of a config and checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from codetr.config import Config, NmsConfig, PreprocessConfig, TestConfig, load_config
from codetr.contract.artifacts import ARTIFACTS
from codetr.contract.metadata import MetadataError, metadata_path_for, read_metadata
from codetr.postprocess import ImageDetections, postprocess
from codetr.preprocess import make_batch
from codetr.runtime.base import Runtime
from codetr.runtime.eager import EagerRuntime
from codetr.runtime.loader import load_runtime

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Predictor:
    """``predictor(images, score_threshold)``: detections for a list of uint8 RGB [3, H, W] images.

    Attributes: ``runtime`` (any :class:`Runtime`), ``preprocess`` and ``test`` (the config's
    pre- and post-processing), ``class_names``, ``category_ids`` (COCO category id per label),
    ``random_weights`` (True when the model has no trained weights: its detections are
    meaningless), ``batch_size`` (images per runtime call for a static-batch export, else None).
    """

    runtime: Runtime
    preprocess: PreprocessConfig
    test: TestConfig
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    random_weights: bool
    batch_size: int | None = None

    @classmethod
    def from_artifact(cls, path: str | Path, device: str | torch.device | None = None, **runtime_options) -> Predictor:
        """The predictor of an exported artifact (any file :func:`codetr.runtime.load_runtime`
        runs); ``device`` and ``runtime_options`` go to its runtime. Raises FileNotFoundError
        when no ``metadata.json`` lies beside it (it holds the pre-processing the exported input
        needs) and MetadataError (a ValueError) when it is malformed."""
        path = Path(path)
        if path.is_dir():
            found = sorted(spec.file_name for spec in ARTIFACTS.values() if (path / spec.file_name).is_file())
            example = f", e.g. {path / found[0]}" if found else ""
            raise IsADirectoryError(f"{path} is a folder: give a model file in it{example}")
        if not path.is_file():
            raise FileNotFoundError(f"no model file at {path}")
        metadata_path = metadata_path_for(path)
        if not metadata_path.is_file():
            raise FileNotFoundError(
                f"no metadata.json beside {path}: it holds the pre-processing, input size and class names "
                "the model needs; keep the export folder together (codetr export writes it)"
            )
        # Checked before the (slow) model load, so a bad document fails at once.
        metadata = read_metadata(metadata_path)
        preprocess = _dataclass_from(PreprocessConfig, metadata.preprocessing, f"{metadata_path}: preprocessing")
        test = _test_config(metadata.postprocessing, f"{metadata_path}: postprocessing")
        if device is not None:
            runtime_options["device"] = device
        return cls(
            runtime=load_runtime(path, **runtime_options),
            preprocess=preprocess,
            test=test,
            class_names=metadata.class_names,
            category_ids=metadata.category_ids,
            random_weights=metadata.random_weights,
            batch_size=metadata.batch_size,
        )

    @classmethod
    def from_config(
        cls,
        config: Config | str | Path,
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype = "float32",
        allow_tf32: bool = False,
        use_ema: bool = False,
    ) -> Predictor:
        """The eager model of ``config`` (a Config or its TOML path) with ``checkpoint``'s weights
        (None: deterministic random weights, ``random_weights`` True; ``use_ema``: its EMA copy) as an
        :class:`~codetr.runtime.eager.EagerRuntime` on ``device`` in ``dtype``."""
        from codetr.checkpoint import load_checkpoint
        from codetr.models import build_model

        if not isinstance(config, Config):
            config = load_config(config)
        model = build_model(config, seed=0)
        if checkpoint is not None:
            report = load_checkpoint(model, checkpoint, use_ema=use_ema)
            logger.info("loaded %d tensors (%s layout) from %s", report.loaded, report.layout, checkpoint)
        runtime = EagerRuntime(model, device=device, dtype=dtype, allow_tf32=allow_tf32)
        return cls(
            runtime=runtime,
            preprocess=config.preprocess,
            test=config.test,
            class_names=config.class_names,
            category_ids=config.coco_category_ids,
            random_weights=checkpoint is None,
        )

    def __call__(self, images: Sequence[torch.Tensor], score_threshold: float = 0.0) -> list[ImageDetections]:
        """Detections of each image, in order: boxes [N, 4] float32 xyxy in original pixels,
        scores [N] float32 above max(``score_threshold``, the config's test score threshold),
        labels [N] int64 (see :func:`codetr.postprocess.postprocess`).

        A static-batch export runs ``batch_size`` images at a time: longer lists are split, a
        shorter remainder is filled with blank images whose results are dropped.
        """
        if not images:
            return []
        chunk = self.batch_size or len(images)
        threshold = max(score_threshold, self.test.score_threshold)
        results: list[ImageDetections] = []
        for start in range(0, len(images), chunk):
            part = list(images[start : start + chunk])
            filled = part + [torch.zeros_like(part[0])] * (chunk - len(part))
            batch = make_batch(filled, self.preprocess)
            detections = self.runtime(batch.images, batch.image_sizes)
            results += postprocess(detections, batch, self.test.nms, threshold)[: len(part)]
        return results


def _test_config(document: Mapping[str, Any], where: str) -> TestConfig:
    values = dict(document)
    nms = values.pop("nms", {})
    if not isinstance(nms, Mapping):
        raise MetadataError(f"{where}.nms must be an object, got {nms!r}")
    return _dataclass_from(TestConfig, {**values, "nms": _dataclass_from(NmsConfig, nms, f"{where}.nms")}, where)


def _dataclass_from(cls: type, document: Mapping[str, Any], where: str) -> Any:
    """``cls(**document)`` with JSON lists turned back into tuples; MetadataError naming
    ``where`` for unknown or missing fields."""
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(document) - names)
    if unknown:
        raise MetadataError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in document.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise MetadataError(f"{where}: {error}") from None
