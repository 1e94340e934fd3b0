"""Swin Transformer (v1) backbone with mmdetection 3.x parameter names.

Layout (prefix ``backbone.``): ``patch_embed.projection``, ``patch_embed.norm``,
``stages.{i}.blocks.{j}.{norm1, attn.w_msa.{relative_position_bias_table, qkv, proj}, norm2,
ffn.layers.{0.0, 1}}``, ``stages.{i}.downsample.{norm, reduction}``, ``norm{i}`` per output.
Patch merging concatenates the 2x2 neighbours channel-major in ``nn.Unfold`` order
(index = c * 4 + 2 * row + col), the mmdet 3.x convention; Sense-X / original Swin checkpoints
(``backbone.layers.*``, neighbour-major order) are converted by :mod:`codetr.checkpoint`.

Precision: window-attention softmax runs in at least float32 (the -100 shift mask and the bias table
make fp16 logits lose resolution; a float64 model stays float64); LayerNorm runs in the model dtype
(PyTorch accumulates in float32).
Shapes are handled with tensor arithmetic only, so torch.export works with dynamic H/W.
"""

from __future__ import annotations

import torch
from torch import nn

from codetr.config import SwinConfig
from codetr.models.common import FFN

_SHIFT_MASK_VALUE = -100.0  # value used by both official implementations


def resize_bottom_right(x: torch.Tensor, height: int, width: int, spatial_dim: int) -> torch.Tensor:
    """Zero-pads or crops dims (spatial_dim, spatial_dim + 1) of x at the end to (height, width).

    Written as a clamped gather times a validity mask rather than F.pad / slicing: those
    special-case a zero amount (or a full slice) and torch.export would specialise the graph to
    whether the example input needed padding at each stage. Costs one extra copy of the map.
    """
    for dim, size in ((spatial_dim, height), (spatial_dim + 1, width)):
        current = x.shape[dim]
        positions = torch.arange(size, device=x.device)
        x = x.index_select(dim, positions.clamp(max=current - 1))
        valid = (positions < current).to(x.dtype)
        x = x * valid.view([size if axis == dim else 1 for axis in range(x.ndim)])
    return x


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of window) -> [B * nW, window * window, C]."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: -> [B, H, W, C]."""
    channels = windows.shape[-1]
    x = windows.view(batch, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask [nW, T, T] keeping attention inside the regions a cyclic shift joined."""

    def regions(size: int) -> torch.Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()

    region = regions(height)[:, None] * 3 + regions(width)[None, :]
    windows = window_partition(region[None, :, :, None], window).squeeze(-1)
    different = windows[:, None, :] != windows[:, :, None]
    return different.float() * _SHIFT_MASK_VALUE


class WindowMSA(nn.Module):
    """Window multi-head self-attention with a relative position bias."""

    def __init__(self, embed_dims: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]) + (window - 1)
        index = relative[0] * (2 * window - 1) + relative[1]
        # Derived from the window size; official checkpoints store it too, the loader checks it.
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(embed_dims, embed_dims * 3)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """windows [N, T, C], mask [nW, T, T] or None -> [N, T, C]."""
        count, tokens, channels = windows.shape
        qkv = self.qkv(windows).reshape(count, tokens, 3, self.num_heads, channels // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        logits = (query * self.scale) @ key.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        softmax_dtype = torch.promote_types(logits.dtype, torch.float32)
        logits = logits.to(softmax_dtype) + bias.view(tokens, tokens, -1).permute(2, 0, 1).to(softmax_dtype)
        if mask is not None:
            num_windows = mask.shape[0]
            logits = logits.view(-1, num_windows, self.num_heads, tokens, tokens) + mask[None, :, None]
            logits = logits.view(-1, self.num_heads, tokens, tokens)
        weights = logits.softmax(-1).to(value.dtype)
        output = (weights @ value).transpose(1, 2).reshape(count, tokens, channels)
        return self.proj(output)


class ShiftWindowMSA(nn.Module):
    """Pads to whole windows, optionally shifts cyclically, attends per window, undoes both."""

    def __init__(self, embed_dims: int, num_heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.w_msa = WindowMSA(embed_dims, num_heads, window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        batch, height, width, _ = x.shape
        window = self.window
        # Padded sizes written as (number of windows) * window: symbolic shapes then divide
        # exactly, which keeps torch.export's shape reasoning fast and guard-free.
        padded_height = (height + window - 1) // window * window
        padded_width = (width + window - 1) // window * window
        x = resize_bottom_right(x, padded_height, padded_width, spatial_dim=1)
        mask = None
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
            mask = shifted_window_mask(padded_height, padded_width, window, self.shift, x.device)
        windows = self.w_msa(window_partition(x, window), mask)
        x = window_reverse(windows, window, batch, padded_height, padded_width)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        return resize_bottom_right(x, height, width, spatial_dim=1)


class SwinBlock(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window, shift)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, int(embed_dims * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return self.ffn(self.norm2(x), identity=x)


class PatchMerging(nn.Module):
    """2x2 neighbours -> channels (unfold order), LayerNorm, linear 4C -> 2C; pads odd sizes."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, 2 * in_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]."""
        x = resize_bottom_right(x, (x.shape[1] + 1) // 2 * 2, (x.shape[2] + 1) // 2 * 2, spatial_dim=1)
        neighbours = (x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2])
        x = torch.stack(neighbours, dim=-1).flatten(-2)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, embed_dims: int, depth: int, num_heads: int, window: int, mlp_ratio: float, downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, window, 0 if index % 2 == 0 else window // 2, mlp_ratio)
            for index in range(depth)
        )
        self.downsample = PatchMerging(embed_dims) if downsample else None


class PatchEmbed(nn.Module):
    def __init__(self, embed_dims: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(3, embed_dims, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> [B, ceil(H/p), ceil(W/p), C] (bottom/right zero padding)."""
        size = self.patch_size
        height, width = images.shape[2], images.shape[3]
        images = resize_bottom_right(images, (height + size - 1) // size * size, (width + size - 1) // size * size, spatial_dim=2)
        return self.norm(self.projection(images).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """images [B, 3, H, W] (normalised) -> [B, C_i, H/2^(i+2), W/2^(i+2)] for i in out_indices."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        if len(config.depths) != len(config.num_heads):
            raise ValueError("swin depths and num_heads must have the same length")
        self.out_indices = config.out_indices
        self.patch_embed = PatchEmbed(config.embed_dims, config.patch_size)
        widths = [config.embed_dims * 2**index for index in range(len(config.depths))]
        self.stages = nn.ModuleList(
            SwinStage(width, depth, heads, config.window_size, config.mlp_ratio, index < len(widths) - 1)
            for index, (width, depth, heads) in enumerate(zip(widths, config.depths, config.num_heads))
        )
        for index in config.out_indices:
            self.add_module(f"norm{index}", nn.LayerNorm(widths[index]))
        self.out_channels = [widths[index] for index in config.out_indices]
        # patch embedding divides by patch_size, each patch merging by 2; both pad bottom/right,
        # so an output has ceil(H / stride) rows.
        self.strides = [config.patch_size * 2**index for index in config.out_indices]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)
        outputs = []
        for index, stage in enumerate(self.stages):
            for block in stage.blocks:
                x = block(x)
            if index in self.out_indices:
                outputs.append(getattr(self, f"norm{index}")(x).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outputs
