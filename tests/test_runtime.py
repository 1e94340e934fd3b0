"""The common runtime interface: artifact dispatch, and the input checks every runtime runs first.

The checks are exercised on every runtime class: ExportedProgram and ONNX Runtime over small
stand-in models with the real I/O names, the eager model, and TensorRT / Torch-TensorRT (which
need a GPU to load) through an instance whose engine was never loaded: the check must refuse the
input before anything touches an engine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
import torch

from codetr.config import load_config
from codetr.contract.artifacts import Artifact
from codetr.contract.metadata import ExportMetadata, file_sha256, parse_metadata, write_metadata
from codetr.models import build_model
from codetr.runtime import load_runtime
from codetr.runtime.base import check_inputs, resolve_device
from codetr.runtime.eager import EagerRuntime
from codetr.runtime.exported_program import ExportedProgramRuntime
from codetr.runtime.loader import RUNTIMES
from codetr.runtime.onnxruntime import OnnxRuntime
from codetr.runtime.tensorrt import TensorRTRuntime
from codetr.runtime.torch_tensorrt import TorchTensorRTRuntime

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"


class StandIn(torch.nn.Module):
    """Takes (images, image_sizes), returns (boxes, scores, labels) shaped like Co-DINO's."""

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor):
        pooled = images.mean(dim=(2, 3))
        return pooled[:, None, :2].repeat(1, 5, 2), pooled[:, None, 0].expand(-1, 5), image_sizes[:, :1].expand(-1, 5)


def stand_in_onnx(path: Path) -> Path:
    """An ONNX file with the exported model's input and output names (standard ops only; labels
    are image_sizes)."""
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("ReduceMean", ["images"], ["boxes"], keepdims=0, axes=[1]),
            onnx.helper.make_node("ReduceMean", ["boxes"], ["scores"], keepdims=0, axes=[2]),
            onnx.helper.make_node("Identity", ["image_sizes"], ["labels"]),
        ],
        "stand_in",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"]),
         onnx.helper.make_tensor_value_info("image_sizes", onnx.TensorProto.INT64, ["batch", 2])],
        [onnx.helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, None),
         onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, None),
         onnx.helper.make_tensor_value_info("labels", onnx.TensorProto.INT64, None)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def unloaded(runtime_class: type, metadata: ExportMetadata | None):
    """A TensorRT-family runtime without its engine: only the input check can run."""
    runtime = runtime_class.__new__(runtime_class)
    runtime.metadata = metadata
    return runtime


RUNTIME_KINDS = ["exported_program", "onnxruntime", "eager", "tensorrt", "torch_tensorrt"]


@pytest.fixture
def make_runtime(tmp_path: Path):
    def make(kind: str, metadata: ExportMetadata | None):
        if kind == "exported_program":
            program = torch.export.export(
                StandIn(), (torch.zeros(1, 3, 64, 64), torch.ones(1, 2, dtype=torch.int64)),
                dynamic_shapes=({2: torch.export.Dim("h", min=2), 3: torch.export.Dim("w", min=2)}, None),
            )
            return ExportedProgramRuntime(program, metadata)
        if kind == "onnxruntime":
            return OnnxRuntime(stand_in_onnx(tmp_path / "model.onnx"), metadata)
        if kind == "eager":
            assert metadata is None, "the eager model has no export metadata"
            return EagerRuntime(build_model(load_config(TINY)), device="cpu")
        return unloaded({"tensorrt": TensorRTRuntime, "torch_tensorrt": TorchTensorRTRuntime}[kind], metadata)

    return make


# ---- loading ------------------------------------------------------------------------------------

def test_load_runtime_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model file at .*model.pt2"):
        load_runtime(tmp_path / "model.pt2")


def test_load_runtime_rejects_unknown_file_types(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"unknown model file type '.tflite'; accepted: model.pt2 .*model.onnx"):
        load_runtime(path)


