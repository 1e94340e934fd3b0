"""Sine positional encodings of DETR-style models, computed in float32.

Both return channels as [y-part, x-part(, w-part, h-part)], each part interleaving
sin(even frequency index) and cos(odd frequency index), as mmdet does.
"""

from __future__ import annotations

import math

import torch


def _interleave_sin_cos(positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """positions [...] -> [..., F]: sin for even, cos for odd frequency slots."""
    angles = positions[..., None] / frequencies
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def _frequencies(num_feats: int, temperature: float, device: torch.device) -> torch.Tensor:
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)


def sine_mask_encoding(mask: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """mmdet ``SinePositionalEncoding(normalize=True)``: mask [B, H, W] bool (True = padding)
    -> [B, 2 * num_feats, H, W] float32, coordinates counted over valid pixels, scaled to 2*pi."""
    valid = (~mask).to(torch.float32)
    y_embed = valid.cumsum(1)
    x_embed = valid.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    frequencies = _frequencies(num_feats, temperature, mask.device)
    encoding = torch.cat((_interleave_sin_cos(y_embed, frequencies), _interleave_sin_cos(x_embed, frequencies)), dim=-1)
    return encoding.permute(0, 3, 1, 2)


def sine_box_encoding(boxes: torch.Tensor, num_feats: int) -> torch.Tensor:
    """DINO ``gen_sineembed_for_position``: boxes [B, Q, 4] normalised (cx, cy, w, h)
    -> [B, Q, 4 * num_feats] float32 ordered (y, x, w, h), temperature 10000."""
    frequencies = _frequencies(num_feats, 10000.0, boxes.device)
    scaled = boxes.to(torch.float32) * (2 * math.pi)
    parts = [_interleave_sin_cos(scaled[..., index], frequencies) for index in (1, 0, 2, 3)]
    return torch.cat(parts, dim=-1)
