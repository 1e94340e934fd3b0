"""ChannelMapper neck (mmdet ``ChannelMapper`` with GroupNorm, no activation).

Names: ``convs.{i}.conv`` (1x1, no bias) + ``convs.{i}.gn``; ``extra_convs.{j}.conv`` (3x3,
stride 2, no bias) + ``extra_convs.{j}.gn``. The first extra conv reads the last backbone output,
later ones the previous extra level. GroupNorm runs in the model dtype (PyTorch accumulates its
statistics in float32 for half inputs).
"""

from __future__ import annotations

import torch
from torch import nn

from codetr.config import NeckConfig


class ConvGN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, num_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x))


class ChannelMapper(nn.Module):
    """list of [B, C_i, H_i, W_i] -> list of num_outs maps [B, out_channels, H_l, W_l]."""

    def __init__(self, config: NeckConfig) -> None:
        super().__init__()
        if config.num_outs < len(config.in_channels):
            raise ValueError("neck num_outs must be >= the number of backbone outputs")
        self.convs = nn.ModuleList(
            ConvGN(channels, config.out_channels, 1, 1, config.num_groups) for channels in config.in_channels
        )
        extra_inputs = [config.in_channels[-1]] + [config.out_channels] * (config.num_outs - len(config.in_channels) - 1)
        self.extra_convs = nn.ModuleList(
            ConvGN(channels, config.out_channels, 3, 2, config.num_groups)
            for channels in extra_inputs[: config.num_outs - len(config.in_channels)]
        )

    def strides(self, input_strides: list[int]) -> list[int]:
        """Output strides for backbone outputs at ``input_strides``: each extra level halves the
        previous one (3x3 stride-2 convolution, padding 1: ceil(H / 2) rows)."""
        return list(input_strides) + [input_strides[-1] * 2 ** (index + 1) for index in range(len(self.extra_convs))]

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = [conv(x) for conv, x in zip(self.convs, inputs)]
        for index, conv in enumerate(self.extra_convs):
            outputs.append(conv(inputs[-1] if index == 0 else outputs[-1]))
        return outputs
