"""ResNet backbone: torchvision's ResNet with frozen BatchNorm, returning the selected stages.

Parameter names equal mmdet's ``ResNet`` (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), which are
torchvision's, so official checkpoints load unchanged under the ``backbone.`` prefix.
BatchNorm is frozen (``torchvision.ops.FrozenBatchNorm2d``: affine with running statistics,
no ``num_batches_tracked``); it runs in the model's dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.ops import FrozenBatchNorm2d

from codetr.config import ResNetConfig

_BLOCKS = {
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
    101: (resnet.Bottleneck, [3, 4, 23, 3]),
}


class ResNetBackbone(nn.Module):
    """images [B, 3, H, W] (normalised) -> list of stage outputs [B, C_i, H/2^(i+2), W/2^(i+2)]."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        block, layers = _BLOCKS[config.depth]
        network = resnet.ResNet(block, layers, norm_layer=FrozenBatchNorm2d)
        self.conv1 = network.conv1
        self.bn1 = network.bn1
        self.relu = network.relu
        self.maxpool = network.maxpool
        self.layer1 = network.layer1
        self.layer2 = network.layer2
        self.layer3 = network.layer3
        self.layer4 = network.layer4
        self.out_indices = config.out_indices
        widths = [64, 128, 256, 512]
        self.out_channels = [widths[i] * block.expansion for i in config.out_indices]
        # stem (conv1 + maxpool) divides by 4, each later stage by 2; every stride-2 layer pads so
        # that an output is ceil(input / 2), hence an output has ceil(H / stride) rows.
        self.strides = [4 * 2**i for i in config.out_indices]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        outputs = []
        for index, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = stage(x)
            if index in self.out_indices:
                outputs.append(x)
        return outputs
