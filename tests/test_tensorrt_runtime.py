"""The TensorRT runner (codetr.runtime.tensorrt) and GPU runs of TensorRT and Torch-TensorRT.

Here (no GPU): the metadata checks that turn an engine/plugin version mismatch into a clear
message, the dtype table, and the runner's refusals. On a machine with a CUDA GPU, the full
``tensorrt`` package, ``torch-tensorrt`` and the plugin library: the tiny Co-DINO exported
with the plugin node runs through the runner (plain and CUDA graph) and through Torch-TensorRT
(hybrid and full, saved and reloaded) with the detections of PyTorch eager.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from codetr.models import Detections
from codetr.runtime.tensorrt import TensorRTRuntime, check_engine_metadata, torch_dtype

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
SIZE = (64, 96)


def metadata(versions: dict[str, str], msda: str = "plugin") -> dict:
    return {"versions": versions, "msda": msda}


def test_matching_metadata_passes():
    check_engine_metadata(metadata({"tensorrt": "10.13.0.35", "codetr_msda_plugin": "1"}), "tensorrt", "10.13.0.35", "1")
    check_engine_metadata(metadata({}, msda="decomposed"), "tensorrt", "10.13.0.35", None)


def test_other_tensorrt_version_is_named():
    with pytest.raises(ValueError, match=r"built with tensorrt 10\.13\.0\.35 but tensorrt 10\.14\.1 is running"):
        check_engine_metadata(metadata({"tensorrt": "10.13.0.35"}), "tensorrt", "10.14.1", "1")


def test_engine_of_other_tensorrt_package_is_named():
    with pytest.raises(ValueError, match=r"built with tensorrt_rtx_bindings 1\.7\.1 but tensorrt 10\.14\.1"):
        check_engine_metadata(metadata({"tensorrt_rtx_bindings": "1.7.1"}), "tensorrt", "10.14.1", "1")


def test_missing_plugin_library_is_named():
    with pytest.raises(ValueError, match="uses the codetr MSDA plugin but no plugin library"):
        check_engine_metadata(metadata({"tensorrt": "10.14.1"}), "tensorrt", "10.14.1", None)


def test_other_plugin_version_is_named():
    with pytest.raises(ValueError, match="plugin version 2 but the loaded library is version 1"):
        check_engine_metadata(metadata({"tensorrt": "10.14.1", "codetr_msda_plugin": "2"}), "tensorrt", "10.14.1", "1")


def test_tensorrt_types_map_to_torch_types():
    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="no TensorRT Python package to take DataType from")
    assert torch_dtype(trt, trt.DataType.FLOAT) is torch.float32
    assert torch_dtype(trt, trt.DataType.HALF) is torch.float16
    assert torch_dtype(trt, trt.DataType.BF16) is torch.bfloat16
    assert torch_dtype(trt, trt.DataType.INT64) is torch.int64
    with pytest.raises(ValueError, match="no torch equivalent"):
        torch_dtype(trt, trt.DataType.FP8)


def test_missing_engine_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="engine_path"):
        TensorRTRuntime(tmp_path / "model.engine")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_runner_without_gpu_says_so(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        TensorRTRuntime(engine)


# ---------------------------------------------------------------------------- GPU + TensorRT

def skip_unless_gpu_with(package: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"needs the {package} Python package")


def tiny_setup():
    """The tiny Co-DINO (random weights) on the GPU, inputs, and its eager detections."""
    from codetr.config import load_config
    from codetr.models import build_model

    config = load_config(TINY)
    model = build_model(config).eval().cuda()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, 3, *SIZE), generator=generator).float().cuda()
    image_sizes = torch.tensor([SIZE]).cuda()
    with torch.no_grad():
        expected = model(images, image_sizes)
    return config, model, images, image_sizes, expected


def assert_same_detections(actual, expected, score_atol=1e-3, box_atol=0.5):
    """Scores within ``score_atol`` and boxes within ``box_atol`` pixels of eager float32
    (TensorRT may fuse and reorder float32 arithmetic; the inputs are 64x96 pixels)."""
    actual = Detections(*actual)
    torch.testing.assert_close(actual.scores.float().cpu(), expected.scores.float().cpu(), atol=score_atol, rtol=0)
    torch.testing.assert_close(actual.boxes.float().cpu(), expected.boxes.float().cpu(), atol=box_atol, rtol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_plugin_engine_matches_eager(plugin_library, tmp_path, cuda_graph):
    skip_unless_gpu_with("tensorrt")
    from codetr.export import ExportOptions, MsdaMode, export_model
    from codetr.contract.artifacts import Artifact

    config, model, images, image_sizes, expected = tiny_setup()
    options = ExportOptions(
        dtype=torch.float32, height=SIZE[0], width=SIZE[1], msda=MsdaMode.PLUGIN,
        artifacts=(Artifact.EXPORTED_PROGRAM, Artifact.ONNX, Artifact.ENGINE),
        plugin_library=plugin_library, device=torch.device("cuda"),
    )
    result = export_model(model, config, options, tmp_path)
    runtime = TensorRTRuntime(result.files[Artifact.ENGINE], plugin_library=plugin_library, cuda_graph=cuda_graph)
    for _ in range(2):  # the second call replays the captured graph
        assert_same_detections(runtime(images, image_sizes), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["hybrid", "full"])
def test_torch_tensorrt_matches_eager_and_reloads(plugin_library, tmp_path, mode):
    skip_unless_gpu_with("torch_tensorrt")
    from codetr.contract.artifacts import CompileMode, MsdaMode
    from codetr.export.options import ExportOptions
    from codetr.export.program import export_program, prepare_model
    from codetr.runtime.torch_tensorrt import TorchTensorRTRuntime
    from codetr.tensorrt.torch_tensorrt import compile_program, partition_of, save_compiled

    config, model, images, image_sizes, expected = tiny_setup()
    options = ExportOptions(dtype=torch.float32, height=SIZE[0], width=SIZE[1], msda=MsdaMode.PLUGIN,
                            device=torch.device("cuda"))
    program = export_program(prepare_model(model, options), options, config.preprocess.size_divisor)
    compiled = compile_program(program, (images, image_sizes), CompileMode(mode), plugin_library=plugin_library)
    partition = partition_of(compiled)
    print(f"{mode}: {partition}")
    if mode == "hybrid":
        assert "codetr.msda.default" in partition.pytorch_ops
    else:
        assert "codetr.msda.default" not in partition.pytorch_ops
    assert_same_detections(compiled(images, image_sizes), expected)
    saved = save_compiled(compiled, tmp_path / f"{mode}.pt2", (images, image_sizes))
    reloaded = TorchTensorRTRuntime(saved, plugin_library=plugin_library)
    assert_same_detections(reloaded(images, image_sizes), expected)


def test_output_allocator_returns_what_tensorrt_wrote():
    """The IOutputAllocator of data-dependent outputs (--postprocess threshold/nms), driven through
    TensorRT's protocol by hand: memory asked for, written at the returned address, shape notified."""
    import ctypes

    trt = pytest.importorskip("tensorrt_rtx_bindings", reason="no TensorRT Python package")
    from codetr.runtime.tensorrt import make_output_allocator

    allocator = make_output_allocator(trt, torch.float32, torch.device("cpu"))
    written = torch.arange(28, dtype=torch.float32).view(1, 7, 4)
    address = allocator.reallocate_output_async("boxes", 0, written.numel() * 4, 256, 0)
    ctypes.memmove(address, written.data_ptr(), written.numel() * 4)
    allocator.notify_shape("boxes", (1, 7, 4))
    assert torch.equal(allocator.output(), written)
    # A later run with no detections reuses the memory and gives an empty [1, 0, 4] tensor.
    assert allocator.reallocate_output_async("boxes", address, 0, 256, 0) == address
    allocator.notify_shape("boxes", (1, 0, 4))
    assert allocator.output().shape == (1, 0, 4)
