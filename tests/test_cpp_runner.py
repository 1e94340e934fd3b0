"""The C++ runner (cpp/, codetr_infer): built with CMake against the installed libtorch, run on
an AOTInductor package of the tiny config, and checked against the same package run from Python
with codetr's own image reader (Pillow), pre-processing and post-processing; and on packages with
in-graph post-processing (codetr export --postprocess threshold|nms: data-dependent outputs),
checked against codetr's Python predictor on the same package.

The CMake build and the packages take about 5 minutes on 2 CPU cores. The tests skip, saying so,
when nlohmann_json is not found (scripts/install.sh fetches it; scripts/fetch_cpp_deps.sh). With
CODETR_INFER set to a codetr_infer built beforehand (scripts/gpu_cpp_runner.sh), the tests use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchvision.ops import batched_nms

from codetr.cli import main
from codetr.config import NmsConfig, PreprocessConfig, load_config
from codetr.contract.artifacts import ARTIFACTS, Artifact
from codetr.contract.metadata import METADATA_FORMAT, METADATA_NAME, write_metadata
from codetr.data.images import read_image
from codetr.export.options import ExportOptions
from codetr.export.program import export_program, prepare_model
from codetr.models import Detections, build_model
from codetr.postprocess import coco_results, postprocess
from codetr.preprocess import make_batch
from codetr.runtime.predictor import Predictor
from codetr_build.cpp_runner import ROOT, build_cpp_runner, find_nlohmann_json

BATCH_SIZE = 2
HEIGHT, WIDTH = 64, 96  # the static export size; the tiny config resizes into (96, 64)
# file name -> (height, width). Resized: 64x96 exactly; 64x80, padded to 96 by size_divisor;
# 64x64, padded to 64 by size_divisor and then up to the static 96. Three images in batches of
# two: the last batch is filled. The numeric stem is the COCO image id.
IMAGES = {"000000000042.png": (100, 150), "b_wide.png": (80, 100), "c_square.ppm": (60, 60)}
# Random-weight boxes rarely overlap (same-label IoU up to ~0.2) and score 0.65-0.8: the
# thresholds below make (soft-)NMS and the score threshold remove and decay some detections.
VARIANTS = {
    # the tiny config as it is: pad with 0, transformer masks the padding, no NMS
    "config": {},
    "soft_nms_mean_pad": {
        "preprocess": {"pad_value": "mean", "mask_padding": False},
        "nms": NmsConfig(kind="soft_nms", iou_threshold=0.05, min_score=0.05),
    },
    "nms_pad_size": {
        "preprocess": {"pad_value": 114.0, "pad_size": (HEIGHT, WIDTH), "mask_padding": False},
        "nms": NmsConfig(kind="nms", iou_threshold=0.05),
        "score_threshold": 0.7,
    },
}

# In-graph post-processing: the tiny config with soft-NMS at a low IoU threshold (so that hard NMS
# in the graph, and soft-NMS on the host after a threshold graph, change the result) and a score
# threshold that keeps about half of the random-weight detections.
IN_GRAPH_IOU_THRESHOLD = 0.05
IN_GRAPH_SCORE_THRESHOLD = 0.7


@pytest.fixture(scope="module")
def codetr_infer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("CODETR_INFER"):
        return Path(os.environ["CODETR_INFER"])
    if find_nlohmann_json() is None:
        pytest.skip("nlohmann_json not found (install nlohmann-json3-dev or run scripts/fetch_cpp_deps.sh)")
    return build_cpp_runner(tmp_path_factory.mktemp("cpp_build"), cuda=torch.cuda.is_available())


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def package(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_aoti.pt2 of the tiny config (random weights, float32, batch 2, static 64x96) on the
    device, made with torch._inductor.aoti_compile_and_package."""
    config = load_config(ROOT / "codetr" / "configs" / "tiny.toml")
    options = ExportOptions(
        dtype=torch.float32, height=HEIGHT, width=WIDTH, batch_size=BATCH_SIZE,
        artifacts=(Artifact.EXPORTED_PROGRAM,), device=torch.device(request.param),
    )
    program = export_program(prepare_model(build_model(config, seed=0), options), options, config.preprocess.size_divisor)
    path = tmp_path_factory.mktemp(f"aoti_{request.param}") / ARTIFACTS[Artifact.AOTI].file_name
    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smooth random RGB images (upsampled noise) as PNG and binary PPM files."""
    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for name, (height, width) in IMAGES.items():
        coarse = Image.fromarray(generator.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        coarse.resize((width, height), Image.BICUBIC).save(folder / name)
    return folder


def metadata_document(variant: dict) -> tuple[dict, PreprocessConfig, NmsConfig, float]:
    """A codetr-export/2 metadata.json for the package, with the variant's pre/post-processing."""
    config = load_config(ROOT / "codetr" / "configs" / "tiny.toml")
    preprocess = dataclasses.replace(config.preprocess, **variant.get("preprocess", {}))
    nms = variant.get("nms", config.test.nms)
    score_threshold = variant.get("score_threshold", config.test.score_threshold)
    document = {
        "format": METADATA_FORMAT,
        "model": {
            "config": config.name, "config_file": str(ROOT / "codetr" / "configs" / "tiny.toml"), "checkpoint": None,
            "random_weights": True, "num_classes": config.model.num_classes,
            "class_names": list(config.class_names), "category_ids": list(config.coco_category_ids),
        },
        "input": {
            "batch_size": BATCH_SIZE,
            "height": {"min": HEIGHT, "opt": HEIGHT, "max": HEIGHT},
            "width": {"min": WIDTH, "opt": WIDTH, "max": WIDTH},
            "multiple": config.preprocess.size_divisor, "dtype": "float32",
        },
        "preprocessing": dataclasses.asdict(preprocess),
        "postprocessing": {"score_threshold": score_threshold, "nms": dataclasses.asdict(nms)},
        "precision": {"dtype": "float32", "allow_tf32": False},
        "msda": "plugin",
        "files": {Artifact.AOTI.value: ARTIFACTS[Artifact.AOTI].file_name},
        "skipped": {},
        "versions": {"torch": torch.__version__},
    }
    return document, preprocess, nms, score_threshold


