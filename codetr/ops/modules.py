"""The multiscale deformable attention layer of Deformable-DETR, DINO and Co-DETR."""

from __future__ import annotations

import math

import torch
from torch import nn

from codetr.ops.msda import msda, msda_from_offsets
from codetr.ops.msda_reference import SpatialShapes, as_shape_list, msda_reference


class MultiScaleDeformableAttention(nn.Module):
    """MSDA with learned sampling offsets and attention weights.

    Parameter names and shapes match mmcv's ``MultiScaleDeformableAttention`` so that official
    Co-DETR checkpoints load unchanged:
    ``sampling_offsets`` [M*L*P*2, C], ``attention_weights`` [M*L*P, C], ``value_proj`` [C, C],
    ``output_proj`` [C, C].

    Unlike mmcv's layer, ``forward`` adds no residual, dropout or positional embedding: the
    caller owns those. Sampling locations and attention weights are computed in float32 (float64
    for a float64 layer) even when the layer runs in float16/bfloat16: bf16 locations would be
    off by about a pixel on a 288-wide map, and the softmax is more stable in float32.

    Set ``use_reference = True`` (or call :func:`set_msda_implementation`) to run the pure-PyTorch
    ``grid_sample`` path instead of ``torch.ops.codetr.msda``, e.g. for an ONNX graph that must
    run without our plugin. Set ``fuse_inputs = True`` for inference graphs that only PyTorch
    and AOTInductor run: layers with (cx, cy) reference points (the encoder's) then call
    ``torch.ops.codetr.msda_from_offsets``, which computes the same locations and softmax inside
    the CUDA kernel instead of writing them out (no gradient: not for training).
    """

    def __init__(
        self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(
                f"embed_dims must be divisible by num_heads, got embed_dims={embed_dims} and "
                f"num_heads={num_heads}"
            )
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.use_reference = False
        self.fuse_inputs = False
        samples = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dims, samples * 2)
        self.attention_weights = nn.Linear(embed_dims, samples)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR's initialisation: head h starts sampling along the direction
        2*pi*h/M, point p at p+1 pixels; uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.num_heads, 1, 1, 2) * steps
        grid = grid.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor | SpatialShapes,
        level_start_index: torch.Tensor,
        value_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: [B, Q, C].
            reference_points: [B, Q, L, 2] normalised (cx, cy), offsets are then in pixels of
                each level; or [B, Q, L, 4] normalised (cx, cy, w, h), offsets are then
                fractions of the box.
            value: [B, S, C], the flattened feature maps of all levels.
            spatial_shapes: [L, 2] int64 (H, W) per level, or the same as a sequence of int
                pairs. The op path wants the tensor (a sequence is copied to the device on every
                call); the reference path wants the sequence when traced, since it splits value
                by level with Python ints.
            level_start_index: [L] int64, offset of each level in S.
            value_padding_mask: optional [B, S] bool, True where value is padding.

        Returns:
            [B, Q, C] in query's dtype.
        """
        batch, num_queries, _ = query.shape
        num_values = value.shape[1]
        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, self.num_heads, -1)

        location_dtype = torch.promote_types(query.dtype, torch.float32)
        reference_points = reference_points.to(location_dtype)
        sample_shape = (batch, num_queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*sample_shape, 2)
        logits = self.attention_weights(query).view(*sample_shape)
        if self.fuse_inputs and not self.use_reference and reference_points.shape[-1] == 2:
            shapes = self._shapes_tensor(spatial_shapes, value.device)
            output = msda_from_offsets(value, shapes, level_start_index, reference_points, offsets, logits)
            return self.output_proj(output)

        offsets = offsets.to(location_dtype)
        weights = logits.to(location_dtype).view(batch, num_queries, self.num_heads, -1).softmax(-1)
        weights = weights.view(sample_shape)
        if reference_points.shape[-1] == 2:
            shapes = self._shapes_tensor(spatial_shapes, value.device).to(location_dtype)
            # offsets are in pixels of each level: divide by (W, H)
            normalizer = shapes.flip(-1)[None, None, None, :, None, :]
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer
        elif reference_points.shape[-1] == 4:
            centers = reference_points[:, :, None, :, None, :2]
            sizes = reference_points[:, :, None, :, None, 2:]
            locations = centers + offsets / self.num_points * sizes * 0.5
        else:
            raise ValueError(
                "reference_points must end in 2 (cx, cy) or 4 (cx, cy, w, h), got shape "
                f"{tuple(reference_points.shape)}"
            )

        if self.use_reference:
            output = msda_reference(value, spatial_shapes, locations, weights)
        else:
            output = msda(
                value,
                self._shapes_tensor(spatial_shapes, value.device),
                level_start_index,
                locations,
                weights,
            )
        return self.output_proj(output)

    @staticmethod
    def _shapes_tensor(spatial_shapes: torch.Tensor | SpatialShapes, device) -> torch.Tensor:
        if isinstance(spatial_shapes, torch.Tensor):
            return spatial_shapes
        return torch.tensor(as_shape_list(spatial_shapes), dtype=torch.int64, device=device)


def set_msda_implementation(module: nn.Module, use_reference: bool, fuse_inputs: bool = False) -> None:
    """Switch every MultiScaleDeformableAttention inside ``module`` to the pure-PyTorch
    reference (``use_reference=True``) or to ``torch.ops.codetr.msda``; ``fuse_inputs=True``
    (op path only, inference only) lets layers with (cx, cy) reference points call
    ``torch.ops.codetr.msda_from_offsets``. Raises ValueError for both at once."""
    if use_reference and fuse_inputs:
        raise ValueError("fuse_inputs needs the op path (use_reference=False): the reference has no fused form")
    for submodule in module.modules():
        if isinstance(submodule, MultiScaleDeformableAttention):
            submodule.use_reference = use_reference
            submodule.fuse_inputs = fuse_inputs