def test_every_artifact_of_the_table_has_a_runtime() -> None:
    """One table drives export and loading: an artifact export can write must be loadable."""
    assert set(RUNTIMES) == set(Artifact)
    for entry in RUNTIMES.values():
        module_name, class_name = entry.split(":")
        assert importlib.util.find_spec(module_name) is not None, entry


def test_load_runtime_hands_the_metadata_beside_the_file_to_the_runtime(tmp_path: Path, metadata_document) -> None:
    write_metadata(metadata_document(**{"input.batch_size": 2}), tmp_path / "metadata.json")
    runtime = load_runtime(stand_in_onnx(tmp_path / "model.onnx"))
    assert isinstance(runtime, OnnxRuntime) and runtime.metadata.batch_size == 2
    with pytest.raises(ValueError, match="exported for batch size 2, got a batch of 1"):
        runtime(torch.zeros(1, 3, 64, 64), torch.tensor([[64, 64]]))


def test_outdated_metadata_is_refused_with_the_fix(tmp_path: Path, metadata_document) -> None:
    (tmp_path / "metadata.json").write_text('{"format": "codetr-export/1"}')
    with pytest.raises(ValueError, match="format 'codetr-export/1', this codetr reads 'codetr-export/2'; re-export"):
        load_runtime(stand_in_onnx(tmp_path / "model.onnx"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("kind", ["exported_program", "onnxruntime", "eager"])
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ValueError, match="device cuda: no CUDA GPU is visible to torch"):
        if kind == "onnxruntime":
            OnnxRuntime(stand_in_onnx(tmp_path / "model.onnx"), device="cuda")
        elif kind == "eager":
            EagerRuntime(build_model(load_config(TINY)), device="cuda")
        else:
            ExportedProgramRuntime(torch.export.export(StandIn(), (torch.zeros(1, 3, 8, 8), torch.ones(1, 2, dtype=torch.int64))), device="cuda")


def test_device_names_are_checked() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="'gpu0' is not a device name"):
        resolve_device("gpu0")


# ---- input checks (issue 8 fault 6, issue 9 item 3) -------------------------------------------

