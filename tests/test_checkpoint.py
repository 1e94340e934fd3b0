"""Checkpoints: official key names (both layouts) load 1:1, round trips, strict errors, safe loading."""

from __future__ import annotations

import io
import logging
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from codetr.checkpoint import (
    CheckpointError,
    describe_state,
    load_checkpoint,
    load_state_dict,
    mmdet3_to_sensex,
    save_checkpoint,
    sensex_to_mmdet3,
)
from codetr.config import Config, load_config
from codetr.models import build_model
from codetr.models.swin import PatchMerging
from model_configs import CONFIGS, tiny_config, tiny_swin_config

# ---- official key names, written out from the official module structure ----------------------

def _linear(prefix: str, bias: bool = True) -> list[str]:
    return [f"{prefix}.weight"] + ([f"{prefix}.bias"] if bias else [])


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def official_resnet_keys(depth: int) -> list[str]:
    bottleneck = depth >= 50
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    keys = ["backbone.conv1.weight", *_bn("backbone.bn1")]
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            prefix = f"backbone.layer{stage}.{block}"
            for conv in range(1, 4 if bottleneck else 3):
                keys += [f"{prefix}.conv{conv}.weight", *_bn(f"{prefix}.bn{conv}")]
            if block == 0 and (bottleneck or stage > 1):
                keys += [f"{prefix}.downsample.0.weight", *_bn(f"{prefix}.downsample.1")]
    return keys


def official_swin_keys(depths: tuple[int, ...], out_indices: tuple[int, ...], layout: str) -> list[str]:
    mmdet3 = layout == "mmdet3"
    stage = "stages" if mmdet3 else "layers"
    attn = "attn.w_msa" if mmdet3 else "attn"
    fc1, fc2 = ("ffn.layers.0.0", "ffn.layers.1") if mmdet3 else ("mlp.fc1", "mlp.fc2")
    keys = _linear("backbone.patch_embed.projection" if mmdet3 else "backbone.patch_embed.proj")
    keys += _linear("backbone.patch_embed.norm")
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = f"backbone.{stage}.{i}.blocks.{j}"
            keys += _linear(f"{block}.norm1") + _linear(f"{block}.norm2")
            keys += [f"{block}.{attn}.relative_position_bias_table", f"{block}.{attn}.relative_position_index"]
            keys += _linear(f"{block}.{attn}.qkv") + _linear(f"{block}.{attn}.proj")
            keys += _linear(f"{block}.{fc1}") + _linear(f"{block}.{fc2}")
        if i < len(depths) - 1:
            keys += _linear(f"backbone.{stage}.{i}.downsample.norm") + _linear(f"backbone.{stage}.{i}.downsample.reduction", bias=False)
    for i in out_indices:
        keys += _linear(f"backbone.norm{i}")
    return keys


