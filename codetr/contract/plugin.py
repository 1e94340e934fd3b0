"""The ONNX node that stands for multiscale deformable attention, for each TensorRT plugin.

Ours (``csrc/tensorrt/msda_plugin``): op_type ``CodetrMSDA``, domain ``codetr`` (opset version
1), inputs in ``torch.ops.codetr.msda`` order (value [B,S,M,D], spatial_shapes int64 [L,2],
level_start_index int64 [L], sampling_locations [B,Q,M,L,P,2], attention_weights [B,Q,M,L,P]),
one output [B,Q,M*D] in value's dtype, attributes ``im2col_step`` (int, accepted and ignored),
``plugin_version`` "1", ``plugin_namespace`` "codetr". TensorRT's ONNX parser maps a node it has
no importer for to the registered plugin whose name is the op_type, with the version and
namespace given by those two attributes.

NVIDIA's stock plugin (TensorRT OSS ``plugin/multiscaleDeformableAttnPlugin``, IPluginV3):
op_type ``MultiscaleDeformableAttnPlugin_TRT``, version "2", namespace "", no fields; same five
inputs but spatial_shapes/level_start_index int32 and all float inputs in value's dtype
(float32 or float16); output [N, Lq, M, D].
"""

import onnx

ONNX_IR_VERSION = 10
"""IR version of every ONNX file codetr writes: ONNX Runtime 1.31 reads up to 13 and TensorRT 10's
parser up to 10, while onnx >= 1.20 writes 14 by default; nothing here needs more than 10."""


CODETR_OP_TYPE = "CodetrMSDA"
CODETR_DOMAIN = "codetr"
CODETR_DOMAIN_VERSION = 1
CODETR_PLUGIN_VERSION = "1"
CODETR_PLUGIN_NAMESPACE = "codetr"
DEFAULT_IM2COL_STEP = 64
"""im2col_step of Deformable-DETR's op; the kernels ignore it (any positive value gives the same result)."""

NVIDIA_OP_TYPE = "MultiscaleDeformableAttnPlugin_TRT"
NVIDIA_PLUGIN_VERSION = "2"
NVIDIA_PLUGIN_NAMESPACE = ""
# The parser ignores the domain; a non-default one keeps onnx.checker from looking for a
# standard-op schema.
NVIDIA_DOMAIN = "trt.plugins"


def register_codetr_msda_schema() -> None:
    """Make ``codetr::CodetrMSDA`` known to onnx (process-wide, idempotent).

    With a schema, onnxscript can emit the node while translating and ``onnx.checker`` checks
    its inputs, types and attributes instead of skipping an unknown op.
    """
    if onnx.defs.has(CODETR_OP_TYPE, CODETR_DOMAIN):
        return
    schema = onnx.defs.OpSchema
    floats = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    onnx.defs.register_schema(
        schema(
            CODETR_OP_TYPE,
            CODETR_DOMAIN,
            CODETR_DOMAIN_VERSION,
            "Multiscale deformable attention (Deformable DETR); see codetr.contract.plugin.",
            inputs=[
                schema.FormalParameter("value", "T", "[B, S, M, D]"),
                schema.FormalParameter("spatial_shapes", "tensor(int64)", "[L, 2] (H, W) per level"),
                schema.FormalParameter("level_start_index", "tensor(int64)", "[L]"),
                schema.FormalParameter("sampling_locations", "U", "[B, Q, M, L, P, 2] normalised (x, y)"),
                schema.FormalParameter("attention_weights", "U", "[B, Q, M, L, P]"),
            ],
            outputs=[schema.FormalParameter("output", "T", "[B, Q, M*D]")],
            type_constraints=[
                ("T", floats, "value and output"),
                ("U", floats, "sampling locations and attention weights"),
            ],
            attributes=[
                schema.Attribute("im2col_step", schema.AttrType.INT, "accepted and ignored", required=False),
                schema.Attribute("plugin_version", schema.AttrType.STRING, "TensorRT plugin version"),
                schema.Attribute("plugin_namespace", schema.AttrType.STRING, "TensorRT plugin namespace"),
            ],
        )
    )
