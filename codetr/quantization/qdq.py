"""Export-friendly INT8 quantize-dequantize (fake-quant) modules.

Each op pair is ``torch.ops.quantized_decomposed.quantize_*`` followed by ``dequantize_*``:
PyTorch runs them on any device, torch.export keeps them as graph nodes and the dynamo ONNX
exporter translates them to ``QuantizeLinear`` / ``DequantizeLinear``, the Q/DQ form TensorRT
builds INT8 layers from (its "explicit quantization").

The quantization is symmetric INT8 with zero point 0 and ``scale = amax / 127``, as ModelOpt's
TensorQuantizer and TensorRT use; values saturate to [-128, 127], the range ONNX QuantizeLinear
saturates to by itself, so the graph needs no extra Clip. Weights are quantized per output
channel (axis 0), activations per tensor.
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
from torch import nn
from torch.nn import functional as F

QUANT_MIN, QUANT_MAX = -128, 127
SCALE_DIVISOR = 127.0
"""scale = amax / 127: the largest calibrated magnitude maps to the largest positive INT8 value."""
_ops = torch.ops.quantized_decomposed


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """float32 scale(s) of ``amax`` (any shape; flattened). A zero amax (an all-zero weight row
    or a never-nonzero activation) gets the smallest normal float32 as its scale instead of 0,
    which QuantizeLinear would divide by."""
    amax = amax.detach().float().flatten()
    return (amax / SCALE_DIVISOR).clamp_min(torch.finfo(torch.float32).tiny)


class QuantDequant(nn.Module):
    """INT8 quantize-then-dequantize of a tensor: ``clamp(round(x / scale), -128, 127) * scale``.

    ``amax``: scalar (per tensor) or [C] (per channel along ``axis``). Input and output have the
    same shape and floating dtype. The scale is a buffer and follows the module's dtype, so an
    exported float16 graph carries float16 scales, as ONNX DequantizeLinear requires.
    """

    def __init__(self, amax: torch.Tensor, axis: int | None = None) -> None:
        super().__init__()
        self.axis = axis
        scale = scale_from_amax(amax)
        if axis is None and scale.numel() != 1:
            raise ValueError(f"a per-tensor QuantDequant needs one amax, got {scale.numel()}")
        if axis is None:
            # A Python float: the per-tensor ops translate to ONNX only with a constant scale.
            self.tensor_scale = float(scale)
        else:
            self.register_buffer("scale", scale)
            self.register_buffer("zero_point", torch.zeros(scale.shape, dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            q = _ops.quantize_per_tensor(x, self.tensor_scale, 0, QUANT_MIN, QUANT_MAX, torch.int8)
            return _ops.dequantize_per_tensor(q, self.tensor_scale, 0, QUANT_MIN, QUANT_MAX, torch.int8, out_dtype=x.dtype)
        q = _ops.quantize_per_channel(x, self.scale, self.zero_point, self.axis, QUANT_MIN, QUANT_MAX, torch.int8)
        return _ops.dequantize_per_channel(
            q, self.scale, self.zero_point, self.axis, QUANT_MIN, QUANT_MAX, torch.int8, out_dtype=x.dtype
        )

    def extra_repr(self) -> str:
        return f"per tensor, scale {self.tensor_scale:.6g}" if self.axis is None else f"per channel, axis {self.axis}"


class QuantizedLinear(nn.Module):
    """``linear`` with INT8 Q/DQ on its input (per tensor) and weight (per output channel).

    ``input_amax``: scalar; ``weight_amax``: [out_features] or any shape with that many values.
    Keeps the float weight and bias (parameters ``weight``, ``bias``) so dtype and device moves
    work as for nn.Linear.
    """

    def __init__(self, linear: nn.Linear, input_amax: torch.Tensor, weight_amax: torch.Tensor) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.input_quantizer = QuantDequant(input_amax)
        self.weight_quantizer = QuantDequant(weight_amax, axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantizedConv2d(nn.Module):
    """``conv`` (an nn.Conv2d) with INT8 Q/DQ on its input (per tensor) and weight (per output
    channel); see :class:`QuantizedLinear`."""

    def __init__(self, conv: nn.Conv2d, input_amax: torch.Tensor, weight_amax: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.input_quantizer = QuantDequant(input_amax)
        self.weight_quantizer = QuantDequant(weight_amax, axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.conv.weight), self.conv.bias)


def quantized_module(module: nn.Module, input_amax: torch.Tensor, weight_amax: torch.Tensor) -> nn.Module:
    """The Q/DQ replacement of an nn.Linear or nn.Conv2d; ValueError for any other module."""
    if isinstance(module, nn.Linear):
        return QuantizedLinear(module, input_amax, weight_amax)
    if isinstance(module, nn.Conv2d):
        return QuantizedConv2d(module, input_amax, weight_amax)
    raise ValueError(f"INT8 Q/DQ supports nn.Linear and nn.Conv2d, not {type(module).__name__}")
