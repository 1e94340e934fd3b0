"""The training loop on the tiny config: exact resume, DDP (2 gloo processes) equal to one
process, and overfitting two images."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from codetr.checkpoint import load_checkpoint
from codetr.config import load_config
from codetr.models import build_model
from codetr.training.trainer import TrainOptions, step_schedule, train

TINY = "codetr/configs/tiny.toml"


def _options(data, output, **changes) -> TrainOptions:
    config = load_config(TINY)
    base = dict(config=config, data=data, output=output, iterations=4, batch_size=2, workers=0, progress=False, log_every=1)
    base.update(changes)
    return TrainOptions(**base)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_is_exact(tmp_path, rectangle_dataset):
    data = rectangle_dataset(splits={"train": 6}, class_names=load_config(TINY).class_names)
    straight = tmp_path / "straight"
    train(_options(data, straight, save_every=2))
    # A run that stopped after iteration 2 (its latest.pth is iter_2.pth), then resumed.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "iter_2.pth", resumed / "latest.pth")
    train(_options(data, resumed, resume=True))
    expected, actual = _weights(straight / "latest.pth"), _weights(resumed / "latest.pth")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    straight_log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in straight_log[2:]] == [r["loss"] for r in resumed_log]


def test_checkpoint_loads_into_the_inference_model(tmp_path, rectangle_dataset):
    data = rectangle_dataset(splits={"train": 2}, class_names=load_config(TINY).class_names)
    train(_options(data, tmp_path / "out", iterations=1))
    checkpoint = torch.load(tmp_path / "out" / "latest.pth", map_location="cpu", weights_only=True)
    assert {"state_dict", "meta", "optimizer", "iteration"} <= checkpoint.keys() and checkpoint["iteration"] == 1
    model = build_model(load_config(TINY))
    report = load_checkpoint(model, tmp_path / "out" / "latest.pth")
    assert report.dropped_training_only == ("query_head.label_embedding.weight",)
    assert torch.equal(model.state_dict()["query_head.cls_branches.0.bias"], checkpoint["state_dict"]["query_head.cls_branches.0.bias"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, data, output) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        train(_options(data, output, iterations=2, batch_size=4, device="cpu"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_equal_one(tmp_path, rectangle_dataset):
    data = rectangle_dataset(splits={"train": 8}, class_names=load_config(TINY).class_names, max_objects=4)
    single = tmp_path / "single"
    train(_options(data, single, iterations=2, batch_size=4))
    distributed = tmp_path / "ddp"
    mp.start_processes(_ddp_worker, args=(_free_port(), data, distributed), nprocs=2, start_method="spawn")
    single_log = [json.loads(line) for line in (single / "train_log.jsonl").read_text().splitlines()]
    ddp_log = [json.loads(line) for line in (distributed / "train_log.jsonl").read_text().splitlines()]
    for one, two in zip(single_log, ddp_log, strict=True):
        for key in ("loss", "loss_cls", "loss_bbox", "enc_loss_iou", "dn_loss_bbox"):
            assert two[key] == pytest.approx(one[key], rel=1e-5), key
    expected, actual = _weights(single / "latest.pth"), _weights(distributed / "latest.pth")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=2e-5, msg=key)
    meta = torch.load(distributed / "latest.pth", map_location="cpu", weights_only=True)["meta"]
    assert meta["world_size"] == 2 and meta["batch_size"] == 4


def test_tiny_config_overfits_two_images(tmp_path, rectangle_dataset):
    """Two images, no augmentation, trainable BatchNorm (from scratch), a higher rate and a
    looser clip than the official fine-tuning recipe: the loss more than halves and the
    images' own AP50 reaches 0.9 within 90 iterations."""
    config = load_config(TINY)
    data = rectangle_dataset(splits={"train": 2}, class_names=config.class_names, seed=1)
    shutil.copytree(data / "train", data / "val")
    shutil.copy(data / "annotations" / "instances_train.json", data / "annotations" / "instances_val.json")
    recipe = dataclasses.replace(
        config.train, scale_range=(1.0, 1.0), flip_prob=0.0, clip_grad_max_norm=1.0, backbone_lr_mult=1.0, backbone_norm="batch_norm"
    )
    output = tmp_path / "out"
    result = train(_options(data, output, config=dataclasses.replace(config, train=recipe), iterations=90, lr=1e-3, eval_every=90))
    losses = [json.loads(line)["loss"] for line in (output / "train_log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]
    assert result.metrics["AP50"] >= 0.9


def test_step_schedule_is_silent_when_the_grad_scaler_skipped_the_step():
    """With --amp fp16 the GradScaler skips optimizer.step() while it calibrates; the schedule
    still advances, without PyTorch's "lr_scheduler.step() before optimizer.step()" warning."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step_schedule(scheduler)
    assert [str(w.message) for w in caught] == []
    assert scheduler.get_last_lr() == [0.5]
