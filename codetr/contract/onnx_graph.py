"""Facts about an ONNX model that the exporter writes and the ONNX Runtime runner reads.

- :func:`element_types`: the element type of every named tensor the model records;
- :func:`default_opset`: the standard-domain opset a file really declares;
- :func:`replace_opset_import`: swap one custom domain's opset import for another's;
- :func:`clamp_ir_version`: keep the IR version readable (see ``ONNX_IR_VERSION``).
"""

from __future__ import annotations

import onnx

from codetr.contract.plugin import ONNX_IR_VERSION

STANDARD_DOMAINS = ("", "ai.onnx")


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """``onnx.TensorProto`` element type of every named tensor whose type the model records:
    graph inputs, outputs, value_info (run shape inference first for a complete map),
    initializers and Constant node outputs."""
    graph = model.graph
    types = {value.name: value.type.tensor_type.elem_type for value in [*graph.input, *graph.output, *graph.value_info]}
    types.update({tensor.name: tensor.data_type for tensor in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS and node.attribute[0].name == "value":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the standard (``ai.onnx``) opset the model imports; ValueError if none."""
    versions = [opset.version for opset in model.opset_import if opset.domain in STANDARD_DOMAINS]
    if not versions:
        raise ValueError("the ONNX model imports no standard (ai.onnx) opset")
    return max(versions)


def replace_opset_import(model: onnx.ModelProto, old_domain: str, new_domain: str, version: int = 1) -> None:
    """Drop ``old_domain``'s opset import and import ``new_domain`` at ``version``, in place."""
    kept = [opset for opset in model.opset_import if opset.domain not in (old_domain, new_domain)]
    del model.opset_import[:]
    model.opset_import.extend([*kept, onnx.helper.make_opsetid(new_domain, version)])


def clamp_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower ``model.ir_version`` to at most ``ONNX_IR_VERSION`` (in place; returns ``model``):
    newer onnx writes an IR version older ONNX Runtime and TensorRT parsers refuse."""
    model.ir_version = min(model.ir_version, ONNX_IR_VERSION)
    return model
