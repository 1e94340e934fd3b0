"""Rewrite ``codetr::CodetrMSDA`` nodes into NVIDIA's stock ``MultiscaleDeformableAttnPlugin_TRT``.

The stock plugin (libnvinfer_plugin) lets the ONNX build on any TensorRT 10.x/11.x without our
plugin library, e.g. with trtexec, Triton or DeepStream. Its contract (see
:mod:`codetr.contract.plugin`) wants int32 shapes and start indices, locations and
weights in value's dtype (float32 or float16 only) and returns [N, Lq, M, D]; so each node
becomes Cast(int32) x2, Cast(value dtype) x2 where needed, the plugin node and a Reshape to
[N, Lq, M*D]. In a float16 export the float32 sampling locations are thereby rounded to
float16 (~1e-3 relative: a fraction of a pixel on the finest level).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from codetr.contract.onnx_graph import element_types, replace_opset_import
from codetr.contract.plugin import (
    CODETR_DOMAIN,
    CODETR_OP_TYPE,
    NVIDIA_DOMAIN,
    NVIDIA_OP_TYPE,
    NVIDIA_PLUGIN_NAMESPACE,
    NVIDIA_PLUGIN_VERSION,
)

_SUPPORTED_VALUE_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def replace_with_nvidia_plugin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose ``codetr::CodetrMSDA`` nodes are the stock NVIDIA plugin."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    types = element_types(model)
    new_nodes: list[onnx.NodeProto] = []
    # Reshape target [0, 0, -1]: keep N and Lq, merge M and D.
    merge_heads = f"{NVIDIA_OP_TYPE}_merge_heads_shape"
    replaced = 0
    for node in graph.node:
        if node.op_type != CODETR_OP_TYPE or node.domain != CODETR_DOMAIN:
            new_nodes.append(node)
            continue
        value, shapes, starts, locations, weights = node.input
        value_type = types.get(value)
        if value_type not in _SUPPORTED_VALUE_TYPES:
            raise ValueError(
                f"node {node.name!r}: {NVIDIA_OP_TYPE} supports float32/float16 values, got "
                f"{onnx.TensorProto.DataType.Name(value_type) if value_type else 'unknown type'}"
            )
        prefix = node.name or f"msda_{replaced}"

        def cast(tensor: str, to: int, label: str) -> str:
            if types.get(tensor) == to:
                return tensor
            output = f"{prefix}/{label}_cast"
            new_nodes.append(helper.make_node("Cast", [tensor], [output], name=output, to=to))
            return output

        plugin_inputs = [
            value,
            cast(shapes, onnx.TensorProto.INT32, "spatial_shapes"),
            cast(starts, onnx.TensorProto.INT32, "level_start_index"),
            cast(locations, value_type, "sampling_locations"),
            cast(weights, value_type, "attention_weights"),
        ]
        per_head = f"{prefix}/per_head_output"
        new_nodes.append(
            helper.make_node(
                NVIDIA_OP_TYPE, plugin_inputs, [per_head], name=f"{prefix}/{NVIDIA_OP_TYPE}",
                domain=NVIDIA_DOMAIN, plugin_version=NVIDIA_PLUGIN_VERSION, plugin_namespace=NVIDIA_PLUGIN_NAMESPACE,
            )
        )
        new_nodes.append(
            helper.make_node("Reshape", [per_head, merge_heads], [node.output[0]], name=f"{prefix}/merge_heads")
        )
        replaced += 1
    if not replaced:
        raise ValueError(f"the model has no {CODETR_DOMAIN}::{CODETR_OP_TYPE} node to replace")
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), merge_heads))
    del graph.node[:]
    graph.node.extend(new_nodes)
    replace_opset_import(model, CODETR_DOMAIN, NVIDIA_DOMAIN)
    return model