def python_results(package: Path, folder: Path, preprocess: PreprocessConfig, nms: NmsConfig, threshold: float) -> list[dict]:
    """COCO results of the package run from Python on the images, as codetr_infer should write them."""
    runner = torch._inductor.aoti_load_package(str(package))
    device = "cuda" if "cuda" in package.parent.name else "cpu"
    category_ids = load_config(ROOT / "codetr" / "configs" / "tiny.toml").coco_category_ids
    paths = sorted(folder.iterdir())
    results = []
    for start in range(0, len(paths), BATCH_SIZE):
        chunk = [read_image(path) for path in paths[start : start + BATCH_SIZE]]
        count = len(chunk)
        chunk += [chunk[-1]] * (BATCH_SIZE - count)
        batch = make_batch(chunk, preprocess)
        # Pad up to the static export size, as codetr_infer does.
        canvas = torch.tensor(preprocess.pad_colour).view(1, 3, 1, 1).repeat(BATCH_SIZE, 1, HEIGHT, WIDTH)
        canvas[:, :, : batch.images.shape[2], : batch.images.shape[3]] = batch.images
        sizes = batch.image_sizes if preprocess.mask_padding else torch.tensor([[HEIGHT, WIDTH]] * BATCH_SIZE)
        with torch.no_grad():
            outputs = Detections(*runner(canvas.to(device), sizes.to(device)))
        for index, detections in enumerate(postprocess(outputs, batch, nms, threshold)[:count]):
            path = paths[start + index]
            image_id = int(path.stem) if path.stem.isdigit() else start + index + 1
            results.extend(coco_results(image_id, detections, category_ids))
    return results


