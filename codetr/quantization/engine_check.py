"""Where the INT8 graph's Q/DQ ended up around MSDA: in the ONNX graph and in a built engine.

The pitfall (seen in a public RT-DETR deployment): TensorRT moves Q/DQ nodes through shape-only
ops and fuses them into a neighbour, so deformable attention ends up sampling INT8 values,
offsets or weights. Two checks:

- :func:`msda_inputs_from_dequantize` (ONNX): no MSDA input (the plugin node's, or a GridSample's
  in the decomposed form) may come from a DequantizeLinear through shape-only ops only.
- :func:`msda_fusion_findings` (engine, from :mod:`codetr.tensorrt.inspect` layers): a layer
  that computes MSDA (the plugin layer, or a fused kernel holding GridSample nodes) must take no
  INT8 input unless an INT8 GEMM fused into the same kernel consumes it, and may hold no
  QuantizeLinear node, nor a DequantizeLinear whose consumers are not a MatMul/Gemm/Conv in
  the same layer (an INT8 GEMM whose float output feeds the sampler is the intended fusion).
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Iterable

import onnx

from codetr.contract.plugin import CODETR_OP_TYPE, NVIDIA_OP_TYPE
from codetr.tensorrt.inspect import EngineLayer, layers_from_build_log

logger = logging.getLogger("codetr.quantization")

MSDA_OP_TYPES = frozenset({CODETR_OP_TYPE, NVIDIA_OP_TYPE, "GridSample"})
SHAPE_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Concat", "Flatten",
                       "Identity", "Cast", "Expand", "Gather", "Where"})
"""Ops that move or select values without computing new ones: Q/DQ can propagate through them."""
WEIGHTED_OPS = frozenset({"MatMul", "Gemm", "Conv"})
INT8_DTYPES = frozenset({"Int8", "INT8"})


def msda_inputs_from_dequantize(model: onnx.ModelProto) -> list[str]:
    """"<MSDA node> input <i> <- <DequantizeLinear node>" for every MSDA input that is a
    DequantizeLinear output, directly or through :data:`SHAPE_OPS` (empty: the inputs stay float)."""
    producer = {output: node for node in model.graph.node for output in node.output}
    findings = []
    for node in model.graph.node:
        if node.op_type not in MSDA_OP_TYPES:
            continue
        for index, name in enumerate(node.input):
            pending, seen = [name], set()
            while pending:
                source = producer.get(pending.pop())
                if source is None or source.name in seen:
                    continue
                seen.add(source.name)
                if source.op_type == "DequantizeLinear":
                    findings.append(f"{node.name} input {index} <- {source.name}")
                elif source.op_type in SHAPE_OPS:
                    pending.extend(source.input)
    return findings


def _onnx_nodes(layer: EngineLayer) -> list[str]:
    return re.findall(r"ONNX Layer: ([^\]]+)", layer.metadata)


def msda_fusion_findings(model: onnx.ModelProto, layers: Iterable[EngineLayer]) -> list[str]:
    """One line per engine layer that computes MSDA on quantized data (see the module docstring);
    ``model`` is the ONNX graph the engine was built from (node names and types)."""
    nodes = {node.name: node for node in model.graph.node}
    consumers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    findings = []
    for layer in layers:
        names = [name for name in _onnx_nodes(layer) if name in nodes]
        if not any(nodes[name].op_type in MSDA_OP_TYPES for name in names):
            continue
        inside = set(names)
        problems = []
        has_gemm = False
        for name in names:
            node = nodes[name]
            if node.op_type == "QuantizeLinear":
                problems.append(f"QuantizeLinear {name}")
            elif node.op_type == "DequantizeLinear":
                fed = [consumer for consumer in _through_shape_ops(node, consumers) if consumer.name in inside]
                if fed and all(consumer.op_type in WEIGHTED_OPS for consumer in fed):
                    has_gemm = True
                else:
                    problems.append(f"DequantizeLinear {name} feeds " + (", ".join(c.name for c in fed) or "the layer"))
        if INT8_DTYPES & set(layer.input_dtypes) and not has_gemm:
            problems.append("an INT8 input")
        if problems:
            findings.append(f"engine layer {layer.name} ({layer.layer_type}) computes MSDA with " + "; ".join(problems))
    return findings


def _through_shape_ops(node: onnx.NodeProto, consumers) -> list[onnx.NodeProto]:
    """The first non-shape-op consumers of ``node``'s outputs."""
    found, pending = [], list(node.output)
    while pending:
        for consumer in consumers[pending.pop()]:
            if consumer.op_type in SHAPE_OPS:
                pending.extend(consumer.output)
            else:
                found.append(consumer)
    return found


def int8_layer_count(layers: Iterable[EngineLayer]) -> tuple[int, int]:
    """(layers with an INT8 input, all layers): the engine's INT8 share, from the build log."""
    layers = list(layers)
    return sum(1 for layer in layers if INT8_DTYPES & set(layer.input_dtypes)), len(layers)


def check_int8_engine(onnx_path, build_log: Iterable[str]) -> dict[str, object]:
    """The metadata.json record of an INT8 engine build: its INT8 layer count and the MSDA
    findings of both checks (each also logged as a warning). ``build_log``: the builder's messages
    (:attr:`codetr.export.tensorrt_engine.EngineBuild.log`)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    layers = layers_from_build_log(build_log)
    int8_layers, total = int8_layer_count(layers)
    findings = msda_inputs_from_dequantize(model) + msda_fusion_findings(model, layers)
    for finding in findings:
        logger.warning("INT8 around MSDA: %s", finding)
    return {"int8_input_layers": int8_layers, "layers": total, "msda_quantized_inputs": findings}
