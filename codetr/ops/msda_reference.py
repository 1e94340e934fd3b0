"""Multiscale deformable attention in plain PyTorch (``grid_sample``).

This is the oracle the kernels are tested against and the "decomposed" form the ONNX export
uses for runtimes without our plugin. It runs on any device and any floating dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SpatialShapes = Sequence[tuple[int, int]]


def as_shape_list(spatial_shapes: torch.Tensor | SpatialShapes) -> list[tuple[int, int]]:
    """(H, W) pairs as Python ints, from an [L, 2] tensor or a sequence of pairs."""
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(h, w) for h, w in spatial_shapes]


def msda_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Same semantics as :func:`codetr.ops.msda`, without the level start indices.

    value [B, S, M, D]; sampling_locations [B, Q, M, L, P, 2] as normalised (x, y);
    attention_weights [B, Q, M, L, P]; returns [B, Q, M*D] in value's dtype.
    The arithmetic runs in the wider of value's and sampling_locations' dtypes, so float32
    locations keep their precision when value is float16 or bfloat16. Raises RuntimeError when
    S is not the sum of the levels' H*W.
    """
    shapes = as_shape_list(spatial_shapes)
    total = sum(height * width for height, width in shapes)
    # torch._check, not an if: with symbolic sizes (torch.export) it is a shape assertion, not a guard.
    torch._check(
        value.shape[1] == total,
        lambda: f"msda_reference: value has S = {value.shape[1]} rows but spatial_shapes {shapes} give sum(H*W) = {total}",
    )
    batch, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    compute_dtype = torch.promote_types(value.dtype, sampling_locations.dtype)

    value_levels = value.to(compute_dtype).split([h * w for h, w in shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1]; align_corners=False matches the kernels'
    # "pixel centres at (i + 0.5) / size" convention.
    grids = 2 * sampling_locations.to(compute_dtype) - 1
    sampled = []
    for level, (height, width) in enumerate(shapes):
        # [B, H*W, M, D] -> [B*M, D, H, W]
        level_value = value_levels[level].flatten(2).transpose(1, 2)
        level_value = level_value.reshape(batch * heads, channels, height, width)
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(
                level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )
    # [B, Q, M, L, P] -> [B*M, 1, Q, L*P]
    weights = attention_weights.to(compute_dtype).transpose(1, 2)
    weights = weights.reshape(batch * heads, 1, queries, levels * points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    output = output.view(batch, heads * channels, queries).transpose(1, 2)
    return output.to(value.dtype).contiguous()
