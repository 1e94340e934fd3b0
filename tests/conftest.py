"""Shared pytest configuration and fixtures.

Markers (declared in pyproject.toml): ``cuda`` tests skip on machines without a GPU, and
``pytest -m cuda`` runs only them; ``slow`` tests skip unless pytest gets ``--runslow``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

# The TensorRT tests' fixtures (plugin library built from this checkout, its harness, the
# TensorRT-RTX environment), declared here so that every test module gets them from conftest.
from tensorrt_fixtures import cuda_home, harness, include_dir, plugin_library, rtx_environment  # noqa: F401


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if not torch.cuda.is_available():
        skips["cuda"] = pytest.mark.skip(reason="no CUDA GPU on this machine")
    if not config.getoption("--runslow"):
        skips["slow"] = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


class MsdaInputs(NamedTuple):
    """The op's five tensor arguments, in op order.

    value [B, S, M, D]; spatial_shapes [L, 2] int64 (H, W); level_start_index [L] int64;
    sampling_locations [B, Q, M, L, P, 2] normalised (x, y); attention_weights [B, Q, M, L, P].
    """

    value: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    sampling_locations: torch.Tensor
    attention_weights: torch.Tensor

    def to(self, dtype: torch.dtype, location_dtype: torch.dtype | None = None) -> MsdaInputs:
        """Float tensors cast to dtype (locations and weights to location_dtype if given)."""
        location_dtype = location_dtype or dtype
        return self._replace(
            value=self.value.to(dtype),
            sampling_locations=self.sampling_locations.to(location_dtype),
            attention_weights=self.attention_weights.to(location_dtype),
        )

    def float64(self) -> MsdaInputs:
        """Detached float64 copies: the exact values another dtype's run saw, for the oracle."""
        return MsdaInputs(
            self.value.detach().double(),
            self.spatial_shapes,
            self.level_start_index,
            self.sampling_locations.detach().double(),
            self.attention_weights.detach().double(),
        )

    def requires_grad_(self) -> MsdaInputs:
        for tensor in (self.value, self.sampling_locations, self.attention_weights):
            tensor.requires_grad_(True)
        return self


MakeMsdaInputs = Callable[..., MsdaInputs]


def make_msda_inputs(
    batch: int = 2,
    queries: int = 5,
    heads: int = 2,
    channels: int = 4,
    shapes: Sequence[tuple[int, int]] = ((4, 6), (2, 3)),
    points: int = 3,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    location_range: tuple[float, float] = (-0.1, 1.1),
    seed: int = 0,
) -> MsdaInputs:
    """Random MSDA inputs: value ~ N(0, 1), locations uniform in ``location_range``,
    attention weights softmaxed over L*P as in Deformable-DETR."""
    generator = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    num_values = sum(h * w for h, w in shapes)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64).reshape(levels, 2)
    level_start_index = torch.cat(
        [spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]]
    )
    value = torch.randn(
        batch, num_values, heads, channels, generator=generator, dtype=torch.float64
    )
    low, high = location_range
    locations = low + (high - low) * torch.rand(
        batch, queries, heads, levels, points, 2, generator=generator, dtype=torch.float64
    )
    logits = torch.randn(
        batch, queries, heads, levels * points, generator=generator, dtype=torch.float64
    )
    weights = logits.softmax(-1).reshape(batch, queries, heads, levels, points)
    return MsdaInputs(
        value.to(device, dtype),
        spatial_shapes.to(device),
        level_start_index.to(device),
        locations.to(device, dtype),
        weights.to(device, dtype),
    )


