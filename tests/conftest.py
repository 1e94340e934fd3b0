"""Shared pytest configuration and fixtures.

Markers (declared in pyproject.toml): ``cuda`` tests skip on machines without a GPU, and
``pytest -m cuda`` runs only them; ``slow`` tests skip unless pytest gets ``--runslow``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import pytest
import torch


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
