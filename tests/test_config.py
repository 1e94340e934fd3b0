"""Config files parse into the expected typed values; malformed files fail naming key and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from codetr.config import COCO_CATEGORY_IDS, COCO_CLASSES, ConfigError, load_config, shipped_configs

CONFIGS = Path(__file__).resolve().parents[1] / "codetr" / "configs"


def test_official_r50_lsj_values():
    config = load_config(CONFIGS / "co_dino_5scale_r50_lsj_8xb2_1x_coco.toml")
    assert config.model.resnet is not None and config.model.resnet.depth == 50
    assert config.model.neck.in_channels == (256, 512, 1024, 2048)
    assert config.model.transformer.num_queries == 900
    assert config.model.transformer.pos_temperature == 20.0
    assert config.model.max_per_img == 300
    assert config.preprocess.scale == (1024, 1024) and config.preprocess.pad_size == (1024, 1024)
    assert config.preprocess.pad_value == 114.0 and not config.preprocess.mask_padding
    assert config.test.nms.kind == "soft_nms" and config.test.nms.iou_threshold == 0.8
    assert config.class_names[0] == "person" and len(config.class_names) == 80


def test_official_swin_l_values():
    config = load_config(CONFIGS / "co_dino_5scale_swin_l_16xb1_16e_o365tococo.toml")
    swin = config.model.swin
    assert swin is not None
    assert (swin.embed_dims, swin.depths, swin.num_heads, swin.window_size) == (192, (2, 2, 18, 2), (6, 12, 24, 48), 12)
    assert config.model.neck.in_channels == (192, 384, 768, 1536)
    assert config.preprocess.scale == (2048, 1280) and config.preprocess.pad_size is None
    # Sense-X: Pad(size_divisor=32) with 0 after Normalize, padding masked (with_attn_mask=True)
    assert config.preprocess.size_divisor == 32 and config.preprocess.mask_padding
    assert config.preprocess.pad_value == "mean"
    assert config.preprocess.pad_colour == (123.675, 116.28, 103.53) == config.preprocess.mean


def test_pad_value_forms(tmp_path):
    assert load_config(_write_variant(tmp_path, "pad_value = 0.0", "pad_value = 114")).preprocess.pad_colour == (114.0,) * 3
    mean = load_config(_write_variant(tmp_path, "pad_value = 0.0", 'pad_value = "mean"')).preprocess
    assert mean.pad_value == "mean" and mean.pad_colour == mean.mean


def test_coco_tables_are_consistent():
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 80
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[-1] == 90
    # hand-checked spots of the official COCO category table
    assert dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))["stop sign"] == 13
    assert dict(zip(COCO_CLASSES, COCO_CATEGORY_IDS))["toothbrush"] == 90


def _write_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = (CONFIGS / "tiny.toml").read_text()
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("num_queries = 32", "num_querys = 32", "model.transformer.num_querys"),
        ("[test.nms]", "[test.nmss]", "test.nmss"),
        ("num_queries = 32", 'num_queries = "32"', "model.transformer.num_queries must be int"),
        ("depth = 18", "depth = 19", "model.resnet.depth = 19"),
        ("num_classes = 5", "num_classes = 6", "class_names has 5 names"),
        ("scale = [96, 64]", "scale = [96]", "preprocess.scale must have 2 entries"),
        ("mask_padding = true", "mask_padding = 1", "preprocess.mask_padding must be bool"),
        ("pad_value = 0.0", 'pad_value = "avg"', "preprocess.pad_value = 'avg' fits none of its forms"),
        ("pad_value = 0.0", "pad_value = true", "preprocess.pad_value must be a number"),
        ("size_divisor = 32", "size_divisor = 32\npad_size = [64]", "preprocess.pad_size must have 2 entries"),
    ],
)
def test_malformed_config_names_key_and_file(tmp_path, old, new, message):
    path = _write_variant(tmp_path, old, new)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_missing_required_key(tmp_path):
    path = _write_variant(tmp_path, "num_classes = 5\n", "")
    with pytest.raises(ConfigError, match="missing required key model.num_classes"):
        load_config(path)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\nnum_classes = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(broken)


def test_config_is_frozen():
    config = load_config(CONFIGS / "tiny.toml")
    with pytest.raises(AttributeError):
        config.model.num_classes = 3  # type: ignore[misc]


SHIPPED = ["co_dino_5scale_r50_lsj_8xb2_1x_coco", "co_dino_5scale_swin_l_16xb1_16e_o365tococo", "synthetic_r50", "tiny"]


def test_a_shipped_config_loads_by_name(tmp_path, monkeypatch):
    """--config NAME works wherever codetr is installed; a file of that name in the current folder
    still wins (a path is always a path)."""
    assert shipped_configs() == SHIPPED
    by_name = load_config("synthetic_r50")
    assert by_name == load_config(CONFIGS / "synthetic_r50.toml")
    assert load_config("tiny.toml").model == load_config(CONFIGS / "tiny.toml").model  # the file name works too
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").write_text((CONFIGS / "synthetic_r50.toml").read_text())
    assert load_config("tiny").model == by_name.model


def test_an_unknown_config_lists_the_shipped_names(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_config("synthetic_r101")
    assert str(error.value) == (
        f"config synthetic_r101: no such file, and not a shipped config (shipped: {', '.join(SHIPPED)})"
    )
    with pytest.raises(FileNotFoundError, match=f"config {tmp_path / 'absent.toml'}: no such file"):
        load_config(tmp_path / "absent.toml")


def test_the_configs_are_package_data(tmp_path):
    """What a non-editable ``pip install .`` copies (setuptools' build_py: modules and package
    data; the C++ build is another command) holds every shipped config."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=root, check=True,
                   capture_output=True, timeout=300)
    assert sorted(path.stem for path in (tmp_path / "codetr" / "configs").glob("*.toml")) == SHIPPED


def test_the_tiny_configs_header_says_what_it_holds() -> None:
    header = " ".join(line.lstrip("# ") for line in (CONFIGS / "tiny.toml").read_text().splitlines() if line.startswith("#"))
    config = load_config(CONFIGS / "tiny.toml")
    model = config.model
    t = model.transformer
    stated = (f"ResNet-{model.resnet.depth} ({len(model.resnet.out_indices)} stages out), {t.num_levels} feature levels of "
              f"{t.embed_dims} channels, {t.encoder_layers} encoder and {t.decoder_layers} decoder layers, {t.num_heads} heads, "
              f"{t.num_points} sampling points, {t.num_queries} queries, {model.num_classes} classes")
    assert stated in header
