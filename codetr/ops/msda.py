"""``torch.ops.codetr.msda``: multiscale deformable attention, with autograd and fake tensors.

Importing this module loads the compiled library (``codetr._C``: the CPU and CUDA kernels and the
autograd formula, with gradients for value, sampling_locations and attention_weights) and
registers the fake (meta) implementations used by FakeTensor tracing, torch.compile and
torch.export.
"""

from __future__ import annotations

import torch

try:
    from codetr import _C  # noqa: F401  (loading the library registers torch.ops.codetr.*)
except ImportError as error:
    raise ImportError(
        f"codetr's compiled library (codetr._C) cannot be loaded: {error}. Build it against the installed "
        "torch with: bash scripts/install.sh (or pip install --no-build-isolation -e .)"
    ) from error

__all__ = ["MSDA_CHECK_VARIABLE", "msda", "msda_from_offsets", "set_msda_checks"]

MSDA_CHECK_VARIABLE = "CODETR_MSDA_CHECK"
"""Environment variable read when the library loads: any value but empty or ``0`` turns the level
checks of :func:`set_msda_checks` on from the start."""


def set_msda_checks(enabled: bool) -> bool:
    """Turns the value checks of ``spatial_shapes`` / ``level_start_index`` on or off for CUDA
    inputs; returns the previous setting (process-wide).

    The contract, one for every device: the op raises (RuntimeError, the same message on CPU and
    CUDA) when a level's (H, W) is not positive, ``level_start_index`` is not the running sum of
    H*W, or the levels do not add up to S = value.shape[1] -- wherever checking is free. On CPU
    it always is. On CUDA those values live on the device, and reading them costs a copy to the
    host and a sync per call, so by default CUDA does not check: a level that does not fit inside
    ``value`` reads as zeros (its points contribute nothing and get zero gradients; nothing is
    read out of bounds). Turn the checks on to debug such inputs (``CODETR_MSDA_CHECK=1`` in the
    environment does it from the start). Shapes, dtypes and devices are checked always.
    """
    return torch.ops.codetr.set_msda_checks(bool(enabled))


