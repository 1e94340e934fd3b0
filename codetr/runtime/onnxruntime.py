"""Running the exported ONNX model with ONNX Runtime (CPU or CUDA execution provider).

The decomposed graph uses standard ops only. The plugin graph's ``codetr::CodetrMSDA`` nodes
run through an onnxruntime-extensions Python custom op that calls ``torch.ops.codetr.msda``,
so ONNX Runtime can check the plugin-node graph without TensorRT. The session gets a rewritten
copy: each plugin node moves to the extensions' domain ``ai.onnx.contrib`` and runs in float32,
with ``Cast`` nodes around it for float16 and bfloat16 graphs (a Python custom op cannot take
float16: onnxruntime-extensions aborts the process with "Type float16 not supported by python
customops api"). Computing MSDA in float32 from half-precision inputs is at least as accurate
as the plugin's half-precision kernel; the result is cast back to the value dtype.

A graph ONNX Runtime has no kernels for (e.g. bfloat16 convolutions on the CPU execution
provider) is refused when the session is created, with :class:`OnnxRuntimeUnsupportedError`
naming the op and the alternatives; nothing here lets ONNX Runtime abort the process.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import DecodeError
import onnx
import onnxruntime
import torch

import codetr.ops  # noqa: F401  registers torch.ops.codetr.msda, which the Python MSDA op calls
from codetr.contract.metadata import ExportMetadata
from codetr.contract.onnx_graph import clamp_ir_version, element_types, replace_opset_import
from codetr.contract.plugin import CODETR_DOMAIN, CODETR_OP_TYPE, DEFAULT_IM2COL_STEP, NVIDIA_OP_TYPE
from codetr.models import Detections
from codetr.runtime.base import InputSpec, Runtime, check_described_inputs, check_inputs, resolve_device, unreadable

CONTRIB_DOMAIN = "ai.onnx.contrib"
PYTHON_MSDA_OP_TYPE = CODETR_OP_TYPE + "Float32"
"""The onnxruntime-extensions op that runs a plugin node: float32 value, locations and weights."""

_HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


class OnnxRuntimeUnsupportedError(ValueError):
    """ONNX Runtime cannot run this model with the chosen execution providers; the message says
    which node or type, and what to run instead."""


class OnnxRuntime(Runtime):
    """An ONNX Runtime session over ``model.onnx``.

    ``device``: "cpu" (default) or "cuda[:N]" (CUDAExecutionProvider, falling back to the CPU for
    ops it lacks); ``providers`` overrides the choice (as for ``InferenceSession``).
    ``metadata``: the export's metadata; inputs are checked against it before every run.
    Raises FileNotFoundError for a missing file, ValueError for one that is not a readable ONNX
    model or whose inputs are not the ones ``metadata`` describes (:func:`~codetr.runtime.base.check_described_inputs`),
    :class:`OnnxRuntimeUnsupportedError` (a ValueError) for a graph ONNX Runtime cannot run
    and ImportError when plugin nodes need onnxruntime-extensions and it is missing.
    """

    def __init__(
        self,
        model: str | Path | onnx.ModelProto,
        metadata: ExportMetadata | None = None,
        *,
        device: str | torch.device | None = None,
        providers: list[str] | None = None,
    ) -> None:
        self.metadata = metadata
        where = "the ONNX model" if isinstance(model, onnx.ModelProto) else str(model)
        if not isinstance(model, onnx.ModelProto):
            model = load_onnx(Path(model))
        if metadata is not None:
            check_described_inputs(metadata, graph_inputs(model), where)
        providers = providers or _providers_for(resolve_device(device or "cpu"))
        self.session = create_session(model, providers, where)
        self.device = torch.device("cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu")
        self.input_names = [value.name for value in self.session.get_inputs()]

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes, self.metadata)
        feeds = {
            self.input_names[0]: images.detach().to("cpu", torch.float32).numpy(),
            self.input_names[1]: image_sizes.detach().to("cpu", torch.int64).numpy(),
        }
        boxes, scores, labels = self.session.run(None, feeds)
        return Detections(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels))


def load_onnx(path: Path) -> onnx.ModelProto:
    """``onnx.load``, with a damaged file reported as a ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    try:
        return onnx.load(str(path))
    except DecodeError as error:
        raise unreadable(path, "ONNX model", error) from None


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph's inputs (initializers excluded) as (name, dtype name, shape); a dynamic
    dimension is its name."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
        shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim]
        specs.append((value.name, dtype, shape))
    return specs