def _msda(prefix: str) -> list[str]:
    return sum((_linear(f"{prefix}.{name}") for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")), [])


def official_head_keys(config: Config) -> list[str]:
    model = config.model
    keys = []
    for i in range(len(model.neck.in_channels)):
        keys += [f"neck.convs.{i}.conv.weight", *_linear(f"neck.convs.{i}.gn")]
    for i in range(model.neck.num_outs - len(model.neck.in_channels)):
        keys += [f"neck.extra_convs.{i}.conv.weight", *_linear(f"neck.extra_convs.{i}.gn")]
    t = "query_head.transformer"
    keys += [f"{t}.level_embeds", f"{t}.query_embed.weight", *_linear(f"{t}.enc_output"), *_linear(f"{t}.enc_output_norm")]
    for i in range(model.transformer.encoder_layers):
        layer = f"{t}.encoder.layers.{i}"
        keys += _msda(f"{layer}.attentions.0") + _linear(f"{layer}.norms.0") + _linear(f"{layer}.norms.1")
        keys += _linear(f"{layer}.ffns.0.layers.0.0") + _linear(f"{layer}.ffns.0.layers.1")
    for i in range(model.transformer.decoder_layers):
        layer = f"{t}.decoder.layers.{i}"
        keys += [f"{layer}.attentions.0.attn.in_proj_weight", f"{layer}.attentions.0.attn.in_proj_bias"]
        keys += _linear(f"{layer}.attentions.0.attn.out_proj") + _msda(f"{layer}.attentions.1")
        keys += sum((_linear(f"{layer}.norms.{n}") for n in range(3)), [])
        keys += _linear(f"{layer}.ffns.0.layers.0.0") + _linear(f"{layer}.ffns.0.layers.1")
    keys += _linear(f"{t}.decoder.ref_point_head.0") + _linear(f"{t}.decoder.ref_point_head.2") + _linear(f"{t}.decoder.norm")
    for i in range(model.transformer.decoder_layers + 1):
        keys += _linear(f"query_head.cls_branches.{i}")
        keys += sum((_linear(f"query_head.reg_branches.{i}.{n}") for n in (0, 2, 4)), [])
    return keys


def official_keys(config: Config, layout: str) -> list[str]:
    if config.model.swin is not None:
        backbone = official_swin_keys(config.model.swin.depths, config.model.swin.out_indices, layout)
    else:
        backbone = official_resnet_keys(config.model.resnet.depth)
    return backbone + official_head_keys(config)


TRAINING_ONLY = {
    "rpn_head.rpn_conv.weight": (4, 4),
    "roi_head.0.bbox_head.fc_cls.weight": (3, 4),
    "bbox_head.0.atss_cls.weight": (5, 4),
    "query_head.downsample.0.weight": (4, 4, 3, 3),
    "query_head.transformer.aux_pos_trans.0.weight": (4, 8),
    "query_head.transformer.pos_feats_norm.1.bias": (4,),
}


def _official_relative_position_index(window: int) -> torch.Tensor:
    """mmdet 3.x WindowMSA's formula (a different derivation from ours)."""
    row = torch.arange(0, (2 * window - 1) * window, 2 * window - 1)[:, None]
    coords = (row + torch.arange(window)[None, :]).reshape(1, -1)
    return (coords + coords.T).flip(1)


def official_state_dict(config: Config, layout: str, seed: int = 5) -> dict[str, torch.Tensor]:
    """Random tensors under the official names; shapes from a model built the official way."""
    shapes = {key: value.shape for key, value in build_model(config).state_dict().items()}
    if layout == "sensex":
        shapes = _sensex_shapes(shapes)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key in official_keys(config, layout):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("relative_position_index"):
            state[key] = _official_relative_position_index(config.model.swin.window_size)
        else:
            state[key] = torch.randn(shapes[key], generator=generator)
    return state


def _sensex_shapes(shapes: dict[str, torch.Size]) -> dict[str, torch.Size]:
    dummy = {key: torch.empty(shape) for key, shape in shapes.items()}
    return {key: value.shape for key, value in mmdet3_to_sensex(dummy).items()}


# ---- tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("config_name", "layout"),
    [
        ("co_dino_5scale_r50_lsj_8xb2_1x_coco", "mmdet3"),
        ("co_dino_5scale_swin_l_16xb1_16e_o365tococo", "mmdet3"),
        ("co_dino_5scale_swin_l_16xb1_16e_o365tococo", "sensex"),
    ],
)
def test_full_size_models_have_exactly_the_official_names(config_name, layout):
    config = load_config(CONFIGS / f"{config_name}.toml")
    with torch.device("meta"):
        model = build_model(config, seed=None)
    ours = set(model.state_dict())
    if layout == "sensex":
        ours = set(mmdet3_to_sensex({key: torch.empty(0) for key in ours}))
    derived = {key for key in official_keys(config, layout) if key.endswith(("num_batches_tracked", "relative_position_index"))}
    assert ours == set(official_keys(config, layout)) - derived


@pytest.mark.parametrize(("make_config", "layout"), [(tiny_config, "mmdet3"), (tiny_swin_config, "mmdet3"), (tiny_swin_config, "sensex")])
def test_official_state_dict_loads_one_to_one(make_config, layout, caplog):
    config = make_config()
    state = official_state_dict(config, layout)
    for key, shape in TRAINING_ONLY.items():
        state[key] = torch.zeros(shape)
    model = build_model(config)
    with caplog.at_level(logging.INFO, logger="codetr.checkpoint"):
        report = load_state_dict(model, state)
    assert report.layout == layout
    assert set(report.dropped_training_only) == set(TRAINING_ONLY)
    assert "dropped 6 training-only entries" in caplog.text
    loaded = model.state_dict()
    converted = sensex_to_mmdet3(state) if layout == "sensex" else state
    for key, value in loaded.items():
        assert torch.equal(value, converted[key]), key
    if layout == "sensex":  # qkv is not permuted, only renamed
        assert torch.equal(loaded["backbone.stages.1.blocks.0.attn.w_msa.qkv.weight"], state["backbone.layers.1.blocks.0.attn.qkv.weight"])


def test_sensex_patch_merging_weights_are_reordered_correctly():
    """Sense-X merging concatenates x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]."""
    torch.manual_seed(0)
    channels = 3
    norm_weight, norm_bias = torch.randn(4 * channels), torch.randn(4 * channels)
    reduction = torch.randn(2 * channels, 4 * channels)
    x = torch.randn(2, 4, 6, channels)
    parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
    merged = torch.nn.functional.layer_norm(torch.cat(parts, -1), (4 * channels,), norm_weight, norm_bias)
    expected = merged @ reduction.T

    prefix = "backbone.layers.0.downsample."
    converted = sensex_to_mmdet3(
        {prefix + "norm.weight": norm_weight, prefix + "norm.bias": norm_bias, prefix + "reduction.weight": reduction}
    )
    module = PatchMerging(channels)
    new_prefix = "backbone.stages.0.downsample."
    module.load_state_dict({key.removeprefix(new_prefix): value for key, value in converted.items()})
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected)
    back = mmdet3_to_sensex(converted)
    assert torch.equal(back[prefix + "reduction.weight"], reduction) and torch.equal(back[prefix + "norm.bias"], norm_bias)