def msda(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Multiscale deformable attention (Deformable-DETR semantics).

    Args:
        value: [B, S, M, D] values of all levels, flattened row-major per level, S = sum H_l*W_l.
        spatial_shapes: [L, 2] int64, (H_l, W_l) of each level.
        level_start_index: [L] int64, offset of each level's first row in S.
        sampling_locations: [B, Q, M, L, P, 2] normalised (x, y); (0, 0) is the top-left corner
            of the map and (1, 1) the bottom-right one, pixel centres at (i + 0.5) / size.
        attention_weights: [B, Q, M, L, P].
        im2col_step: accepted for compatibility with Deformable-DETR's and torchvision's
            ``deform_attn``; the kernels need no batch chunking, so any positive value gives the
            same result and B need not be divisible by it.

    Returns:
        [B, Q, M*D] in value's dtype: for each query and head, the sum over levels and points of
        attention weight times the bilinearly sampled value (align_corners=False; zeros outside
        the map).

    float64, float32, float16 and bfloat16 values are supported on CPU and CUDA, accumulating in
    float32 (float64). With a float16/bfloat16 value, sampling_locations and attention_weights
    may stay float32, which keeps sub-pixel precision on large maps.

    Raises TypeError naming an argument that is not a tensor; RuntimeError naming the argument
    for wrong ranks, sizes, dtypes or devices, and for level values that do not fit ``value``
    (always on CPU; on CUDA with :func:`set_msda_checks`, else such a level reads as zeros).
    """
    _require_tensors("msda", value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                     sampling_locations=sampling_locations, attention_weights=attention_weights)
    return torch.ops.codetr.msda(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
    )


def msda_from_offsets(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_logits: torch.Tensor,
) -> torch.Tensor:
    """:func:`msda` from the attention layer's raw projections, for inference.

    Computes, in ``reference_points``' dtype,
    ``sampling_locations = reference_points[:, :, None, :, None, :] + sampling_offsets / (W_l, H_l)``
    and ``attention_weights = softmax(attention_logits)`` over each (query, head)'s L*P points
    (Deformable-DETR's ``MSDeformAttn.forward`` for 2-d reference points), then :func:`msda`.
    On CUDA the fast forward (encoder-sized problems, P = 4) does this inside its sampling loop,
    in float32 whatever the reference points' dtype (pixel coordinates without the division,
    a fast exponential: about 1e-5 relative from the composition in float32), so the locations
    and weights, [B, Q, M, L, P] each, are never written to memory; elsewhere the op runs
    exactly that composition.

    Args:
        value: [B, S, M, D] as for :func:`msda`.
        spatial_shapes: [L, 2] int64 (H_l, W_l).
        level_start_index: [L] int64.
        reference_points: [B, Q, L, 2] normalised (x, y) per level; value's dtype, or float32
            with a float16/bfloat16 value.
        sampling_offsets: [B, Q, M, L, P, 2] (x, y) in pixels of each level, value's dtype.
        attention_logits: [B, Q, M, L, P] before the softmax, value's dtype.

    Returns:
        [B, Q, M*D] in value's dtype.

    Raises TypeError naming an argument that is not a tensor; RuntimeError naming the argument
    for wrong ranks, sizes, dtypes or devices, and when an input requires a gradient: the op has
    no backward (training calls :func:`msda`).
    """
    _require_tensors("msda_from_offsets", value=value, spatial_shapes=spatial_shapes,
                     level_start_index=level_start_index, reference_points=reference_points,
                     sampling_offsets=sampling_offsets, attention_logits=attention_logits)
    return torch.ops.codetr.msda_from_offsets(
        value, spatial_shapes, level_start_index, reference_points, sampling_offsets, attention_logits
    )


def _require_tensors(op: str, **arguments: object) -> None:
    """TypeError naming the first of ``arguments`` that is not a tensor (the dispatcher would say
    only "tensor does not have a device", naming none)."""
    for name, given in arguments.items():
        if not isinstance(given, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(given).__name__}")


def _check_fake_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    samples: torch.Tensor,
    weights: torch.Tensor,
    im2col_step: int,
    op: str = "msda",
    names: tuple[str, str] = ("sampling_locations", "attention_weights"),
) -> None:
    """Trace-time checks of msda's inputs (and msda_from_offsets', whose offsets and logits stand
    where the locations and weights do: ``op`` and ``names`` name them in the errors)."""
    # The kernels check everything; at trace time only what a fake tensor can tell is checked
    # (ranks, sizes, dtypes, devices), so that mistakes surface while exporting instead of at run time.
    samples_name, weights_name = names
    torch._check(im2col_step > 0, lambda: f"{op}: im2col_step must be positive, got {im2col_step}")
    torch._check(value.dim() == 4, lambda: f"{op}: value must be [B, S, M, D], got {value.shape}")
    torch._check(
        spatial_shapes.dim() == 2 and spatial_shapes.dtype == torch.int64,
        lambda: f"{op}: spatial_shapes must be an int64 [L, 2], got {spatial_shapes.dtype} "
        f"{spatial_shapes.shape}",
    )
    torch._check(
        level_start_index.dim() == 1 and level_start_index.dtype == torch.int64,
        lambda: f"{op}: level_start_index must be an int64 [L], got {level_start_index.dtype} "
        f"{level_start_index.shape}",
    )
    torch._check(samples.dim() == 6, lambda: f"{op}: {samples_name} must be [B, Q, M, L, P, 2], got {samples.shape}")
    torch._check(weights.dim() == 5, lambda: f"{op}: {weights_name} must be [B, Q, M, L, P], got {weights.shape}")
    batch, _, heads, _ = value.shape
    levels, queries, points = spatial_shapes.shape[0], samples.shape[1], samples.shape[4]
    _check_fake_shape(op, "spatial_shapes", spatial_shapes, (levels, 2))
    _check_fake_shape(op, "level_start_index", level_start_index, (levels,))
    _check_fake_shape(op, samples_name, samples, (batch, queries, heads, levels, points, 2))
    _check_fake_shape(op, weights_name, weights, (batch, queries, heads, levels, points))
    torch._check(
        weights.dtype == samples.dtype,
        lambda: f"{op}: {weights_name} must have {samples_name}' dtype ({samples.dtype}), got {weights.dtype}",
    )
    for name, tensor in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index),
                         (samples_name, samples), (weights_name, weights)):
        torch._check(
            tensor.device == value.device,
            lambda: f"{op}: {name} must be on value's device ({value.device}), got {tensor.device}",
        )


def _check_fake_location_dtype(op: str, name: str, tensor: torch.Tensor, value: torch.Tensor) -> None:
    """Locations (and reference points) have value's dtype, or float32 with a half-precision value."""
    half_value = value.dtype in (torch.float16, torch.bfloat16)
    torch._check(
        tensor.dtype == value.dtype or (half_value and tensor.dtype == torch.float32),
        lambda: f"{op}: {name} must have value's dtype ({value.dtype}){' or float32' if half_value else ''}, "
        f"got {tensor.dtype}",
    )


