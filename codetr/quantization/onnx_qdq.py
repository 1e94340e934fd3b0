"""ONNX translation of the Q/DQ ops of :mod:`codetr.quantization.qdq`.

The exporter's built-in translation (onnxscript's torch_lib) writes float32 scales whatever the
input dtype, which ONNX rejects for a float16 graph, and puts a Clip between every per-channel
QuantizeLinear and DequantizeLinear, which hides the Q/DQ pair from TensorRT's pattern matching.
These translations give every scale the dtype of the tensor it quantizes or produces (ONNX's
type constraint; float16 and bfloat16 need opset 19) and, since codetr quantizes to the full INT8
range [-128, 127] that QuantizeLinear saturates to, no Clip.
"""

from __future__ import annotations

import numpy as np
import torch

from codetr.quantization.qdq import QUANT_MAX, QUANT_MIN

MIN_HALF_OPSET = 19
"""First opset whose QuantizeLinear/DequantizeLinear take float16 and bfloat16."""


def check_opset(opset: int, dtype: torch.dtype) -> None:
    """Raise ValueError if an INT8 Q/DQ graph in ``dtype`` cannot be written at ``opset``."""
    if dtype != torch.float32 and opset < MIN_HALF_OPSET:
        raise ValueError(
            f"opset {opset}: an INT8 graph in {str(dtype).removeprefix('torch.')} needs opset >= "
            f"{MIN_HALF_OPSET} (QuantizeLinear/DequantizeLinear take half precision from opset 19)"
        )


def _check_range(quant_min: int, quant_max: int, dtype) -> None:
    if (quant_min, quant_max) != (QUANT_MIN, QUANT_MAX):
        raise ValueError(f"codetr writes INT8 Q/DQ with range [{QUANT_MIN}, {QUANT_MAX}], got [{quant_min}, {quant_max}]")


def qdq_translations(opset: int) -> dict:
    """custom_translation_table entries for torch.onnx.export (dynamo) at ``opset``."""
    from onnxscript import ir, values

    op = values.Opset("", opset)

    def int8_zero(shape: tuple[int, ...] = ()):
        return op.Constant(value=ir.tensor(np.zeros(shape, dtype=np.int8)))

    def scalar_like(value: float, onnx_dtype: int):
        return op.Constant(value=ir.tensor(np.array(value, dtype=ir.DataType(onnx_dtype).numpy())))

    def quantize_per_tensor(x, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype):
        _check_range(quant_min, quant_max, dtype)
        return op.QuantizeLinear(x, scalar_like(scale, x.dtype), int8_zero())

    def dequantize_per_tensor(q, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype,
                              out_dtype=None):
        _check_range(quant_min, quant_max, dtype)
        return op.DequantizeLinear(q, scalar_like(scale, out_dtype or ir.DataType.FLOAT), int8_zero())

    def quantize_per_channel(x, scales, zero_points, axis: int, quant_min: int, quant_max: int, dtype):
        _check_range(quant_min, quant_max, dtype)
        return op.QuantizeLinear(x, op.CastLike(scales, x), op.Cast(zero_points, to=ir.DataType.INT8), axis=axis)

    def dequantize_per_channel(q, scales, zero_points, axis: int, quant_min: int, quant_max: int, dtype,
                               out_dtype=None):
        _check_range(quant_min, quant_max, dtype)
        scales = op.Cast(scales, to=out_dtype or ir.DataType.FLOAT)
        return op.DequantizeLinear(q, scales, op.Cast(zero_points, to=ir.DataType.INT8), axis=axis)

    ops = torch.ops.quantized_decomposed
    return {
        ops.quantize_per_tensor.default: quantize_per_tensor,
        ops.dequantize_per_tensor.default: dequantize_per_tensor,
        ops.quantize_per_channel.default: quantize_per_channel,
        ops.dequantize_per_channel.default: dequantize_per_channel,
    }