def create_session(
    model: onnx.ModelProto, providers: list, where: str = "the ONNX model"
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session over a copy of ``model`` that ONNX Runtime can run: plugin nodes
    as the float32 Python op (:func:`with_python_msda`), IR version clamped. Raises
    :class:`OnnxRuntimeUnsupportedError` naming ``where`` for NVIDIA plugin nodes and for graphs
    the providers have no kernels for; ImportError without onnxruntime-extensions."""
    session_options = onnxruntime.SessionOptions()
    if any(node.op_type == NVIDIA_OP_TYPE for node in model.graph.node):
        raise OnnxRuntimeUnsupportedError(
            f"{where}: has NVIDIA's {NVIDIA_OP_TYPE} plugin nodes (--msda nvidia), which only TensorRT "
            "runs; run the TensorRT engine, or export with --msda plugin or --msda decomposed for ONNX Runtime"
        )
    if any(node.domain == CODETR_DOMAIN for node in model.graph.node):
        if not _PYTHON_MSDA_REGISTERED:
            raise ImportError(
                f"{where} has codetr::CodetrMSDA plugin nodes; running them in ONNX Runtime "
                "needs onnxruntime-extensions (pip install onnxruntime-extensions), or export with "
                "--msda decomposed"
            )
        model = with_python_msda(model)
        from onnxruntime_extensions import get_library_path

        session_options.register_custom_ops_library(get_library_path())
    clamp_ir_version(model)
    try:
        return onnxruntime.InferenceSession(model.SerializeToString(), session_options, providers=providers)
    except (onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented,
            onnxruntime.capi.onnxruntime_pybind11_state.InvalidGraph) as error:
        names = ", ".join(provider if isinstance(provider, str) else provider[0] for provider in providers)
        raise OnnxRuntimeUnsupportedError(
            f"{where}: ONNX Runtime {onnxruntime.__version__} with {names} cannot run this "
            f"model: {str(error).splitlines()[0]}. Run the export's model.pt2 or TensorRT engine instead, "
            "or export with --dtype float32 or float16 for ONNX Runtime"
        ) from None


def _providers_for(device: torch.device) -> list[str]:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise ValueError(
            f"device {device}: this onnxruntime ({onnxruntime.__version__}) has no CUDAExecutionProvider "
            f"(available: {', '.join(onnxruntime.get_available_providers())}); install onnxruntime-gpu or use cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]


def with_python_msda(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose plugin nodes run as the float32 onnxruntime-extensions Python op.

    Half-precision inputs of a plugin node are cast to float32 and its output back to the value
    dtype; the node keeps its name, inputs and output names stay valid for the rest of the graph.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    known_types = element_types(onnx.shape_inference.infer_shapes(model))
    nodes = []
    for original in model.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        if node.domain != CODETR_DOMAIN or node.op_type != CODETR_OP_TYPE:
            nodes.append(node)
            continue
        float_inputs = (0, 3, 4)
        types = [known_types.get(node.input[index], onnx.TensorProto.UNDEFINED) for index in float_inputs]
        unknown = [node.input[index] for index, kind in zip(float_inputs, types) if kind == onnx.TensorProto.UNDEFINED]
        if unknown:
            raise OnnxRuntimeUnsupportedError(f"node {node.name!r}: cannot infer the element type of {unknown}")
        for index, kind in zip(float_inputs, types):
            if kind in _HALF_TYPES:
                cast_name = f"{node.name}/{node.input[index]}/float32"
                nodes.append(onnx.helper.make_node("Cast", [node.input[index]], [cast_name], to=onnx.TensorProto.FLOAT, name=cast_name))
                node.input[index] = cast_name
        node.op_type = PYTHON_MSDA_OP_TYPE
        node.domain = CONTRIB_DOMAIN
        # Only im2col_step is declared by the Python op; the TensorRT plugin fields mean nothing here.
        kept = [attribute for attribute in node.attribute if attribute.name == "im2col_step"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if types[0] in _HALF_TYPES:  # the output has the value's type
            output, node.output[0] = node.output[0], f"{node.name}/output/float32"
            nodes += [node, onnx.helper.make_node("Cast", [node.output[0]], [output], to=types[0], name=f"{node.name}/output/cast")]
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    replace_opset_import(model, CODETR_DOMAIN, CONTRIB_DOMAIN)
    return model


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


def _register_python_msda() -> bool:
    """Register the float32 Python MSDA op with onnxruntime-extensions; False if it is missing.

    Done once, when this module is imported, before any session exists: onnxruntime-extensions
    rebuilds its op table on every registration, which breaks sessions created before (they
    crash when destroyed).
    """
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError:
        return False
    floats, ints = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64
    onnx_op(
        op_type=PYTHON_MSDA_OP_TYPE,
        inputs=[floats, ints, ints, floats, floats],
        outputs=[floats],
        attrs={"im2col_step": PyCustomOpDef.dt_int64},
    )(_python_msda)
    return True


_PYTHON_MSDA_REGISTERED = _register_python_msda()