def _check_fake_shape(op: str, name: str, tensor: torch.Tensor, expected: tuple) -> None:
    """Each size of ``tensor`` equals ``expected`` (symbolic sizes: a guard, as export wants)."""
    for size, wanted in zip(tensor.shape, expected, strict=True):
        torch._check(
            size == wanted,
            lambda: f"{op}: {name} must be {[str(e) for e in expected]}, got {list(tensor.shape)}",
        )


@torch.library.register_fake("codetr::msda")
def _msda_fake(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step=64
):
    _check_fake_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
    )
    _check_fake_location_dtype("msda", "sampling_locations", sampling_locations, value)
    batch, _, heads, channels = value.shape
    queries = sampling_locations.shape[1]
    return value.new_empty((batch, queries, heads * channels))


@torch.library.register_fake("codetr::msda_from_offsets")
def _msda_from_offsets_fake(
    value, spatial_shapes, level_start_index, reference_points, sampling_offsets, attention_logits
):
    op = "msda_from_offsets"
    for name, tensor in (("sampling_offsets", sampling_offsets), ("attention_logits", attention_logits)):
        torch._check(
            tensor.dtype == value.dtype,
            lambda: f"{op}: {name} must have value's dtype ({value.dtype}), got {tensor.dtype}",
        )
    _check_fake_inputs(
        value, spatial_shapes, level_start_index, sampling_offsets, attention_logits, 64,
        op=op, names=("sampling_offsets", "attention_logits"),
    )
    torch._check(
        reference_points.dim() == 4,
        lambda: f"{op}: reference_points must be [B, Q, L, 2], got {reference_points.shape}",
    )
    batch, queries, heads, levels = sampling_offsets.shape[:4]
    _check_fake_shape(op, "reference_points", reference_points, (batch, queries, levels, 2))
    _check_fake_location_dtype(op, "reference_points", reference_points, value)
    torch._check(
        reference_points.device == value.device,
        lambda: f"{op}: reference_points must be on value's device ({value.device}), got {reference_points.device}",
    )
    return value.new_empty((batch, queries, heads * value.shape[3]))


@torch.library.register_fake("codetr::msda_backward")
def _msda_backward_fake(
    grad_output,
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    im2col_step=64,
):
    _check_fake_inputs(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
    )
    return (
        torch.empty_like(value, memory_format=torch.contiguous_format),
        torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
        torch.empty_like(attention_weights, memory_format=torch.contiguous_format),
    )
