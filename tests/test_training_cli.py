"""``codetr train`` end to end on the tiny config and generated data (CPU), and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