@pytest.mark.parametrize(("make_config", "layout"), [(tiny_config, "mmdet3"), (tiny_swin_config, "mmdet3"), (tiny_swin_config, "sensex")])
def test_save_load_round_trip(tmp_path, make_config, layout):
    config = make_config()
    source = build_model(config, seed=3)
    path = tmp_path / "model.pth"
    save_checkpoint(source, path, layout=layout)
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert any(key.startswith("backbone.layers." if layout == "sensex" and config.model.swin else "backbone.") for key in stored)
    target = build_model(config, seed=4)
    report = load_checkpoint(target, path)
    assert report.layout == (layout if config.model.swin else "mmdet3")
    for (key, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), key
    images = torch.rand(1, 3, 64, 96) * 255
    sizes = torch.tensor([[64, 96]])
    with torch.no_grad():
        for a, b in zip(source(images, sizes), target(images, sizes)):
            assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("wrap", ["state_dict", "model", "ema", "bare", "ddp"])
def test_container_variants(tmp_path, wrap):
    source = build_model(tiny_config(), seed=3)
    state = source.state_dict()
    content = {
        "state_dict": {"state_dict": state, "meta": {"epoch": 12, "CLASSES": ("a", "b")}},
        "model": {"model": state},
        "ema": {"ema": state},
        "bare": state,
        "ddp": {"state_dict": {f"module.{key}": value for key, value in state.items()}},
    }[wrap]
    torch.save(content, tmp_path / "checkpoint.pth")
    target = build_model(tiny_config(), seed=4)
    load_checkpoint(target, tmp_path / "checkpoint.pth")
    assert torch.equal(target.query_head.cls_branches[2].weight, source.query_head.cls_branches[2].weight)