@pytest.mark.parametrize(
    ("images", "image_sizes", "message"),
    [
        (torch.zeros(3, 64, 64), torch.ones(1, 2), r"images must be \[B, 3, H, W\], got \[3, 64, 64\]"),
        (torch.zeros(1, 1, 64, 64), torch.ones(1, 2), r"images must be \[B, 3, H, W\]"),
        (torch.zeros(2, 3, 64, 64), torch.ones(1, 2, dtype=torch.int64), "image_sizes has 1 rows for a batch of 2 images"),
        (torch.zeros(1, 3, 64, 64), torch.tensor([[64.0, 64.0]]), r"image_sizes must be \[B, 2\] integer"),
        (torch.zeros(1, 3, 64, 96), torch.tensor([[65, 96]]), r"image_sizes must lie in \[1, 64\] x \[1, 96\] .* got \[\[65, 96\]\]"),
        (torch.zeros(2, 3, 64, 96), torch.tensor([[64, 96], [64, 97]]), r"got \[\[64, 97\]\] for image\(s\) \[1\]"),
        (torch.zeros(1, 3, 64, 96), torch.tensor([[0, 96]]), r"image_sizes must lie in .* got \[\[0, 96\]\]"),
    ],
)
def test_check_inputs(images: torch.Tensor, image_sizes: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_inputs(images, image_sizes)


@pytest.mark.parametrize("kind", RUNTIME_KINDS)
def test_every_runtime_refuses_image_sizes_outside_the_tensor(make_runtime, kind: str) -> None:
    runtime = make_runtime(kind, None)
    with pytest.raises(ValueError, match=r"image_sizes must lie in \[1, 64\] x \[1, 64\] .* got \[\[96, 64\]\]"):
        runtime(torch.zeros(1, 3, 64, 64), torch.tensor([[96, 64]]))


@pytest.mark.parametrize("kind", ["exported_program", "onnxruntime", "tensorrt", "torch_tensorrt"])
@pytest.mark.parametrize(
    ("changes", "shape", "message"),
    [
        ({"input.batch_size": 2}, (1, 3, 64, 64), r"exported for batch size 2, got a batch of 1; run 2 image\(s\) at a time"),
        ({}, (1, 3, 64, 96), r"input width 96 is outside what this model was exported for \(exactly 64 pixels\)"),
        ({"input.height": {"min": 32, "opt": 64, "max": 128}}, (1, 3, 160, 64), r"input height 160 .*\(32 to 128 pixels\)"),
        ({"input.height": {"min": 32, "opt": 64, "max": 128}}, (1, 3, 80, 64), "input height 80 must be a multiple of 32"),
    ],
)
def test_every_exported_runtime_checks_inputs_against_its_metadata(
    make_runtime, metadata_document, kind: str, changes: dict, shape: tuple, message: str
) -> None:
    runtime = make_runtime(kind, parse_metadata(metadata_document(**changes)))
    image_sizes = torch.tensor([[shape[2], shape[3]]] * shape[0])
    with pytest.raises(ValueError, match=message):
        runtime(torch.zeros(shape), image_sizes)


@pytest.mark.parametrize("kind", ["exported_program", "onnxruntime"])
def test_inputs_the_metadata_allows_run(make_runtime, metadata_document, kind: str) -> None:
    runtime = make_runtime(kind, parse_metadata(metadata_document(**{"input.height": {"min": 32, "opt": 64, "max": 128}})))
    images = torch.arange(3 * 96 * 64, dtype=torch.float32).reshape(1, 3, 96, 64)
    detections = runtime(images, torch.tensor([[96, 64]]))
    assert detections.labels.reshape(-1)[0] == 96  # the stand-ins return image_sizes as labels


def test_runtimes_do_not_load_the_exporter() -> None:
    """A deployed runtime must not load the exporter (layer rule: export and runtime are siblings)."""
    import subprocess
    import sys

    modules = ["codetr.runtime.predictor", "codetr.runtime.exported_program", "codetr.runtime.onnxruntime",
               "codetr.runtime.tensorrt", "codetr.runtime.torch_tensorrt", "codetr.cli.infer"]
    script = f"import sys\nfor name in {modules!r}: __import__(name)\nprint(sorted(m for m in sys.modules if m.startswith('codetr.export')))"
    child = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "[]"


# ---- damaged or mismatched artifacts --------------------------------------------------------------

def truncated(path: Path) -> Path:
    """``path`` cut to half its size, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def stand_in_program(path: Path) -> Path:
    program = torch.export.export(StandIn(), (torch.zeros(1, 3, 64, 64), torch.ones(1, 2, dtype=torch.int64)))
    torch.export.save(program, path)
    return path


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (stand_in_onnx, r"model.onnx is not a readable ONNX model \(truncated or damaged\?\): Error parsing message"),
        (stand_in_program, r"model.pt2 is not a readable ExportedProgram \(torch.export archive\) \(truncated or "
                           r"damaged\?\): not a zip archive"),
    ],
)
def test_a_truncated_artifact_is_named(tmp_path: Path, metadata_document, write, message: str) -> None:
    """Beside its metadata.json (which names the artifact, so the file's own format is never sniffed)."""
    write_metadata(metadata_document(), tmp_path / "metadata.json")
    name = "model.onnx" if write is stand_in_onnx else "model.pt2"
    model = truncated(write(tmp_path / name))
    with pytest.raises(ValueError, match=message):
        load_runtime(model)


def test_an_artifact_of_another_size_than_its_export_recorded_is_named(tmp_path: Path, metadata_document) -> None:
    """metadata.json copied from another export with the same file names: the recorded size tells."""
    model = stand_in_onnx(tmp_path / "model.onnx")
    size = model.stat().st_size
    document = metadata_document()
    document["stages"] = [{"stage": "onnx", "seconds": 1.0, "file": "model.onnx", "bytes": size + 1}]
    write_metadata(document, tmp_path / "metadata.json")
    with pytest.raises(ValueError, match=rf"model.onnx has {size} bytes but .*metadata.json recorded {size + 1}"):
        load_runtime(model)
    document["stages"][0]["bytes"] = size
    write_metadata(document, tmp_path / "metadata.json")
    load_runtime(model)


def test_an_artifact_its_metadata_does_not_list_is_named(tmp_path: Path, metadata_document) -> None:
    """metadata.json of an export that did not write this file (e.g. a package beside another
    export's metadata): nothing in it describes the file, so it is refused."""
    model = stand_in_onnx(tmp_path / "model.onnx")
    document = metadata_document()
    document["files"] = {Artifact.EXPORTED_PROGRAM.value: "model.pt2"}
    write_metadata(document, tmp_path / "metadata.json")
    with pytest.raises(ValueError, match=r"metadata.json does not describe .*model.onnx: its export wrote model.pt2"):
        load_runtime(model)


def test_an_artifact_damaged_since_its_export_is_named(tmp_path: Path, metadata_document) -> None:
    """Same size, one byte changed: only the recorded SHA-256 tells."""
    model = stand_in_onnx(tmp_path / "model.onnx")
    document = metadata_document()
    document["stages"] = [{"stage": "onnx", "seconds": 1.0, "file": "model.onnx", "bytes": model.stat().st_size,
                           "sha256": file_sha256(model)}]
    write_metadata(document, tmp_path / "metadata.json")
    load_runtime(model)
    damaged = bytearray(model.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    model.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=rf"model.onnx is not the file its export wrote: its SHA-256 differs from the one "
                                         rf".*metadata.json recorded \(same size, different content\)"):
        load_runtime(model)


def static_stand_in_onnx(path: Path, height: int, width: int) -> Path:
    """:func:`stand_in_onnx` with a static [1, 3, height, width] images input."""
    model = onnx.load(str(stand_in_onnx(path)))
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, height, width)):
        dim.dim_value = size
    for dim in model.graph.input[1].type.tensor_type.shape.dim[:1]:
        dim.dim_value = 1
    onnx.save(model, str(path))
    return path


