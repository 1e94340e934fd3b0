"""The AOTInductor package: exported by the pipeline, identified and run by codetr.runtime.

Reference: the eager tiny model (``CoDINO.forward``, float32, CPU) on the same inputs. The
package computes the same graph with Inductor's C++ kernels, which fuse and reorder float32
arithmetic: scores agree to 1e-5 and boxes to 1e-3 pixels (of a 64x96 input) at ranks whose
score is clearly apart from its neighbours' (near-ties may swap).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from codetr.config import load_config
from codetr.contract.artifacts import ARTIFACTS, Artifact, identify_artifact
from codetr.contract.metadata import read_metadata
from codetr.models import Detections, build_model
from codetr.models.common import FFN
from codetr.runtime import load_runtime
from codetr.runtime.aoti import AOTIRuntime

CONFIGS = Path(__file__).resolve().parents[1] / "codetr" / "configs"
HEIGHT, WIDTH = 64, 96  # the size of the conftest's tiny_aoti_export


def make_inputs(valid: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """images [1, 3, 64, 96] float32 0-255 and image_sizes [1, 2] = ``valid`` (h, w)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (1, 3, HEIGHT, WIDTH), generator=generator).float()
    return images, torch.tensor([valid])


def eager_detections(images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
    model = build_model(load_config(CONFIGS / "tiny.toml"), seed=0).eval()
    with torch.no_grad():
        return model(images, image_sizes)


def assert_detections_close(actual: Detections, expected: Detections, score_atol: float, box_atol: float) -> None:
    assert actual.boxes.dtype == torch.float32 and actual.scores.dtype == torch.float32
    assert actual.labels.dtype == torch.int64 and actual.boxes.shape == expected.boxes.shape
    torch.testing.assert_close(actual.scores.cpu(), expected.scores, atol=score_atol, rtol=0)
    gaps = expected.scores.diff(dim=1).abs()
    clear = torch.ones_like(expected.scores, dtype=torch.bool)
    clear[:, 1:] &= gaps > 2 * score_atol
    clear[:, :-1] &= gaps > 2 * score_atol
    assert clear.float().mean() > 0.5, "too many near-ties for a meaningful comparison"
    assert torch.equal(actual.labels.cpu()[clear], expected.labels[clear])
    torch.testing.assert_close(actual.boxes.cpu()[clear], expected.boxes[clear], atol=box_atol, rtol=0)


def test_export_writes_the_package_and_lists_it(tiny_aoti_export: Path) -> None:
    package = tiny_aoti_export / ARTIFACTS[Artifact.AOTI].file_name
    metadata = read_metadata(tiny_aoti_export / "metadata.json")
    assert metadata.files[Artifact.AOTI.value] == package.name
    stages = {stage["stage"]: stage for stage in metadata.document["stages"]}
    assert stages["aoti package"]["file"] == package.name and stages["aoti package"]["bytes"] == package.stat().st_size
    assert stages["aoti package"]["sha256"] == hashlib.sha256(package.read_bytes()).hexdigest()
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
    # named like a direct aoti_compile_and_package call would name it, not after a temporary file
    assert all(name.startswith("model_aoti/") for name in names)
    assert any(name.endswith(".so") for name in names)
    assert sorted(path.name for path in tiny_aoti_export.iterdir()) == ["metadata.json", "model.onnx", "model_aoti.pt2"]


def test_the_package_computes_ffn_relus_in_the_gemm(tiny_aoti_export: Path) -> None:
    """LinearReLUEpilogue ran: each transformer FFN's expand layer is one _addmm_activation call."""
    model = build_model(load_config(CONFIGS / "tiny.toml"), seed=0)
    ffns = [module for module in model.modules() if isinstance(module, FFN) and isinstance(module.layers[0][1], nn.ReLU)]
    with zipfile.ZipFile(tiny_aoti_export / "model_aoti.pt2") as archive:
        (wrapper,) = [name for name in archive.namelist() if name.endswith(".wrapper.cpp")]
        calls = archive.read(wrapper).decode().count("_addmm_activation(")
    assert len(ffns) >= 2 and calls >= len(ffns)


def test_the_package_fuses_the_encoders_msda_inputs(tiny_aoti_export: Path) -> None:
    """The package compiles the program traced with the encoder's MSDA layers calling
    msda_from_offsets (the decoder's box reference points keep msda), while the ONNX model of
    the same export holds the plain op only."""
    transformer = load_config(CONFIGS / "tiny.toml").model.transformer
    with zipfile.ZipFile(tiny_aoti_export / "model_aoti.pt2") as archive:
        # The package's calls into op libraries (its proxy executor's node list).
        (calls,) = [name for name in archive.namelist() if name.endswith(".wrapper.json")]
        targets = [node["node"]["target"] for node in json.loads(archive.read(calls))["nodes"]]
    assert targets.count("codetr::msda_from_offsets") == transformer.encoder_layers
    assert targets.count("codetr::msda") == transformer.decoder_layers
    described = json.loads((tiny_aoti_export / "metadata.json").read_text())["aoti"]["codetr_ops"]
    assert described == {"codetr::msda": transformer.decoder_layers, "codetr::msda_from_offsets": transformer.encoder_layers}
    onnx_model = onnx.load(tiny_aoti_export / "model.onnx", load_external_data=False)
    assert not any("from_offsets" in node.op_type for node in onnx_model.graph.node)


def test_linear_relu_epilogue_rewrites_only_addmms_that_feed_one_relu() -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    from codetr.export.aoti_package import LinearReLUEpilogue

    def graph(x, weight, bias):  # x [6, 4], weight [4, 8], bias [8]
        direct = torch.relu(torch.ops.aten.addmm(bias, x, weight))
        reshaped = torch.relu(torch.ops.aten.addmm(bias, x, weight).reshape(2, 3, 8))
        shared = torch.ops.aten.addmm(bias, x, weight)  # its pre-activation values are used too
        kept = torch.relu(shared) + shared.sum()
        no_bias = torch.relu(torch.ops.aten.mm(x, weight))
        return direct, reshaped, kept, no_bias

    x, weight, bias = torch.randn(6, 4), torch.randn(4, 8), torch.randn(8)
    module = make_fx(graph)(x, weight, bias)
    LinearReLUEpilogue()(module.graph)
    module.recompile()
    targets = [node.target for node in module.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.aten._addmm_activation.default) == 2
    assert targets.count(torch.ops.aten.relu.default) == 2  # kept and no_bias
    reference = torch.relu(x.double() @ weight.double() + bias.double())
    direct, reshaped, kept, no_bias = module(x, weight, bias)
    torch.testing.assert_close(direct.double(), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(reshaped.double(), reference.reshape(2, 3, 8), atol=1e-5, rtol=0)
    pre_activation = x.double() @ weight.double() + bias.double()
    torch.testing.assert_close(kept.double(), torch.relu(pre_activation) + pre_activation.sum(), atol=1e-4, rtol=0)
    torch.testing.assert_close(no_bias.double(), torch.relu(x.double() @ weight.double()), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("valid", "seed"), [((HEIGHT, WIDTH), 1), ((40, 70), 2)])
def test_package_matches_eager(tiny_aoti_export: Path, valid: tuple[int, int], seed: int) -> None:
    runtime = load_runtime(tiny_aoti_export / "model_aoti.pt2")
    assert isinstance(runtime, AOTIRuntime) and runtime.device == torch.device("cpu")
    images, image_sizes = make_inputs(valid, seed)
    assert_detections_close(runtime(images, image_sizes), eager_detections(images, image_sizes), 1e-5, 1e-3)


def test_package_is_identified_by_content_without_metadata(tiny_aoti_export: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renamed.pt2"
    shutil.copyfile(tiny_aoti_export / "model_aoti.pt2", copy)
    assert identify_artifact(copy) is Artifact.AOTI
    runtime = load_runtime(copy)
    assert isinstance(runtime, AOTIRuntime) and runtime.metadata is None
    images, image_sizes = make_inputs((HEIGHT, WIDTH), 3)
    assert_detections_close(runtime(images, image_sizes), eager_detections(images, image_sizes), 1e-5, 1e-3)


def test_metadata_names_the_package_whatever_its_file_name(tiny_aoti_export: Path, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    shutil.copytree(tiny_aoti_export, folder)
    (folder / "model_aoti.pt2").rename(folder / "detector.pt2")
    document = json.loads((folder / "metadata.json").read_text())
    document["files"]["aoti"] = "detector.pt2"
    (folder / "metadata.json").write_text(json.dumps(document))
    runtime = load_runtime(folder / "detector.pt2")
    assert isinstance(runtime, AOTIRuntime) and runtime.metadata is not None


def test_the_runtime_does_not_import_the_exporter(tiny_aoti_export: Path) -> None:
    script = (
        "import sys, torch\n"
        "from codetr.runtime import load_runtime\n"
        f"runtime = load_runtime({str(tiny_aoti_export / 'model_aoti.pt2')!r})\n"
        f"detections = runtime(torch.zeros(1, 3, {HEIGHT}, {WIDTH}), torch.tensor([[{HEIGHT}, {WIDTH}]]))\n"
        "print(tuple(detections.boxes.shape), sorted(name for name in sys.modules if name.startswith('codetr.export')))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split("\n")[0] == "(1, 20, 4) []"  # max_per_img 20; no codetr.export module


def test_infer_on_a_package_prints_no_library_noise(tiny_aoti_export: Path, tmp_path: Path) -> None:
    """torch's "No CUDA runtime is found" (logged when an AOTInductor load imports
    torch.utils.cpp_extension on a machine without a GPU) stays behind --verbose."""
    from PIL import Image

    Image.new("RGB", (WIDTH, HEIGHT), (90, 120, 150)).save(tmp_path / "photo.png")
    completed = subprocess.run(
        [sys.executable, "-m", "codetr", "infer", "--model", str(tiny_aoti_export / "model_aoti.pt2"),
         "--input", str(tmp_path / "photo.png"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "No CUDA runtime" not in completed.stderr and "Warning" not in completed.stderr


@pytest.mark.parametrize(
    ("images", "image_sizes", "message"),
    [
        (torch.zeros(2, 3, HEIGHT, WIDTH), torch.tensor([[HEIGHT, WIDTH]] * 2), "exported for batch size 1"),
        (torch.zeros(1, 3, HEIGHT + 32, WIDTH), torch.tensor([[HEIGHT, WIDTH]]), r"height 96 is outside"),
        (torch.zeros(3, HEIGHT, WIDTH), torch.tensor([[HEIGHT, WIDTH]]), r"images must be \[B, 3, H, W\]"),
    ],
)
def test_inputs_the_package_cannot_take_are_refused(
    tiny_aoti_export: Path, images: torch.Tensor, image_sizes: torch.Tensor, message: str
) -> None:
    runtime = load_runtime(tiny_aoti_export / "model_aoti.pt2")
    with pytest.raises(ValueError, match=message):
        runtime(images, image_sizes)


def test_a_cpu_package_refuses_cuda_graphs(tiny_aoti_export: Path) -> None:
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA package"):
        AOTIRuntime(tiny_aoti_export / "model_aoti.pt2", cuda_graph=True)


def test_a_package_runs_only_on_its_device_type(tiny_aoti_export: Path, tmp_path: Path) -> None:
    # the tiny package with its Inductor metadata saying it was compiled for CUDA
    cuda_package = tmp_path / "cuda_aoti.pt2"
    with zipfile.ZipFile(tiny_aoti_export / "model_aoti.pt2") as source, zipfile.ZipFile(cuda_package, "w") as copy:
        for name in source.namelist():
            data = source.read(name)
            copy.writestr(name, data.replace(b'"cpu"', b'"cuda"') if name.endswith("_metadata.json") else data)
    with pytest.raises(ValueError, match="was compiled for cuda and runs only there, not on cpu"):
        AOTIRuntime(cuda_package, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            AOTIRuntime(cuda_package)


def test_files_that_are_no_package_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no AOTInductor package at"):
        AOTIRuntime(tmp_path / "missing.pt2")
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="not a zip archive"):
        AOTIRuntime(truncated)
    program_like = tmp_path / "program.pt2"
    with zipfile.ZipFile(program_like, "w") as archive:
        archive.writestr("program/models/model.json", "{}")
    with pytest.raises(ValueError, match="no aotinductor metadata inside"):
        AOTIRuntime(program_like)


def test_compile_package_wants_a_pt2_path(tmp_path: Path) -> None:
    from codetr.export.aoti_package import compile_package

    with pytest.raises(ValueError, match=r"must end in \.pt2"):
        compile_package(None, tmp_path / "model.so")  # checked before anything is compiled


@pytest.mark.cuda
def test_cuda_graph_replay_matches_plain_runs(tmp_path: Path) -> None:
    """On a GPU: a float16 CUDA package run plainly and through a replayed CUDA graph gives
    identical results, for a second input too (the replay reads the new input, not stale buffers)."""
    from codetr.export import ExportOptions, export_model

    config = load_config(CONFIGS / "tiny.toml")
    options = ExportOptions(
        dtype=torch.float16, height=HEIGHT, width=WIDTH, artifacts=(Artifact.AOTI,), device=torch.device("cuda")
    )
    export_model(build_model(config, seed=0), config, options, tmp_path / "export")
    package = tmp_path / "export" / "model_aoti.pt2"
    plain, graphed = AOTIRuntime(package), load_runtime(package, cuda_graph=True)
    assert plain.device.type == "cuda" and graphed.cuda_graph
    for seed, valid in ((1, (HEIGHT, WIDTH)), (2, (40, 70)), (3, (HEIGHT, WIDTH))):
        images, image_sizes = make_inputs(valid, seed)
        expected, actual = plain(images.cuda(), image_sizes.cuda()), graphed(images.cuda(), image_sizes.cuda())
        for name in Detections._fields:
            assert torch.equal(getattr(actual, name), getattr(expected, name)), name
