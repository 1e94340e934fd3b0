"""ONNX Runtime over plugin-node graphs in every precision (issue 8 fault 2).

A float16 plugin graph used to abort the process inside onnxruntime-extensions ("Type float16
not supported by python customops api", SIGABRT); so the real float16 export runs in a child
process, whose death fails the test instead of killing pytest. The reference is PyTorch running
the same export's model.pt2.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

import codetr.ops  # noqa: F401  torch.ops.codetr.msda: the reference for the hand-made graphs
from codetr.contract.plugin import CODETR_DOMAIN, CODETR_OP_TYPE
from codetr.runtime.onnxruntime import OnnxRuntime, OnnxRuntimeUnsupportedError, create_session, with_python_msda

ROOT = Path(__file__).resolve().parents[1]


def gradient_images(batch: int, side: int) -> torch.Tensor:
    rows = torch.linspace(0, 255, side)[:, None].expand(side, side)
    return torch.stack([rows, rows.T, 255 - rows] * batch).reshape(batch, 3, side, side).contiguous()


def test_float16_plugin_export_runs_in_onnxruntime_like_pytorch(tiny_float16_export: Path, tmp_path: Path) -> None:
    images = gradient_images(1, 64)
    image_sizes = torch.tensor([[64, 48]])
    torch.save((images, image_sizes), tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch
        from codetr.runtime.onnxruntime import OnnxRuntime
        images, image_sizes = torch.load({str(tmp_path / 'inputs.pt')!r})
        detections = OnnxRuntime({str(tiny_float16_export / 'model.onnx')!r})(images, image_sizes)
        torch.save(tuple(detections), {str(tmp_path / 'outputs.pt')!r})
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"ONNX Runtime process exited {child.returncode}: {child.stderr[-2000:]}"
    boxes, scores, labels = torch.load(tmp_path / "outputs.pt")

    program = torch.export.load(tiny_float16_export / "model.pt2").module()
    with torch.no_grad():
        expected_boxes, expected_scores, expected_labels = program(images, image_sizes)
    # Same float16 graph; ONNX Runtime computes MSDA in float32 and fuses differently.
    torch.testing.assert_close(scores, expected_scores.float(), atol=2e-3, rtol=0)
    torch.testing.assert_close(boxes, expected_boxes.float(), atol=0.1, rtol=0)
    assert torch.equal(labels[:, :5], expected_labels[:, :5])


def test_session_copy_runs_the_plugin_node_in_float32(tiny_float16_export: Path) -> None:
    model = onnx.load(str(tiny_float16_export / "model.onnx"), load_external_data=False)
    plugin_nodes = [node for node in model.graph.node if node.domain == CODETR_DOMAIN]
    rewritten = with_python_msda(model)
    assert plugin_nodes and not any(node.domain == CODETR_DOMAIN for node in rewritten.graph.node)
    casts = [node for node in rewritten.graph.node if node.op_type == "Cast"]
    original_casts = [node for node in model.graph.node if node.op_type == "Cast"]
    # value in and output back, per plugin node (locations and weights are float32 already)
    assert len(casts) - len(original_casts) == 2 * len(plugin_nodes)


@pytest.mark.slow
def test_bfloat16_export_is_refused_before_running(tiny_bfloat16_onnx_export: Path) -> None:
    with pytest.raises(OnnxRuntimeUnsupportedError, match=r"cannot run this model: .*NOT_IMPLEMENTED.*bfloat16|Conv"):
        OnnxRuntime(tiny_bfloat16_onnx_export / "model.onnx")


def msda_graph(half_type: int) -> onnx.ModelProto:
    """float32 inputs -> Cast to ``half_type`` (value, locations, weights) -> one plugin node ->
    Cast back: the plugin-node pattern of a half-precision export, small enough to check by hand."""
    floats = {"value": "value_half", "sampling_locations": "locations_half", "attention_weights": "weights_half"}
    nodes = [onnx.helper.make_node("Cast", [name], [half], to=half_type) for name, half in floats.items()]
    nodes.append(onnx.helper.make_node(
        CODETR_OP_TYPE, ["value_half", "spatial_shapes", "level_start_index", "locations_half", "weights_half"],
        ["output_half"], domain=CODETR_DOMAIN, name="msda", im2col_step=64, plugin_version="1", plugin_namespace="codetr",
    ))
    nodes.append(onnx.helper.make_node("Cast", ["output_half"], ["output"], to=onnx.TensorProto.FLOAT))
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        nodes, "msda",
        [tensor("value", onnx.TensorProto.FLOAT, None), tensor("spatial_shapes", onnx.TensorProto.INT64, None),
         tensor("level_start_index", onnx.TensorProto.INT64, None),
         tensor("sampling_locations", onnx.TensorProto.FLOAT, None), tensor("attention_weights", onnx.TensorProto.FLOAT, None)],
        [tensor("output", onnx.TensorProto.FLOAT, None)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(CODETR_DOMAIN, 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("half_type", "dtype"), [(onnx.TensorProto.FLOAT16, torch.float16), (onnx.TensorProto.BFLOAT16, torch.bfloat16)])
def test_half_precision_plugin_node_matches_the_op(msda_inputs, half_type: int, dtype: torch.dtype) -> None:
    inputs = msda_inputs(dtype=torch.float32)
    session = create_session(msda_graph(half_type), ["CPUExecutionProvider"])
    names = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]
    (output,) = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})
    # Reference: the op in float64 on the half-rounded inputs (what the graph's casts produce);
    # the graph's result is rounded to the half type, so compare at that type's tolerance.
    expected = torch.ops.codetr.msda(*inputs.to(dtype).float64(), 64)
    torch.testing.assert_close(torch.from_numpy(output).to(dtype), expected.to(dtype))
