"""Small building blocks shared by the backbone and the transformer."""

from __future__ import annotations

import torch
from torch import nn


class FFN(nn.Module):
    """mmcv ``FFN`` with identity: ``x + Linear(act(Linear(x)))``.

    Parameter names follow mmcv: ``layers.0.0`` (expand) and ``layers.1`` (project back).
    """

    def __init__(self, embed_dims: int, hidden_dims: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, hidden_dims), activation()),
            nn.Linear(hidden_dims, embed_dims),
        )

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return identity + self.layers(x)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """log(x / (1 - x)) with both terms clamped to >= eps, as in mmdet (eps=1e-3 in DINO)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
