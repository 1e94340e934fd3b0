"""Small model configurations shared by the model, checkpoint and export tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codetr.config import Config, SwinConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "codetr" / "configs"


def tiny_config() -> Config:
    """codetr/configs/tiny.toml: ResNet-18, 4 levels, 1 encoder / 2 decoder layers, 32 queries."""
    return load_config(CONFIGS / "tiny.toml")


def tiny_swin_config() -> Config:
    """The tiny config with a 3-stage Swin (embed 16, window 4) instead of ResNet-18."""
    config = tiny_config()
    swin = SwinConfig(embed_dims=16, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4, out_indices=(0, 1, 2))
    neck = dataclasses.replace(config.model.neck, in_channels=(16, 32, 64))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, resnet=None, swin=swin, neck=neck))