def described_inputs(height: int | str, width: int | str, images_dtype: str = "float32") -> list[dict]:
    return [{"name": "images", "shape": [1, 3, height, width], "dtype": images_dtype},
            {"name": "image_sizes", "shape": [1, 2], "dtype": "int64"}]


@pytest.mark.parametrize(
    "inputs",
    [described_inputs(64, 96), described_inputs("height", 64), described_inputs(64, 64, "float16"),
     described_inputs(64, 64)[:1], list(reversed(described_inputs(64, 64)))],
)
@pytest.mark.parametrize("name", ["model.onnx", "model.pt2"])
def test_metadata_of_another_export_is_refused_at_load(tmp_path: Path, metadata_document, inputs: list, name: str) -> None:
    """metadata.json copied from another export: caught naming both files, not by the model mid-run."""
    write_metadata(metadata_document(inputs=inputs), tmp_path / "metadata.json")
    write = stand_in_program if name == "model.pt2" else lambda path: static_stand_in_onnx(path, 64, 64)
    model = write(tmp_path / name)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'metadata.json'} does not describe {model}: the metadata lists "
                                         r"inputs .* but the model takes images float32 \[1, 3, 64, 64\], image_sizes "
                                         r"int64 \[1, 2\]; was metadata.json copied from another export\?"):
        load_runtime(model)


def test_metadata_that_describes_the_graph_loads(tmp_path: Path, metadata_document) -> None:
    """A static metadata dimension fits a dynamic graph one; equal static ones fit."""
    write_metadata(metadata_document(inputs=described_inputs(64, 64)), tmp_path / "metadata.json")
    load_runtime(static_stand_in_onnx(tmp_path / "model.onnx", 64, 64))
    load_runtime(stand_in_onnx(tmp_path / "model.onnx"))  # dynamic graph
    load_runtime(stand_in_program(tmp_path / "model.pt2"))