def _errors_for(state: dict[str, torch.Tensor]) -> str:
    with pytest.raises(CheckpointError) as error:
        load_state_dict(build_model(tiny_config()), state, source="test.pth")
    return str(error.value)


def test_missing_unexpected_and_mismatched_keys_are_all_listed():
    state = dict(build_model(tiny_config()).state_dict())
    del state["query_head.transformer.level_embeds"]
    del state["neck.convs.0.gn.bias"]
    state["query_head.typo_branch.weight"] = torch.zeros(3)
    state["query_head.cls_branches.0.weight"] = torch.zeros(7, 32)
    message = _errors_for(state)
    assert "4 problem(s)" in message
    assert "missing key query_head.transformer.level_embeds" in message
    assert "missing key neck.convs.0.gn.bias" in message
    assert "unexpected key query_head.typo_branch.weight" in message
    assert "shape mismatch query_head.cls_branches.0.weight: checkpoint (7, 32) vs model (5, 32)" in message


def test_wrong_relative_position_index_is_rejected():
    config = tiny_swin_config()
    state = official_state_dict(config, "mmdet3")
    state["backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"] = torch.zeros(16, 16, dtype=torch.int64)
    with pytest.raises(CheckpointError, match="relative_position_index: stored window index differs"):
        load_state_dict(build_model(config), state)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/codetr_checkpoint_exploit_marker"),))


