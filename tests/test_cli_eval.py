"""``codetr eval``: results files, the eager model against its ExportedProgram and ONNX Runtime,
--data layouts, outputs and errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codetr.cli import main
from codetr.config import load_config
from codetr.contract.artifacts import MsdaMode
from codetr.export import Artifact, ExportOptions, export_model
from codetr.models import build_model

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
METRIC_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"]


def ground_truth_as_results(annotation_file: Path) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in json.loads(annotation_file.read_text())["annotations"]]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """The tiny model's ExportedProgram and ONNX model (standard ONNX ops), static 64x64 (the test
    images' size, so the export's pre-processing equals the eager model's), float32."""
    config = load_config(TINY)
    options = ExportOptions(dtype=torch.float32, height=64, width=64, msda=MsdaMode.DECOMPOSED,
                            artifacts=(Artifact.EXPORTED_PROGRAM, Artifact.ONNX))
    output = tmp_path_factory.mktemp("tiny_export")
    export_model(build_model(config), config, options, output)
    return output


def test_detections_file_ground_truth_scores_one(tmp_path: Path, tiny_coco, capsys) -> None:
    annotation_file, _ = tiny_coco
    detections = tmp_path / "results.json"
    detections.write_text(json.dumps(ground_truth_as_results(annotation_file)))
    assert main(["eval", "--detections", str(detections), "--annotations", str(annotation_file), "--output", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics["bbox"]) == METRIC_KEYS
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP50"] == pytest.approx(1.0)
    assert set(metrics["per_class"]) == {"cat", "dog", "car", "tree", "cup"}
    assert (metrics["images"], metrics["images_skipped"], metrics["images_per_second"]) == (5, 0, None)
    assert not (tmp_path / "out" / "results.json").exists()  # the results are the input file
    printed = capsys.readouterr().out
    assert "results.json" in printed and "   1.000" in printed and "class AP" in printed


@pytest.mark.slow  # the export alone takes ~40 s on 2 CPU cores
def test_eager_exported_program_and_onnxruntime_give_the_same_ap(tmp_path: Path, tiny_coco, tiny_export, capsys) -> None:
    annotation_file, image_dir = tiny_coco
    output = tmp_path / "out"
    code = main(["eval", "--config", str(TINY), "--model", str(tiny_export / "model.pt2"), "--model", str(tiny_export / "model.onnx"),
                 "--annotations", str(annotation_file), "--images", str(image_dir), "--output", str(output),
                 "--device", "cpu", "--workers", "0"])
    assert code == 0
    metrics = {label: json.loads((output / label / "metrics.json").read_text()) for label in ("eager", "model.pt2", "model.onnx")}
    eager_ap = metrics["eager"]["bbox"]
    assert 0.2 < eager_ap["AP"] < 1.0  # the ground truth is the eager model's detections, moved
    for label in ("model.pt2", "model.onnx"):
        assert metrics[label]["bbox"] == pytest.approx(eager_ap, abs=1e-6)
        assert metrics[label]["per_class"] == pytest.approx(metrics["eager"]["per_class"], abs=1e-6)
        assert metrics[label]["images"] == 5 and metrics[label]["images_per_second"] > 0
        assert len(json.loads((output / label / "results.json").read_text())) == 5 * 20
    comparison = json.loads((output / "comparison.json").read_text())
    assert comparison["reference"] == "eager" and set(comparison["models"]) == {"model.pt2", "model.onnx"}
    for entry in comparison["models"].values():
        assert entry["delta_AP"] == pytest.approx(0.0, abs=1e-6) and entry["unmatched"] == 0
        assert entry["max_score_difference"] < 1e-4 and entry["max_box_difference"] < 0.05
        assert set(entry["per_image"]) == {"1", "2", "3", "4", "5"}
    printed = capsys.readouterr().out
    assert "ΔAP" in printed and "model.onnx" in printed and "against eager" in printed


def test_data_folder_in_the_generated_layout(tmp_path: Path, tiny_coco) -> None:
    annotation_file, image_dir = tiny_coco
    (tmp_path / "data" / "annotations").mkdir(parents=True)
    shutil.copy(annotation_file, tmp_path / "data" / "annotations" / "instances_val.json")
    shutil.copytree(image_dir, tmp_path / "data" / "val")
    output = tmp_path / "out"
    assert main(["eval", "--config", str(TINY), "--data", str(tmp_path / "data"), "--output", str(output), "--device", "cpu",
                 "--workers", "1", "--batch-size", "2"]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["images"] == 5 and 0.2 < metrics["bbox"]["AP"] < 1.0
    assert {entry["image_id"] for entry in json.loads((output / "results.json").read_text())} == {1, 2, 3, 4, 5}


def test_unreadable_images_are_counted_in_metrics_json(tmp_path: Path, make_tiny_coco) -> None:
    annotation_file, image_dir = make_tiny_coco(tmp_path, images=3)
    (image_dir / "0002.png").write_bytes(b"\x89PNG broken")
    assert main(["eval", "--config", str(TINY), "--annotations", str(annotation_file), "--images", str(image_dir),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--workers", "0"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["images"], metrics["images_skipped"], metrics["skipped"]) == (2, 1, ["0002.png"])


def test_an_earlier_run_in_output_is_refused_unless_overwrite_replaces_it(tmp_path: Path, tiny_coco, capsys) -> None:
    """Never metrics.json of this run beside an earlier run's comparison.json or model folders."""
    annotation_file, _ = tiny_coco
    detections = tmp_path / "results.json"
    detections.write_text(json.dumps(ground_truth_as_results(annotation_file)))
    output = tmp_path / "out"
    (output / "eager").mkdir(parents=True)
    (output / "comparison.json").write_text("{}")  # an earlier comparison of several models
    command = ["eval", "--detections", str(detections), "--annotations", str(annotation_file), "--output", str(output)]
    assert main(command) == 2
    assert f"--output {output} is not empty (holds comparison.json, eager); choose a new or empty folder, or pass " \
        "--overwrite" in capsys.readouterr().err
    assert sorted(path.name for path in output.iterdir()) == ["comparison.json", "eager"]
    assert main([*command, "--overwrite"]) == 0
    assert sorted(path.name for path in output.iterdir()) == ["metrics.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "results.json"]  # no staging folder left


def test_output_holding_an_input_is_refused(tmp_path: Path, tiny_coco, capsys) -> None:
    annotation_file, _ = tiny_coco
    output = tmp_path / "out"
    output.mkdir()
    detections = output / "results.json"
    detections.write_text(json.dumps(ground_truth_as_results(annotation_file)))
    error = run_failing(["eval", "--detections", str(detections), "--annotations", str(annotation_file),
                         "--output", str(output), "--overwrite"], capsys)
    assert f"--output {output} holds the input {detections}" in error
    assert detections.is_file()


@pytest.mark.parametrize("option", ["--config", "--checkpoint"])
def test_output_holding_the_config_or_checkpoint_is_refused(tmp_path: Path, tiny_coco, capsys, option: str) -> None:
    annotation_file, image_dir = tiny_coco
    output = tmp_path / "out"
    given = output / "ck" / ("tiny.toml" if option == "--config" else "latest.pth")
    given.parent.mkdir(parents=True)
    given.write_bytes(TINY.read_bytes())  # never read: refused before any model loads
    config = given if option == "--config" else TINY
    extra = ["--checkpoint", str(given)] if option == "--checkpoint" else []
    error = run_failing(["eval", "--config", str(config), *extra, "--annotations", str(annotation_file),
                         "--images", str(image_dir), "--output", str(output), "--overwrite"], capsys)
    assert f"--output {output} holds the input {given}" in error
    assert given.read_bytes() == TINY.read_bytes()


def test_interrupted_writing_leaves_the_output_as_it_was(tmp_path: Path, tiny_coco, monkeypatch, capsys) -> None:
    import codetr.cli.eval as eval_command

    annotation_file, _ = tiny_coco
    detections = tmp_path / "results.json"
    detections.write_text(json.dumps(ground_truth_as_results(annotation_file)))
    output = tmp_path / "out"
    output.mkdir()
    (output / "metrics.json").write_text("earlier")
    monkeypatch.setattr(eval_command, "metrics_document", lambda evaluation: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["eval", "--detections", str(detections), "--annotations", str(annotation_file), "--output", str(output),
                 "--overwrite"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted: {output} was left as it was"
    assert [(path.name, path.read_text()) for path in output.iterdir()] == [("metrics.json", "earlier")]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "results.json"]
    new = tmp_path / "new" / "out"
    assert main(["eval", "--detections", str(detections), "--annotations", str(annotation_file), "--output", str(new)]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted: nothing was written ({new} does not exist)"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "results.json"]


def run_failing(arguments: list[str], capsys) -> str:
    assert main(arguments) == 2
    return capsys.readouterr().err


def test_results_with_unknown_image_ids_name_the_file_and_key(tmp_path: Path, tiny_coco, capsys) -> None:
    annotation_file, _ = tiny_coco
    results = ground_truth_as_results(annotation_file)
    results[2]["image_id"] = 77
    (tmp_path / "dets.json").write_text(json.dumps(results))
    error = run_failing(["eval", "--detections", str(tmp_path / "dets.json"), "--annotations", str(annotation_file)], capsys)
    assert "dets.json[2]: image_id 77 is not in the annotation file (5 images, ids 1, 2, 3, 4, 5)" in error


def test_results_of_another_dataset_sharing_image_ids_are_named(tmp_path: Path, tiny_coco, capsys, caplog) -> None:
    """Results of a 640x480 dataset whose image and category ids the tiny 64x64 one shares: boxes
    outside the images are an error naming the file; a file covering some images only is a warning."""
    annotation_file, _ = tiny_coco
    results = ground_truth_as_results(annotation_file)
    foreign = [{**entry, "bbox": [300.0, 200.0, 80.0, 60.0]} for entry in results]
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    error = run_failing(["eval", "--detections", str(tmp_path / "foreign.json"), "--annotations", str(annotation_file)], capsys)
    assert f"{tmp_path / 'foreign.json'}[0]: bbox [300.0, 200.0, 80.0, 60.0] lies wholly outside image 1 (64x64 px" in error
    partial = [entry for entry in results if entry["image_id"] <= 2]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    assert main(["eval", "--detections", str(tmp_path / "partial.json"), "--annotations", str(annotation_file)]) == 0
    assert f"{tmp_path / 'partial.json'}: detections on only 2 of the 5 images of the annotation file (ids 1, 2)" in caplog.text


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--detections", "{tmp}/missing.json", "--annotations", "{gt}"], "detections file not found: {tmp}/missing.json"),
        (["--detections", "{gt}", "--annotations", "{tmp}/nothing.json"], "annotation file not found: {tmp}/nothing.json"),
        (["--config", str(TINY), "--annotations", "{gt}", "--images", "{tmp}/no_images"], "image folder not found: {tmp}/no_images"),
        (["--config", str(TINY), "--data", "{tmp}"], "--data {tmp}: no 'val' split found"),
        (["--annotations", "{gt}"], "nothing to evaluate: give --model ARTIFACT, --config CONFIG or --detections"),
        (["--detections", "{gt}", "--config", str(TINY), "--annotations", "{gt}"], "--detections scores a results file; it cannot be combined"),
        (["--config", str(TINY), "--annotations", "{gt}"], "--annotations needs --images DIR"),
        (["--config", str(TINY)], "give the dataset as --annotations A.json --images DIR, or as --data DIR"),
        (["--model", "{tmp}/model.pt2", "--annotations", "{gt}", "--images", "{tmp}"], "{tmp}/model.pt2"),
        (["--config", str(TINY), "--model", "{tmp}/nope.onnx", "--annotations", "{gt}", "--images", "{tmp}"],
         "--model: no model file at {tmp}/nope.onnx"),
        (["--config", str(TINY), "--checkpoint", "{tmp}/w.pth", "--detections", "{gt}", "--annotations", "{gt}"], "cannot be combined"),
        (["--model", "{tmp}/model.pt2", "--dtype", "float16", "--data", "{tmp}"], "--dtype applies to --config only"),
        (["--model", "{tmp}/model.pt2", "--use-ema", "--data", "{tmp}"], "--use-ema applies to --config only"),
        (["--config", str(TINY), "--use-ema", "--data", "{tmp}"], "--use-ema loads the EMA copy of --checkpoint; give --checkpoint"),
        (["--detections", "{gt}", "--annotations", "{gt}", "--score-threshold", "2"], "--score-threshold must be in [0, 1], got 2.0"),
    ],
)
def test_bad_arguments_name_the_file_or_option(tmp_path: Path, tiny_coco, capsys, arguments: list[str], message: str) -> None:
    substitute = lambda text: text.format(tmp=tmp_path, gt=tiny_coco[0])  # noqa: E731
    assert substitute(message) in run_failing(["eval", *map(substitute, arguments), "--device", "cpu"], capsys)


def test_an_empty_dataset_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}))
    error = run_failing(["eval", "--config", str(TINY), "--annotations", str(tmp_path / "empty.json"), "--images", str(tmp_path),
                         "--device", "cpu"], capsys)
    assert "empty.json" in error and "empty" in error


def test_categories_that_do_not_match_list_both(tmp_path: Path, tiny_coco, capsys) -> None:
    annotation_file, image_dir = tiny_coco
    dataset = json.loads(annotation_file.read_text())
    dataset["categories"][1]["name"] = "bicycle"
    (tmp_path / "other.json").write_text(json.dumps(dataset))
    error = run_failing(["eval", "--config", str(TINY), "--annotations", str(tmp_path / "other.json"), "--images", str(image_dir),
                         "--device", "cpu", "--workers", "0"], capsys)
    assert "the model's class names do not match the categories of" in error and "other.json" in error
    assert "model (5): ['cat', 'dog', 'car', 'tree', 'cup']" in error and "only in the file: ['bicycle']" in error


@pytest.mark.slow  # two fresh interpreters importing torch: ~20 s on 2 CPU cores
def test_torchrun_two_gloo_ranks_write_the_single_process_results(tmp_path: Path, tiny_coco) -> None:
    annotation_file, image_dir = tiny_coco
    common = ["eval", "--config", str(TINY), "--annotations", str(annotation_file), "--images", str(image_dir),
              "--device", "cpu", "--workers", "0"]
    assert main([*common, "--output", str(tmp_path / "single")]) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), "-m", "codetr", *common, "--output", str(tmp_path / "distributed")],
        env=environment, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    single, distributed = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("single", "distributed"))
    assert distributed["bbox"] == single["bbox"] and distributed["per_class"] == single["per_class"]
    assert distributed["images"] == 5
    assert (tmp_path / "distributed" / "results.json").read_text() == (tmp_path / "single" / "results.json").read_text()
    assert completed.stdout.count("class AP") == 1  # rank 0 alone prints


