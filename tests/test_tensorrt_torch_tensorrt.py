"""Torch-TensorRT compilation (codetr.tensorrt.torch_tensorrt) as far as a GPU-less machine goes.

Partitioning and converter registration are real Torch-TensorRT code (torch-tensorrt-rtx,
running on TensorRT-RTX; see tests/torch_tensorrt_worker.py for the CPU shims): the hybrid mode
leaves exactly the msda op in PyTorch, one PyTorch segment per MSDA call of the config (needs no
plugin library); with the plugin library (TensorRT headers) the full mode leaves nothing in
PyTorch, and a real full compile reaches our converter, which creates the plugin through the
registered creator and stops only where TensorRT-RTX's Python network has no add_plugin_v3.
No compiled module has ever been built into engines or run here (no GPU, no full TensorRT).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codetr.tensorrt.torch_tensorrt import Partition, partition_of

ROOT = Path(__file__).resolve().parent.parent

needs_torch_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("torch_tensorrt") is None,
    reason="torch-tensorrt (or torch-tensorrt-rtx) not installed",
)


def run_worker(environment: dict[str, str], *arguments: str) -> dict[str, dict]:
    """{scenario: report} from tests/torch_tensorrt_worker.py (one process for all)."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "torch_tensorrt_worker.py"), *arguments],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def hybrid_reports(rtx_environment) -> dict[str, dict]:
    """The hybrid scenarios, which need no plugin library."""
    return run_worker(rtx_environment)


@pytest.fixture(scope="module")
def reports(rtx_environment, plugin_library) -> dict[str, dict]:
    """Every scenario, with the plugin library built from TensorRT headers."""
    return run_worker(rtx_environment, str(plugin_library))


def test_partition_of_counts_named_segments():
    # A hand-built module shaped like Torch-TensorRT's output: two TensorRT, one PyTorch segment.
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.aten.relu.default, (x,)))
    pytorch_segment = torch.fx.GraphModule(torch.nn.Module(), graph)
    root = torch.nn.Module()
    root._run_on_acc_0 = torch.nn.Identity()
    root._run_on_gpu_1 = pytorch_segment
    root._run_on_acc_2 = torch.nn.Identity()
    assert partition_of(root) == Partition(2, 1, ("aten.relu.default",))


@needs_torch_tensorrt
def test_hybrid_mode_leaves_only_msda_in_pytorch(hybrid_reports):
    report = hybrid_reports["partition-hybrid"]
    assert (report["tensorrt_segments"], report["pytorch_segments"]) == (2, 1)
    assert report["pytorch_ops"] == ["codetr.msda.default"]


@needs_torch_tensorrt
def test_full_mode_puts_msda_into_tensorrt(reports):
    report = reports["partition-full"]
    assert (report["tensorrt_segments"], report["pytorch_segments"]) == (1, 0)


@needs_torch_tensorrt
def test_full_compile_reaches_the_plugin_converter(reports):
    report = reports["convert-full"]
    assert not report["registered_before"] and report["registered_after"]
    # The converter found our creator, created the plugin and converted its five inputs; only
    # TensorRT-RTX's missing add_plugin_v3 stops it. With full TensorRT this compiles.
    assert "has no INetworkDefinition.add_plugin_v3" in report["outcome"], report["outcome"]


@needs_torch_tensorrt
def test_tiny_co_dino_hybrid_has_one_pytorch_segment_per_msda_call(hybrid_reports):
    from codetr.config import load_config

    transformer = load_config(ROOT / "codetr" / "configs" / "tiny.toml").model.transformer
    msda_calls = transformer.encoder_layers + transformer.decoder_layers  # one MSDA per layer
    report = hybrid_reports["tiny-hybrid"]
    assert report["pytorch_ops"] == ["codetr.msda.default"]
    assert (report["pytorch_segments"], report["tensorrt_segments"]) == (msda_calls, msda_calls + 1)


@needs_torch_tensorrt
def test_tiny_co_dino_full_is_one_engine(reports):
    full = reports["tiny-full"]
    # With the plugin converter nothing is left to PyTorch: the whole model is one engine.
    assert (full["tensorrt_segments"], full["pytorch_segments"], full["pytorch_ops"]) == (1, 0, [])


def test_probe_explains_a_package_that_raises_a_plain_exception(tmp_path: Path, monkeypatch) -> None:
    """torch-tensorrt-rtx without TensorRT-RTX on the library path raises a plain Exception at import
    (not ImportError); the probe must turn it into a reason, not a traceback."""
    from codetr.tensorrt.torch_tensorrt import torch_tensorrt_unavailable_reason

    package = tmp_path / "torch_tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text(
        "print('import error when try to import _TensorRTProxyModule')\n"
        "raise Exception('import error when try to import _TensorRTProxyModule, got error Could not find "
        "libtensorrt_rtx.so.1\\n  Search paths: [...]')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_tensorrt", raising=False)
    reason = torch_tensorrt_unavailable_reason()
    assert reason.startswith("torch_tensorrt cannot be imported (Exception: import error when try to import "
                             "_TensorRTProxyModule, got error Could not find libtensorrt_rtx.so.1); install")
    assert "Search paths" not in reason
