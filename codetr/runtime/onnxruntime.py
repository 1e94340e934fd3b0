"""Running the exported ONNX model with ONNX Runtime (CPU or CUDA execution provider).

The decomposed graph uses standard ops only. The plugin graph's ``codetr::CodetrMSDA`` nodes
run through an onnxruntime-extensions Python custom op that calls ``torch.ops.codetr.msda``,
so ONNX Runtime can check the plugin-node graph without TensorRT. The session gets a rewritten
copy: those nodes move to the extensions' domain ``ai.onnx.contrib`` and get an op type per
input dtype combination (a Python custom op declares fixed input types; all combinations are
registered when this module is imported).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime
import torch

import codetr.ops  # noqa: F401  registers torch.ops.codetr.msda, which the Python MSDA op calls
from codetr.contract.plugin import CODETR_DOMAIN, CODETR_OP_TYPE, DEFAULT_IM2COL_STEP, ONNX_IR_VERSION
from codetr.models import Detections
from codetr.runtime.base import Runtime, check_inputs

CONTRIB_DOMAIN = "ai.onnx.contrib"


class OnnxRuntime(Runtime):
    """An ONNX Runtime session over ``model.onnx``; ``providers`` as for ``InferenceSession``."""

    def __init__(self, model: str | Path | onnx.ModelProto, providers: list[str] | None = None) -> None:
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        session_options = onnxruntime.SessionOptions()
        if any(node.domain == CODETR_DOMAIN for node in model.graph.node):
            if not _PYTHON_MSDA_OPS:
                raise ImportError(
                    "the ONNX model has codetr::CodetrMSDA plugin nodes; running them in ONNX Runtime "
                    "needs onnxruntime-extensions (pip install onnxruntime-extensions), or export with "
                    "--msda decomposed"
                )
            model = _with_python_msda(model)
            from onnxruntime_extensions import get_library_path

            session_options.register_custom_ops_library(get_library_path())
        # onnx may write a newer IR version than this ONNX Runtime reads.
        model.ir_version = min(model.ir_version, ONNX_IR_VERSION)
        self.session = onnxruntime.InferenceSession(
            model.SerializeToString(), session_options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_names = [value.name for value in self.session.get_inputs()]

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes)
        feeds = {
            self.input_names[0]: images.detach().to("cpu", torch.float32).numpy(),
            self.input_names[1]: image_sizes.detach().to("cpu", torch.int64).numpy(),
        }
        boxes, scores, labels = self.session.run(None, feeds)
        return Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels))


def _with_python_msda(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose plugin nodes run as onnxruntime-extensions Python ops."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model = onnx.shape_inference.infer_shapes(model)
    element_types = {
        value.name: value.type.tensor_type.elem_type
        for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]
    }
    element_types.update({tensor.name: tensor.data_type for tensor in model.graph.initializer})
    for node in model.graph.node:
        if node.domain != CODETR_DOMAIN or node.op_type != CODETR_OP_TYPE:
            continue
        op_type = _python_msda_op_type(tuple(element_types.get(name, 0) for name in node.input))
        if op_type not in _PYTHON_MSDA_OPS:
            raise ValueError(
                f"node {node.name!r}: ONNX Runtime runs MSDA with float32/float16 values, locations and "
                f"weights and int64 shapes (bfloat16 has no NumPy type); got {op_type}"
            )
        node.op_type = op_type
        node.domain = CONTRIB_DOMAIN
        # Only im2col_step is declared by the Python op; the TensorRT plugin fields mean nothing here.
        kept = [attribute for attribute in node.attribute if attribute.name == "im2col_step"]
        del node.attribute[:]
        node.attribute.extend(kept)
    opsets = [opset for opset in model.opset_import if opset.domain != CODETR_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend([*opsets, onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1)])
    return model


def _python_msda_op_type(input_types: tuple[int, ...]) -> str:
    return CODETR_OP_TYPE + "_" + "_".join(onnx.TensorProto.DataType.Name(kind).lower() for kind in input_types)


def _python_msda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, **attributes):
    output = torch.ops.codetr.msda(
        torch.from_numpy(value),
        torch.from_numpy(spatial_shapes),
        torch.from_numpy(level_start_index),
        torch.from_numpy(sampling_locations),
        torch.from_numpy(attention_weights),
        int(attributes.get("im2col_step", DEFAULT_IM2COL_STEP)),
    )
    return output.numpy()


def _register_python_msda_ops() -> set[str]:
    """Register the Python MSDA op for every supported dtype combination, all at once.

    onnxruntime-extensions rebuilds its op table when an op is registered, which breaks sessions
    created before (they crash when destroyed); so every variant is registered here, when this
    module is imported, before any session exists.
    """
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError:
        return set()
    custom_types = {
        onnx.TensorProto.FLOAT: PyCustomOpDef.dt_float,
        onnx.TensorProto.FLOAT16: PyCustomOpDef.dt_float16,
        onnx.TensorProto.INT64: PyCustomOpDef.dt_int64,
    }
    op_types = set()
    for value_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        for location_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            input_types = (value_type, onnx.TensorProto.INT64, onnx.TensorProto.INT64, location_type, location_type)
            op_type = _python_msda_op_type(input_types)
            onnx_op(
                op_type=op_type,
                inputs=[custom_types[kind] for kind in input_types],
                outputs=[custom_types[value_type]],
                attrs={"im2col_step": PyCustomOpDef.dt_int64},
            )(_python_msda)
            op_types.add(op_type)
    return op_types


_PYTHON_MSDA_OPS = _register_python_msda_ops()
