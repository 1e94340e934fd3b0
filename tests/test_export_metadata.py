"""metadata.json of an export describes the exported model exactly (codetr.export.metadata).

The pre-processing it records must produce the exported input for any image: checked by running
codetr.preprocess.make_batch with it and the contract's own input check (ExportMetadata.check_images).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from codetr.config import load_config
from codetr.contract.metadata import SizeRange
from codetr.export import DimRange, ExportOptions
from codetr.export.metadata import export_preprocessing
from codetr.preprocess import make_batch, rescaled_size

CONFIGS = Path(__file__).resolve().parents[1] / "codetr" / "configs"
R50_LSJ = CONFIGS / "co_dino_5scale_r50_lsj_8xb2_1x_coco.toml"
# (height, width) of test photos: landscape and portrait 4:3 and 3:2, square, panoramas, tiny.
PHOTOS = [(480, 640), (640, 480), (427, 640), (640, 427), (500, 500), (300, 1800), (1800, 300), (7, 9)]


def batch_shape(preprocess, height: int, width: int) -> tuple[int, ...]:
    return tuple(make_batch([torch.zeros(3, height, width, dtype=torch.uint8)], preprocess).images.shape)


def test_readme_export_gets_the_preprocessing_of_its_input() -> None:
    """The README's export, --height 768 --width 1152 on the LSJ config (which resizes and pads to
    1024x1024): the recorded pre-processing gives exactly 768x1152 for every photo."""
    config = load_config(R50_LSJ)
    assert batch_shape(config.preprocess, 480, 640) == (1, 3, 1024, 1024)  # what the old metadata recorded
    preprocess = export_preprocessing(config.preprocess, ExportOptions(height=768, width=1152))
    assert preprocess.pad_size == (768, 1152)
    assert preprocess.scale == (1024, 768)  # the canvas's long and short sides, within the config's 1024
    # A landscape photo uses the canvas as mmdet's resize would; a portrait one shrinks to fit it.
    assert rescaled_size(480, 640, preprocess.scale, preprocess.pad_size) == (768, 1024)
    assert rescaled_size(640, 480, preprocess.scale, preprocess.pad_size) == (768, 576)
    assert (preprocess.mean, preprocess.std, preprocess.pad_value, preprocess.mask_padding) == (
        config.preprocess.mean, config.preprocess.std, config.preprocess.pad_value, config.preprocess.mask_padding)
    for height, width in PHOTOS:
        assert batch_shape(preprocess, height, width) == (1, 3, 768, 1152), (height, width)


def test_config_scale_is_kept_when_it_fits() -> None:
    config = load_config(R50_LSJ)
    preprocess = export_preprocessing(config.preprocess, ExportOptions(height=1280, width=1280))
    assert preprocess.scale == (1024, 1024) and preprocess.pad_size == (1280, 1280)


def test_dynamic_export_pads_to_the_multiple_within_the_range() -> None:
    config = load_config(R50_LSJ)
    options = ExportOptions(height=768, width=1024, dynamic_height=DimRange(512, 1024),
                            dynamic_width=DimRange(512, 1344))
    preprocess = export_preprocessing(config.preprocess, options)
    assert preprocess.pad_size is None and preprocess.scale == (1024, 1024)
    heights, widths = SizeRange(512, 768, 1024), SizeRange(512, 1024, 1344)
    # (200, 1200): a panorama whose resized height (171) pads to 192 < 512 without pad_min_size.
    for height, width in [(480, 640), (640, 480), (427, 640), (1000, 1000), (200, 1200)]:
        _, _, padded_height, padded_width = batch_shape(preprocess, height, width)
        assert padded_height % 32 == padded_width % 32 == 0
        assert heights.min <= padded_height <= heights.max and widths.min <= padded_width <= widths.max


@pytest.mark.parametrize("size", [(64, 96), (96, 64)])
def test_tiny_config_static_export(size: tuple[int, int]) -> None:
    """The tiny config has no pad_size: its own pre-processing gives 64x96 or 96x64 by orientation."""
    config = load_config(CONFIGS / "tiny.toml")
    preprocess = export_preprocessing(config.preprocess, ExportOptions(height=size[0], width=size[1]))
    assert dataclasses.replace(preprocess, scale=config.preprocess.scale, pad_size=None) == config.preprocess
    for height, width in PHOTOS:
        assert batch_shape(preprocess, height, width) == (1, 3, *size)