@pytest.mark.parametrize("variant", VARIANTS)
def test_cpp_runner_matches_python(codetr_infer: Path, package: Path, images: Path, tmp_path: Path, variant: str) -> None:
    document, preprocess, nms, threshold = metadata_document(VARIANTS[variant])
    write_metadata(document, package.parent / METADATA_NAME)
    output = tmp_path / "out"
    run = subprocess.run([str(codetr_infer), str(package), str(images), "--output", str(output)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    expected = python_results(package, images, preprocess, nms, threshold)
    found = json.loads((output / "results.json").read_text())

    assert [entry["image_id"] for entry in found] == [entry["image_id"] for entry in expected]
    assert [entry["category_id"] for entry in found] == [entry["category_id"] for entry in expected]
    boxes = np.array([entry["bbox"] for entry in found])
    scores = np.array([entry["score"] for entry in found])
    box_error = np.abs(boxes - np.array([entry["bbox"] for entry in expected])).max()
    score_error = np.abs(scores - np.array([entry["score"] for entry in expected])).max()
    device = "cuda" if "cuda" in package.parent.name else "cpu"
    print(f"\ncodetr_infer vs Python [{device}, {variant}]: {len(found)} detections each, "
          f"max |bbox diff| {box_error:.2g} px, max |score diff| {score_error:.2g}; {run.stdout.splitlines()[0]}")
    assert box_error <= 2e-3 and score_error <= 2e-5
    assert np.all(scores > threshold) and np.all(boxes[:, 2:] >= 0)
    if nms.kind != "none":  # the variants' thresholds are chosen so that (soft-)NMS changes the result
        without_nms = python_results(package, images, preprocess, NmsConfig(), threshold)
        assert [entry["score"] for entry in without_nms] != [entry["score"] for entry in found]

    entries = json.loads((output / "images.json").read_text())
    assert entries == [
        {"id": 42, "file_name": "000000000042.png", "height": 100, "width": 150},
        {"id": 2, "file_name": "b_wide.png", "height": 80, "width": 100},
        {"id": 3, "file_name": "c_square.ppm", "height": 60, "width": 60},
    ]
    for name, (height, width) in IMAGES.items():
        drawn = np.asarray(Image.open(output / (name + ".png")))
        assert drawn.shape == (height, width, 3)
        image_id = next(entry["id"] for entry in entries if entry["file_name"] == name)
        box = next((entry["bbox"] for entry in found if entry["image_id"] == image_id), None)
        if box is not None:  # the top-left corner of a drawn box is red
            x, y = min(int(box[0]), width - 1), min(int(box[1]), height - 1)
            assert tuple(drawn[y, x]) == (255, 0, 0)


def test_cpp_runner_errors_name_the_problem(codetr_infer: Path, images: Path, tmp_path: Path) -> None:
    model = tmp_path / ARTIFACTS[Artifact.AOTI].file_name
    model.write_bytes(b"not a package")
    run = subprocess.run([str(codetr_infer), str(model), str(images), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and f"no export metadata at {tmp_path / METADATA_NAME}" in run.stderr

    (tmp_path / METADATA_NAME).write_text(json.dumps({"format": "codetr-export/1"}))
    run = subprocess.run([str(codetr_infer), str(model), str(images), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "this runner reads \"codetr-export/2\"" in run.stderr

    run = subprocess.run([str(codetr_infer), str(model), str(images)], capture_output=True, text=True)
    assert run.returncode == 2 and "--output DIR is required" in run.stderr

    document = metadata_document(VARIANTS["config"])[0]
    document["postprocess"] = {"mode": "nms", "score_threshold": 0.5, "iou_threshold": 0.5}
    (tmp_path / METADATA_NAME).write_text(json.dumps(document))
    run = subprocess.run([str(codetr_infer), str(model), str(images), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "postprocess.mode nms needs input.batch_size 1" in run.stderr


def test_cpp_runner_output_folder_and_unreadable_images(codetr_infer: Path, package: Path, images: Path,
                                                         tmp_path: Path) -> None:
    """As `codetr infer`: --output must be new or empty (or --overwrite), is never a folder holding
    the inputs, and is swapped in whole; an unreadable image is named and skipped (status 1); a
    package whose size differs from what metadata.json recorded is refused."""
    document = metadata_document(VARIANTS["config"])[0]
    write_metadata(document, package.parent / METADATA_NAME)

    def infer(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(codetr_infer), str(package), *arguments, "--no-draw"],
                              capture_output=True, text=True, timeout=300)

    output = tmp_path / "out"
    output.mkdir()
    (output / "earlier.txt").write_text("kept")
    run = infer(str(images), "--output", str(output))
    assert run.returncode == 2 and f"--output {output} is not empty (holds earlier.txt)" in run.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"] and (output / "earlier.txt").exists()

    run = infer(str(images), "--output", str(images), "--overwrite")
    assert run.returncode == 2 and f"--output {images} holds the input {images}" in run.stderr
    assert sorted(path.name for path in images.iterdir()) == sorted(IMAGES)

    with_broken = tmp_path / "with_broken"
    with_broken.mkdir()
    for name in IMAGES:
        (with_broken / name).write_bytes((images / name).read_bytes())
    (with_broken / "broken.png").write_bytes(b"\x89PNG not really")
    run = infer(str(with_broken), "--output", str(output), "--overwrite")
    assert run.returncode == 1 and f"cannot decode image {with_broken / 'broken.png'}" in run.stderr
    assert sorted(path.name for path in output.iterdir()) == ["images.json", "results.json"]
    assert [entry["file_name"] for entry in json.loads((output / "images.json").read_text())] == sorted(IMAGES)

    for threshold in ("nan", "1.5", "0.5x"):
        run = infer(str(images), "--output", str(tmp_path / "unused"), "--score-threshold", threshold)
        assert run.returncode == 2 and "--score-threshold must be" in run.stderr and threshold in run.stderr

    document["stages"] = [{"stage": "aoti package", "seconds": 1.0, "file": package.name,
                           "bytes": package.stat().st_size + 1}]
    write_metadata(document, package.parent / METADATA_NAME)
    run = infer(str(images), "--output", str(tmp_path / "unused"))
    assert run.returncode == 2 and f"{package} has {package.stat().st_size} bytes but" in run.stderr
    assert not (tmp_path / "unused").exists()


@pytest.fixture(scope="module")
def soft_nms_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = re.sub(r'\[test\.nms\]\nkind = "none"',
                  f'[test.nms]\nkind = "soft_nms"\niou_threshold = {IN_GRAPH_IOU_THRESHOLD}',
                  (ROOT / "codetr" / "configs" / "tiny.toml").read_text())
    assert "soft_nms" in text
    path = tmp_path_factory.mktemp("config") / "tiny_soft_nms.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module", params=["nms_cpu", "threshold_cpu", pytest.param("nms_cuda", marks=pytest.mark.cuda)])
def in_graph_package(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                     soft_nms_config: Path) -> Path:
    """model_aoti.pt2 and metadata.json of ``codetr export --postprocess MODE`` on the device (batch 1,
    static 64x96, random weights): outputs [1, N, ...] with a data-dependent N."""
    mode, device = request.param.split("_")
    folder = tmp_path_factory.mktemp(f"aoti_{request.param}")
    arguments = ["export", "--config", str(soft_nms_config), "--output", str(folder), "--dtype", "float32",
                 "--height", str(HEIGHT), "--width", str(WIDTH), "--msda", "plugin", "--device", device,
                 "--artifacts", "aoti", "--postprocess", mode,
                 "--score-threshold", str(IN_GRAPH_SCORE_THRESHOLD)]
    assert main(arguments) == 0
    return folder / ARTIFACTS[Artifact.AOTI].file_name


def test_cpp_runner_takes_in_graph_postprocessing(codetr_infer: Path, in_graph_package: Path, images: Path,
                                                  tmp_path: Path) -> None:
    """The graph's detections, post-processed on the host exactly as the Python predictor does
    (after in-graph nms no host NMS; after a threshold graph the config's soft-NMS)."""
    output = tmp_path / "out"
    run = subprocess.run([str(codetr_infer), str(in_graph_package), str(images), "--output", str(output), "--no-draw"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    mode = json.loads((in_graph_package.parent / METADATA_NAME).read_text())["postprocess"]["mode"]
    host_nms = "none" if mode == "nms" else "soft_nms"
    assert f"post-processing in the graph: {mode}; on the host: NMS {host_nms}, score > {IN_GRAPH_SCORE_THRESHOLD}" in run.stdout

    predictor = Predictor.from_artifact(in_graph_package)
    paths = sorted(images.iterdir())
    expected = []
    for position, (path, detections) in enumerate(zip(paths, predictor([read_image(path) for path in paths])), 1):
        expected += coco_results(int(path.stem) if path.stem.isdigit() else position, detections, predictor.category_ids)
    found = json.loads((output / "results.json").read_text())

    assert 0 < len(found) < 20 * len(paths)  # the graph dropped some of the max_per_img detections
    assert [(entry["image_id"], entry["category_id"]) for entry in found] == \
        [(entry["image_id"], entry["category_id"]) for entry in expected]
    boxes = np.array([entry["bbox"] for entry in found])
    scores = np.array([entry["score"] for entry in found])
    box_error = np.abs(boxes - np.array([entry["bbox"] for entry in expected])).max()
    score_error = np.abs(scores - np.array([entry["score"] for entry in expected])).max()
    print(f"\ncodetr_infer vs Python predictor [in-graph {mode}, {run.stdout.split('model on ')[1].split(',')[0]}]: "
          f"{len(found)} detections each, "
          f"max |bbox diff| {box_error:.2g} px, max |score diff| {score_error:.2g}")
    assert box_error <= 2e-3 and score_error <= 2e-5
    assert np.all(scores > IN_GRAPH_SCORE_THRESHOLD)
    if mode == "threshold":  # the host's soft-NMS ran after the graph: it removes detections here
        predictor.test = dataclasses.replace(predictor.test, nms=NmsConfig())
        assert len(found) < sum(len(detections.scores) for detections in predictor([read_image(path) for path in paths]))
    if mode == "nms":  # class-wise hard NMS ran in the graph: torchvision's keeps every box of an image
        for image_id in {entry["image_id"] for entry in found}:
            mine = [entry for entry in found if entry["image_id"] == image_id]
            xyxy = torch.tensor([entry["bbox"] for entry in mine], dtype=torch.float64)
            xyxy[:, 2:] += xyxy[:, :2]
            keep = batched_nms(xyxy, torch.tensor([entry["score"] for entry in mine], dtype=torch.float64),
                               torch.tensor([entry["category_id"] for entry in mine]), IN_GRAPH_IOU_THRESHOLD)
            assert len(keep) == len(mine)
