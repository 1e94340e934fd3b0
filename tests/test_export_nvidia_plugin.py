"""The rewrite to NVIDIA's MultiscaleDeformableAttnPlugin_TRT on hand-built one-node graphs
(the exported tiny model's float32 graph is covered in test_export.py)."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from codetr.export.nvidia_plugin import replace_with_nvidia_plugin
from codetr.contract.plugin import (
    CODETR_DOMAIN,
    CODETR_OP_TYPE,
    NVIDIA_OP_TYPE,
    register_codetr_msda_schema,
)


def one_msda_graph(value_type: int, location_type: int) -> onnx.ModelProto:
    """value [1, 20, 2, 4], two levels (4x4, 2x2), 3 queries, 2 points; output [1, 3, 8]."""
    register_codetr_msda_schema()
    inputs = [
        helper.make_tensor_value_info("value", value_type, [1, 20, 2, 4]),
        helper.make_tensor_value_info("spatial_shapes", TensorProto.INT64, [2, 2]),
        helper.make_tensor_value_info("level_start_index", TensorProto.INT64, [2]),
        helper.make_tensor_value_info("sampling_locations", location_type, [1, 3, 2, 2, 2, 2]),
        helper.make_tensor_value_info("attention_weights", location_type, [1, 3, 2, 2, 2]),
    ]
    node = helper.make_node(
        CODETR_OP_TYPE, [value.name for value in inputs], ["output"], name="msda0", domain=CODETR_DOMAIN,
        im2col_step=64, plugin_version="1", plugin_namespace="codetr",
    )
    output = helper.make_tensor_value_info("output", value_type, [1, 3, 8])
    graph = helper.make_graph([node], "msda", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(CODETR_DOMAIN, 1)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def test_half_values_get_half_locations_and_weights() -> None:
    model = replace_with_nvidia_plugin(one_msda_graph(TensorProto.FLOAT16, TensorProto.FLOAT))
    onnx.checker.check_model(model, full_check=True)
    nodes = {node.output[0]: node for node in model.graph.node}
    (plugin,) = [node for node in model.graph.node if node.op_type == NVIDIA_OP_TYPE]
    casts = {name: onnx.helper.get_attribute_value(nodes[name].attribute[0]) for name in plugin.input[1:]}
    assert [nodes[name].input[0] for name in plugin.input[1:]] == [
        "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights",
    ]
    assert list(casts.values()) == [TensorProto.INT32, TensorProto.INT32, TensorProto.FLOAT16, TensorProto.FLOAT16]
    assert plugin.input[0] == "value"
    assert nodes["output"].op_type == "Reshape" and nodes["output"].input[0] == plugin.output[0]


def test_bfloat16_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="supports float32/float16 values, got BFLOAT16"):
        replace_with_nvidia_plugin(one_msda_graph(TensorProto.BFLOAT16, TensorProto.FLOAT))


def test_a_graph_without_msda_is_rejected() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    with pytest.raises(ValueError, match="no codetr::CodetrMSDA node"):
        replace_with_nvidia_plugin(helper.make_model(graph))


def test_checker_validates_the_plugin_node_attributes() -> None:
    model = one_msda_graph(TensorProto.FLOAT, TensorProto.FLOAT)
    del model.graph.node[0].attribute[:]
    missing = "Required attribute 'plugin_(version|namespace)' is missing"
    with pytest.raises(onnx.checker.ValidationError, match=missing):
        onnx.checker.check_model(model, full_check=True)