@pytest.fixture
def msda_inputs() -> MakeMsdaInputs:
    """Factory fixture: ``msda_inputs(batch=..., shapes=..., dtype=..., device=...)``."""
    return make_msda_inputs


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (the peers file's error measure)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory):
    """A generated COCO-format dataset (``codetr data synthetic``): 6 train and 4 val images of
    128x128, seed 0, 8 classes, in the generated layout (annotations/instances_{train,val}.json,
    train/, val/). Session-scoped and shared: treat it as read-only."""
    from codetr.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic") / "dataset"
    generate_dataset(root, train_images=6, val_images=4, size=(128, 128), seed=0)
    return root


# ---- exported models and their metadata (runtime, predictor and infer tests) -------------------

TINY_CONFIG = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
TINY_EXPORT_SIZE = 64
"""Side of the square static tiny exports: a square canvas takes portrait and landscape images
under the config's keep-ratio resize."""


def tiny_metadata_document(**changes: object) -> dict:
    """A codetr-export/2 metadata document for codetr/configs/tiny.toml exported static at
    TINY_EXPORT_SIZE square, batch 1, float32; ``changes`` replace top-level sections or, with
    dotted keys ("input.batch_size"), single values."""
    import dataclasses

    from codetr.config import load_config

    config = load_config(TINY_CONFIG)
    side = {"min": TINY_EXPORT_SIZE, "opt": TINY_EXPORT_SIZE, "max": TINY_EXPORT_SIZE}
    preprocess = dataclasses.replace(config.preprocess, scale=(TINY_EXPORT_SIZE,) * 2, pad_size=(TINY_EXPORT_SIZE,) * 2)
    document = {
        "format": "codetr-export/2",
        "model": {"config": config.name, "random_weights": True, "num_classes": config.model.num_classes,
                  "class_names": list(config.class_names), "category_ids": list(config.coco_category_ids)},
        "input": {"batch_size": 1, "height": dict(side), "width": dict(side), "multiple": 32, "dtype": "float32"},
        "preprocessing": json.loads(json.dumps(dataclasses.asdict(preprocess))),
        "postprocessing": json.loads(json.dumps(dataclasses.asdict(config.test))),
        "precision": {"dtype": "float32", "allow_tf32": False},
        "msda": "plugin",
        "files": {"exported_program": "model.pt2", "onnx": "model.onnx"},
        "skipped": {},
        "versions": {},
    }
    for key, value in changes.items():
        *parents, last = key.split(".")
        section = document
        for parent in parents:
            section = section[parent]
        section[last] = value
    return document


@pytest.fixture
def metadata_document() -> Callable[..., dict]:
    """Factory fixture: ``metadata_document(**changes)`` (see :func:`tiny_metadata_document`)."""
    return tiny_metadata_document


def _export_tiny(folder: Path, dtype: str, artifacts: str, *extra: str) -> Path:
    """codetr/configs/tiny.toml exported by ``codetr export`` (random weights, plugin MSDA, static
    TINY_EXPORT_SIZE square, batch 1) with the metadata.json the export writes."""
    from codetr.cli import main

    side = str(TINY_EXPORT_SIZE)
    arguments = ["export", "--config", str(TINY_CONFIG), "--output", str(folder), "--dtype", dtype,
                 "--height", side, "--width", side, "--artifacts", artifacts, "--msda", "plugin", *extra]
    assert main(arguments) == 0, f"codetr {' '.join(arguments)} failed"
    return folder


@pytest.fixture(scope="session")
def tiny_float16_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a real float16 export of codetr/configs/tiny.toml: model.pt2, model.onnx (plugin
    node), metadata.json (static 64x64, batch 1)."""
    return _export_tiny(tmp_path_factory.mktemp("tiny_float16"), "float16", "exported_program,onnx")


@pytest.fixture(scope="session")
def tiny_bfloat16_onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a real bfloat16 ONNX export of codetr/configs/tiny.toml (opset 22: bfloat16 Conv)."""
    return _export_tiny(tmp_path_factory.mktemp("tiny_bfloat16"), "bfloat16", "onnx", "--opset", "22")

TINY_CONFIG = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
TINY_IMAGE_SIZE = (64, 64)
"""(h, w) of the evaluation test images: kept as is by the tiny config's resize (scale 96x64) and
by a static 64x64 export's (whose resize limits are 64x64, orientation-free: codetr.export's
export_preprocessing), so eager and exported models see the same canvas."""
TINY_CATEGORY_IDS = {"cat": 17, "dog": 18, "car": 3, "tree": 90, "cup": 47}
"""Annotation-file category ids of the tiny config's classes (deliberately not label + 1)."""


def tiny_predictor_factory():
    """The eager tiny model with deterministic random weights on the CPU, as a
    :class:`codetr.runtime.predictor.Predictor`."""
    from codetr.config import load_config
    from codetr.runtime.predictor import Predictor

    return Predictor.from_config(load_config(TINY_CONFIG), device="cpu")


def write_tiny_coco(root: Path, images: int = 5, per_image: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """A COCO-format dataset under ``root`` (``instances.json`` and ``images/NNNN.png``, random
    pixels) whose ground truth is the eager tiny model's own top ``per_image`` detections, each
    corner moved by up to 1 px: AP is neither 0 nor 1 and depends on every box and score.
    Returns (annotation_file, image_dir)."""
    import json

    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    predictor = tiny_predictor_factory()
    entries, annotations = [], []
    for image_id in range(1, images + 1):
        pixels = generator.integers(0, 256, (*TINY_IMAGE_SIZE, 3), dtype=np.uint8)
        file_name = f"{image_id:04d}.png"
        Image.fromarray(pixels).save(image_dir / file_name)
        entries.append({"id": image_id, "file_name": file_name, "height": TINY_IMAGE_SIZE[0], "width": TINY_IMAGE_SIZE[1]})
        detections = predictor([torch.from_numpy(pixels).permute(2, 0, 1).contiguous()])[0]
        for box, label in zip(detections.boxes[:per_image].tolist(), detections.labels[:per_image].tolist()):
            x1, y1, x2, y2 = (value + generator.uniform(-1, 1) for value in box)
            width, height = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "bbox": [x1, y1, width, height], "area": width * height,
                 "category_id": TINY_CATEGORY_IDS[predictor.class_names[label]], "iscrowd": 0}
            )
    categories = [{"id": category_id, "name": name} for name, category_id in sorted(TINY_CATEGORY_IDS.items())]
    annotation_file = root / "instances.json"
    annotation_file.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return annotation_file, image_dir


