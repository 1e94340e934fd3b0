"""``codetr train`` end to end on the tiny config and generated data (CPU), and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from codetr.cli import main
from codetr.config import load_config

TINY = "codetr/configs/tiny.toml"


def test_train_end_to_end(tmp_path, rectangle_dataset, capsys):
    data = rectangle_dataset(splits={"train": 4, "val": 2}, class_names=load_config(TINY).class_names)
    output = tmp_path / "out"
    arguments = ["train", "--config", TINY, "--data", str(data), "--output", str(output), "--iterations", "2",
                 "--batch-size", "2", "--eval-every", "2", "--save-every", "1", "--log-every", "1", "--workers", "0"]
    assert main(arguments) == 0
    assert {"latest.pth", "iter_1.pth", "iter_2.pth", "train_log.jsonl", "metrics.json", "loss.png"} <= {p.name for p in output.iterdir()}
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["iteration"] for r in steps] == [1, 2]
    for key in ("loss", "lr", "images_per_second", "max_memory_gib", "loss_cls", "loss_bbox", "loss_iou",
                "enc_loss_cls", "d0.loss_cls", "dn_loss_cls", "d0.dn_loss_iou"):
        assert key in steps[0], key
    assert steps[0]["loss"] == pytest.approx(sum(v for k, v in steps[0].items() if "loss_" in k), rel=1e-5)
    metrics = json.loads((output / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox"]["AP"] <= 1.0 and metrics["iteration"] == 2
    assert "val AP" in capsys.readouterr().out
    assert not [p for p in output.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_errors_name_the_argument(tmp_path, rectangle_dataset, capsys):
    data = rectangle_dataset(splits={"train": 2}, class_names=load_config(TINY).class_names)
    base = ["train", "--config", TINY, "--output", str(tmp_path / "out"), "--workers", "0", "--batch-size", "2"]
    assert main([*base, "--data", str(tmp_path / "nowhere")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main([*base, "--data", str(data), "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--data", str(data), "--batch-size", "3"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main([*base, "--data", str(data), "--iterations", "0"]) == 2
    assert "--iterations" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("not a checkpoint")
    assert main([*base, "--data", str(data), "--checkpoint", str(not_a_checkpoint)]) == 2
    assert "notes.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # a failed start leaves no empty run folder


def test_output_folder_faults_are_refused_before_any_work(tmp_path, rectangle_dataset, capsys) -> None:
    """Training into a folder that holds another run (without --resume) would overwrite its
    latest.pth and append to its log; into the dataset it would fill it with checkpoints."""
    data = rectangle_dataset(splits={"train": 2, "val": 1}, class_names=["a", "b"])
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "train_log.jsonl").write_text("{}\n")
    config = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
    base = ["train", "--config", str(config), "--data", str(data), "--iterations", "1", "--device", "cpu"]
    assert main([*base, "--output", str(run_folder)]) == 2
    assert "already holds a training run; pass --resume" in capsys.readouterr().err
    assert main([*base, "--output", str(data / "runs")]) == 2
    assert "is inside the dataset --data" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no training run" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()
    assert (run_folder / "train_log.jsonl").read_text() == "{}\n"


def _interrupted_run(tmp_path, rectangle_dataset) -> tuple[Path, list[str]]:
    """A run of 2 iterations (batch 2, --lr 0.0002) stopped after iteration 1: its latest.pth is
    iter_1.pth. Returns its data and the arguments that started it (without --output)."""
    data = rectangle_dataset(splits={"train": 4}, class_names=load_config(TINY).class_names)
    started = ["train", "--config", TINY, "--data", str(data), "--workers", "0", "--device", "cpu"]
    output = tmp_path / "run"
    assert main([*started, "--output", str(output), "--iterations", "2", "--batch-size", "2", "--lr", "0.0002",
                 "--save-every", "1", "--log-every", "1"]) == 0
    (output / "latest.pth").write_bytes((output / "iter_1.pth").read_bytes())
    return output, started


def _meta(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["meta"]


def test_resume_refuses_changed_arguments_and_continues_the_run_as_started(tmp_path, rectangle_dataset, capsys):
    output, started = _interrupted_run(tmp_path, rectangle_dataset)
    other_data = shutil.copytree(started[4], tmp_path / "other_data")
    other_config = tmp_path / "tiny.toml"  # same name "tiny", another model
    other_config.write_text(Path(TINY).read_text().replace("max_per_img = 20", "max_per_img = 10"))
    changed = ["train", "--config", str(other_config), "--data", str(other_data), "--output", str(output), "--resume",
               "--workers", "0", "--device", "cpu", "--batch-size", "4", "--iterations", "200", "--lr", "0.1",
               "--seed", "3", "--amp", "bf16"]
    before = (output / "latest.pth").read_bytes()
    capsys.readouterr()
    assert main(changed) == 2
    error = capsys.readouterr().err
    assert "--resume continues the run in" in error and "as it was started" in error
    assert f"--checkpoint {output / 'latest.pth'}" in error
    for line in ("--batch-size: the run has 2, given 4", "--iterations: the run has 2, given 200",
                 "--lr: the run has 0.0002, given 0.1", "--seed: the run has 0, given 3", "--amp: the run has none, given bf16",
                 f"--data: the run has {Path(started[4]).resolve()}, given {other_data.resolve()}",
                 "--config: the run has tiny"):
        assert line in error, line
    assert (output / "latest.pth").read_bytes() == before
    # Options left out take the run's values; options repeated with the run's values are accepted.
    assert main([*started, "--output", str(output), "--resume", "--batch-size", "2", "--seed", "0"]) == 0
    meta = _meta(output / "latest.pth")
    assert (meta["iteration"], meta["total_iterations"], meta["batch_size"], meta["lr"]) == (2, 2, 2, 0.0002)
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 2]


def test_resume_from_a_damaged_latest_names_the_fallbacks(tmp_path, rectangle_dataset, capsys):
    output, started = _interrupted_run(tmp_path, rectangle_dataset)
    latest = output / "latest.pth"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # cut short, as by a full disk
    capsys.readouterr()
    assert main([*started, "--output", str(output), "--resume"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --resume: {latest}: not a readable PyTorch checkpoint")
    assert "the run's earlier checkpoints are iter_1.pth, iter_2.pth: copy the newest readable one over" in error


def test_amp_fp16_on_a_cpu_is_refused(tmp_path, rectangle_dataset, capsys):
    data = rectangle_dataset(splits={"train": 2}, class_names=load_config(TINY).class_names)
    assert main(["train", "--config", TINY, "--data", str(data), "--output", str(tmp_path / "out"), "--workers", "0",
                 "--device", "cpu", "--iterations", "1", "--batch-size", "2", "--amp", "fp16"]) == 2
    assert "--amp fp16 needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