def test_unsafe_and_corrupt_files_are_rejected(tmp_path):
    marker = Path("/tmp/codetr_checkpoint_exploit_marker")
    marker.unlink(missing_ok=True)
    exploit = tmp_path / "exploit.pth"
    with exploit.open("wb") as file:
        pickle.dump({"state_dict": {"x": _Exploit()}}, file)
    with pytest.raises(CheckpointError, match="not a checkpoint: it looks like a Python pickle that torch.save did not write"):
        load_checkpoint(build_model(tiny_config()), exploit)
    assert not marker.exists()
    legacy_exploit = tmp_path / "legacy_exploit.pth"  # torch.save's legacy pickle format, naming the global
    torch.save({"state_dict": {"x": _Exploit()}}, legacy_exploit, _use_new_zipfile_serialization=False)
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"refused to unpickle the pickled global\(s\) (getattr|pathlib)"):
        load_checkpoint(build_model(tiny_config()), legacy_exploit)
    assert not marker.exists()

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError):
        load_checkpoint(build_model(tiny_config()), garbage)

    good = tmp_path / "good.pth"
    save_checkpoint(build_model(tiny_config()), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(build_model(tiny_config()), truncated)

    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(build_model(tiny_config()), not_a_dict)

    with pytest.raises(FileNotFoundError):
        load_checkpoint(build_model(tiny_config()), tmp_path / "absent.pth")


def test_other_models_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "swin.pth"
    save_checkpoint(build_model(tiny_swin_config()), path)
    with pytest.raises(CheckpointError, match="problem"):
        load_checkpoint(build_model(tiny_config()), path)


# ---- numpy values in checkpoint metadata (mmcv 1.x / mmengine) ---------------------------------

def _with_pickled_module_renamed(source: Path, target: Path, old: str, new: str) -> None:
    """Copies a torch.save zip, renaming a module in its pickle's GLOBAL opcodes (protocol 2 writes
    them as text lines), to produce what another numpy major version would have written."""
    with zipfile.ZipFile(source) as reader, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as writer:
        for name in reader.namelist():
            data = reader.read(name)
            if name.endswith("/data.pkl"):
                assert f"c{old}\n".encode() in data
                data = data.replace(f"c{old}\n".encode(), f"c{new}\n".encode())
            writer.writestr(name, data)


@pytest.mark.parametrize("numpy_module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_numpy_scalars_and_arrays_in_metadata_load(tmp_path, numpy_module):
    source = build_model(tiny_config(), seed=3)
    meta = {
        "hook_msgs": {"best_score": np.float64(0.5), "best_ckpt": "epoch_12.pth"},  # mmcv 1.x EvalHook
        "seed": np.int64(42),
        "iter_times": np.arange(4, dtype=np.float32),
        "flags": np.array([True, False]),
        "name": np.str_("co_dino"),
    }
    saved = tmp_path / "saved.pth"
    torch.save({"meta": meta, "state_dict": source.state_dict()}, saved)
    path = tmp_path / "checkpoint.pth"
    installed = "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
    if numpy_module == installed:
        path = saved
    else:
        _with_pickled_module_renamed(saved, path, installed, numpy_module)
    target = build_model(tiny_config(), seed=4)
    load_checkpoint(target, path)
    assert torch.equal(target.query_head.cls_branches[1].weight, source.query_head.cls_branches[1].weight)


class _TrainingLogBuffer:  # stands in for mmengine's HistoryBuffer in `message_hub`
    def __init__(self) -> None:
        self.values = [1.0, 2.0]


def test_unknown_globals_are_named_with_a_resave_hint(tmp_path):
    state = build_model(tiny_config()).state_dict()
    path = tmp_path / "mmengine.pth"
    torch.save({"meta": {"best": np.float64(1.0)}, "state_dict": state, "message_hub": {"log": _TrainingLogBuffer()}}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(build_model(tiny_config()), path)
    message = str(error.value)
    # only the unknown class is named: the numpy scalar beside it is accepted
    assert f"refused to unpickle the pickled global(s) {_TrainingLogBuffer.__module__}._TrainingLogBuffer." in message
    assert "weights_only=False" in message and "mmengine_weights.pth" in message


def test_numpy_allowlist_opens_no_code_execution(tmp_path):
    marker = Path("/tmp/codetr_checkpoint_exploit_marker")
    marker.unlink(missing_ok=True)
    state = build_model(tiny_config()).state_dict()
    exploit = tmp_path / "exploit.pth"
    torch.save({"meta": {"x": np.array([_Exploit()], dtype=object)}, "state_dict": state}, exploit)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(build_model(tiny_config()), exploit)
    assert not marker.exists()

    object_array = tmp_path / "object_array.pth"  # object dtypes stay refused even with safe contents
    torch.save({"meta": {"x": np.array(["a", 1], dtype=object)}, "state_dict": state}, object_array)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(build_model(tiny_config()), object_array)


# ---- EMA copies and prefixes ----------------------------------------------------------------------

def _shifted(state: dict[str, torch.Tensor], offset: float) -> dict[str, torch.Tensor]:
    """A distinguishable copy: floats moved by offset, integer buffers kept."""
    return {key: value + offset if value.is_floating_point() else value.clone() for key, value in state.items()}


@pytest.mark.parametrize(("make_config", "layout"), [(tiny_config, "mmdet3"), (tiny_swin_config, "sensex")])
def test_mmdet2_ema_buffers_are_dropped_or_loaded_on_request(tmp_path, make_config, layout, caplog):
    config = make_config()
    main = official_state_dict(config, layout)
    main.update({key: torch.zeros(shape) for key, shape in TRAINING_ONLY.items()})
    # mmdet 2.x BaseEMAHook: one buffer per state-dict entry, "." replaced by "_" (lossy: names keep their "_")
    ema = {"ema_" + key.replace(".", "_"): value for key, value in _shifted(main, 1.0).items()}
    assert "ema_backbone_conv1_weight" in ema or "ema_backbone_layers_0_blocks_0_attn_qkv_weight" in ema
    path = tmp_path / "ema.pth"
    torch.save({"state_dict": {**main, **ema}, "meta": {"epoch": 12}}, path)

    model = build_model(config, seed=4)
    with caplog.at_level(logging.INFO, logger="codetr.checkpoint"):
        report = load_checkpoint(model, path)
    assert report.dropped == (f"EMA copy ({len(main)} ema_* entries)",) and not report.use_ema
    assert f"loaded the weights; dropped EMA copy ({len(main)} ema_* entries)" in caplog.text
    expected = sensex_to_mmdet3(main) if layout == "sensex" else main
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key

    ema_model = build_model(config, seed=4)
    report = load_checkpoint(ema_model, path, use_ema=True)
    assert report.use_ema and report.dropped == (f"main weights ({len(main)} entries, replaced by their ema_* copies)",)
    shifted = _shifted(expected, 1.0)
    for key, value in ema_model.state_dict().items():
        assert torch.equal(value, shifted[key]), key


def test_mmengine_ema_state_dict_and_averaged_model_prefix(tmp_path, caplog):
    source = build_model(tiny_config(), seed=3).state_dict()
    averaged = {f"module.{key}": value for key, value in _shifted(source, 0.5).items()}
    averaged["steps"] = torch.tensor(1200)  # BaseAveragedModel's counter, not prefixed
    path = tmp_path / "mmengine_ema.pth"
    torch.save({"state_dict": source, "ema_state_dict": averaged, "meta": {}}, path)

    model = build_model(tiny_config(), seed=4)
    with caplog.at_level(logging.INFO, logger="codetr.checkpoint"):
        report = load_checkpoint(model, path)
    assert report.dropped == (f"'ema_state_dict' ({len(averaged)} tensors)",)
    assert "dropped 'ema_state_dict'" in caplog.text
    assert torch.equal(model.query_head.cls_branches[0].weight, source["query_head.cls_branches.0.weight"])

    report = load_checkpoint(model, path, use_ema=True)
    assert set(report.dropped) == {f"'state_dict' ({len(source)} tensors)", "'steps' (the update counter of an averaged model)"}
    assert torch.equal(model.query_head.cls_branches[0].weight, source["query_head.cls_branches.0.weight"] + 0.5)

    bare = tmp_path / "averaged_model.pth"  # an averaged model's own state saved on its own
    torch.save(averaged, bare)
    load_checkpoint(model, bare)
    assert torch.equal(model.neck.convs[0].gn.bias, source["neck.convs.0.gn.bias"] + 0.5)


def test_use_ema_without_an_ema_copy_is_an_error(tmp_path):
    path = tmp_path / "plain.pth"
    save_checkpoint(build_model(tiny_config()), path)
    with pytest.raises(CheckpointError, match="use_ema asks for the EMA copy, but the file holds none"):
        load_checkpoint(build_model(tiny_config()), path, use_ema=True)


def test_weights_stored_with_and_without_the_ddp_prefix_are_refused():
    state = dict(build_model(tiny_config()).state_dict())
    state["module.neck.convs.0.gn.bias"] = state["neck.convs.0.gn.bias"]
    from codetr.checkpoint import select_weights

    with pytest.raises(CheckpointError, match="both with and without the 'module.' prefix, e.g. module.neck.convs.0.gn.bias"):
        select_weights(state, "twice.pth")


# ---- files that are not checkpoints -------------------------------------------------------------

def _jpeg_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return buffer.getvalue()


def _torchscript_bytes() -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit is deprecated, but its files are still around
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer)
    return buffer.getvalue()


def _exported_program_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "looks_like"),
    [
        (_jpeg_bytes, "a JPEG image"),
        (lambda: b"\x89PNG\r\n\x1a\n" + bytes(40), "a PNG image"),
        (lambda: b"epoch 12: bbox_mAP 0.58\nsecond line\n", "text starting 'epoch 12: bbox_mAP 0.58'"),
        (lambda: b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
        (lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "a Git LFS pointer"),
        (lambda: b"", "an empty file"),
        (lambda: pickle.dumps({"state_dict": {}}, protocol=4), "a Python pickle that torch.save did not write"),
        (_zip_bytes, "a zip archive that torch.save did not write"),
        (_torchscript_bytes, "a TorchScript program (torch.jit.save), not a checkpoint"),
        (_exported_program_bytes, "an ExportedProgram (.pt2, torch.export.save), not a checkpoint"),
        (lambda: bytes(range(200, 256)) * 4, "unrecognised binary data (first bytes c8 c9 ca cb"),
    ],
)
def test_foreign_files_are_named_without_unsafe_advice(tmp_path, content, looks_like):
    path = tmp_path / "model.pth"
    path.write_bytes(content())
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(build_model(tiny_config()), path)
    message = str(error.value)
    assert f"{path} is not a checkpoint: it looks like {looks_like}" in message
    assert "weights_only" not in message and "trust" not in message


def test_damaged_checkpoint_pickle_gets_no_unsafe_advice(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint(build_model(tiny_config()), good)
    damaged = tmp_path / "damaged.pth"
    with zipfile.ZipFile(good) as reader, zipfile.ZipFile(damaged, "w") as writer:
        for name in reader.namelist():
            data = reader.read(name)
            writer.writestr(name, b"\x80\x02\xff\xfe garbage opcodes" if name.endswith("data.pkl") else data)
    for path in (damaged, tmp_path / "legacy_damaged.pth"):
        if path.name.startswith("legacy"):  # torch.save's legacy header, then garbage
            path.write_bytes(b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"\xff\xfe" * 20)
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(build_model(tiny_config()), path)
        message = str(error.value)
        assert str(path) in message and ("damaged" in message or "truncated" in message)
        assert "weights_only" not in message and "refused" not in message


# ---- another model's checkpoint -----------------------------------------------------------------

def test_other_architecture_gets_a_summary_then_a_capped_listing(tmp_path):
    path = tmp_path / "swin.pth"
    save_checkpoint(build_model(tiny_swin_config()), path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(build_model(tiny_config()), path)
    lines = str(error.value).splitlines()
    checkpoint = build_model(tiny_swin_config()).state_dict()
    model = build_model(tiny_config()).state_dict()
    unexpected = {key for key in checkpoint if key not in model}
    missing = {key for key in model if key not in checkpoint and not key.endswith("num_batches_tracked")}
    mismatched = {key for key in checkpoint if key in model and checkpoint[key].shape != model[key].shape}
    matched = len(checkpoint) - len(unexpected) - len(mismatched)
    assert len(mismatched) == 4  # the neck's input convolutions: Swin and ResNet channels differ
    assert lines[0] == (
        f"{path} (mmdet3 layout) does not fit the model, {len(unexpected) + len(missing) + len(mismatched)} problem(s): "
        "the checkpoint looks like a Swin (embed_dims 16, depths [2, 2, 2]) backbone, 5 classes, 32 queries, 1 encoder layers, "
        "2 decoder layers; the model is a ResNet-18 backbone, 5 classes, 32 queries, 1 encoder layers, 2 decoder layers. "
        f"Keys: {matched} match, {len(missing)} missing, {len(unexpected)} unexpected, 4 mismatched."
    )
    assert lines[21].strip() == f"... and {len(missing) - 20} more missing"
    assert lines[42].strip() == f"... and {len(unexpected) - 20} more unexpected"
    assert [line.split()[0] for line in lines[43:]] == ["shape"] * 4
    assert len(lines) == 1 + 21 + 21 + 4


def test_describe_state_names_official_backbones_and_class_counts():
    config = load_config(CONFIGS / "co_dino_5scale_swin_l_16xb1_16e_o365tococo.toml")
    with torch.device("meta"):
        swin_l = build_model(config, seed=None).state_dict()
    assert describe_state(swin_l).startswith(f"a Swin-L backbone, {config.model.num_classes} classes, 900 queries")
    config = load_config(CONFIGS / "co_dino_5scale_r50_lsj_8xb2_1x_coco.toml")
    with torch.device("meta"):
        r50 = build_model(config, seed=None).state_dict()
    assert describe_state(r50).startswith("a ResNet-50 backbone, 80 classes, 900 queries")
    assert describe_state({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}) == "no Co-DETR detector (first keys: conv1.weight, fc.weight)"