def test_device_is_checked_like_every_command(capsys) -> None:
    """The one --device check of codetr.cli.common, before any file is looked at."""
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--config", str(TINY), "--annotations", "x.json", "--images", "y", "--device", "gpu0"])
    assert exit_.value.code == 2 and "argument --device: 'gpu0' is not a device (e.g. cpu, cuda, cuda:1)" in capsys.readouterr().err


def test_a_comparison_with_nothing_matched_says_so() -> None:
    from codetr.cli.eval import format_comparison

    nothing = {"delta_AP": 0.0, "max_score_difference": None, "max_box_difference": None, "matched": 0, "unmatched": 80}
    some = {"delta_AP": -0.001, "max_score_difference": 0.0123, "max_box_difference": 1.5, "matched": 78, "unmatched": 2}
    text = format_comparison({"reference": "eager", "top_detections": 10, "models": {"a.onnx": nothing, "b.pt2": some}})
    assert "a.onnx: ΔAP +0.0000, matched 0 of 80; the models' detections disagree" in text
    assert "b.pt2: ΔAP -0.0010, matched 78 of 80; max |Δscore| 1.23e-02, max |Δbox| 1.500 px over them" in text


def test_a_model_padding_unlike_the_reference_gets_a_note() -> None:
    from codetr.cli.eval import preprocessing_note
    from codetr.config import PreprocessConfig

    eager = PreprocessConfig(scale=(96, 64), size_divisor=32)
    static_export = dataclasses.replace(eager, pad_size=(64, 96))
    note = preprocessing_note("model.onnx", static_export, "eager", eager)
    assert note is not None and "model.onnx" in note and "pad_size (64, 96) vs None" in note and "ΔAP" in note
    assert preprocessing_note("model.pt2", eager, "eager", eager) is None