@pytest.fixture(scope="session")
def tiny_predictor() -> Callable:
    """Factory: ``tiny_predictor()`` -> a new Predictor of the eager tiny model on the CPU."""
    return tiny_predictor_factory


@pytest.fixture(scope="session")
def make_tiny_coco():
    """Factory: ``make_tiny_coco(root, images=5)`` -> (annotation_file, image_dir); see write_tiny_coco."""
    return write_tiny_coco


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> tuple[Path, Path]:
    """One shared 5-image tiny-model dataset (read only): (annotation_file, image_dir)."""
    return write_tiny_coco(tmp_path_factory.mktemp("tiny_coco"))


@pytest.fixture(scope="session")
def tiny_aoti_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of one export of codetr/configs/tiny.toml on the CPU, float32, static 64x96, batch 1,
    plugin MSDA, random weights (seed 0): model.onnx, model_aoti.pt2 (an AOTInductor package: C++
    compilation, hence once per session) and metadata.json."""
    from codetr.config import load_config
    from codetr.contract.artifacts import Artifact
    from codetr.export import ExportOptions, export_model
    from codetr.models import build_model
    import torch._inductor.config

    config = load_config(Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml")
    options = ExportOptions(
        dtype=torch.float32, height=64, width=96, artifacts=(Artifact.ONNX, Artifact.AOTI),
        device=torch.device("cpu"),
    )
    output = tmp_path_factory.mktemp("tiny_aoti") / "export"
    # Scalar C++ kernels: half the compile time of vectorised ones (measured 23 vs 40 CPU seconds);
    # what is tested is codetr's package and runtime, not Inductor's vectorisation.
    with torch._inductor.config.patch({"cpp.vec_isa_ok": False}):
        export_model(build_model(config, seed=0), config, options, output)
    return output


def write_rectangle_dataset(root, splits: dict[str, int], class_names, size=(64, 96), seed: int = 0, max_objects: int = 3):
    """A tiny COCO-format dataset in the generated layout (``annotations/instances_<split>.json``
    + ``<split>/``): non-overlapping filled rectangles of one colour per class on a grey noise
    background.
    Returns root. Test-only stand-in for ``codetr data synthetic``."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 255, size=(len(class_names), 3))
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(class_names)]
    height, width = size
    annotation_id = 1
    for split, count in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            pixels = rng.integers(90, 130, size=(height, width, 3)).astype(np.uint8)
            placed: list[tuple[int, int, int, int]] = []
            for _ in range(int(rng.integers(1, max_objects + 1))):
                w, h = int(rng.integers(width // 6, width // 2)), int(rng.integers(height // 6, height // 2))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                if any(x < px + pw and px < x + w and y < py + ph and py < y + h for px, py, pw, ph in placed):
                    continue  # objects never overlap, so every box is fully visible
                placed.append((x, y, w, h))
                label = int(rng.integers(0, len(class_names)))
                pixels[y : y + h, x : x + w] = colours[label]
                annotations.append({"id": annotation_id, "image_id": image_id, "category_id": label + 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
                annotation_id += 1
            file_name = f"{image_id:06d}.png"
            Image.fromarray(pixels).save(root / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return root


@pytest.fixture
def rectangle_dataset(tmp_path):
    """Factory fixture: ``rectangle_dataset(splits={"train": 4, "val": 2}, class_names=..., ...)``."""
    return lambda **options: write_rectangle_dataset(tmp_path / "data", **options)


@pytest.fixture
def pycocotools_stats():
    """The independent reference: ``pycocotools_stats(annotation_file, results)`` -> the nine
    COCOeval bbox stats (AP .. AR100), with pycocotools driven exactly as its README does."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def stats(annotation_file: Path, results: list[dict]) -> list[float]:
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO(str(annotation_file))
            evaluator = COCOeval(ground_truth, ground_truth.loadRes(json.loads(json.dumps(results))), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return list(evaluator.stats[:9])

    return stats
