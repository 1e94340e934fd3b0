"""codetr.ops.MultiScaleDeformableAttention against mmcv's parameter layout and forward formula.

The expected outputs are computed here from the module's own parameters with the formula of
mmcv's MultiScaleDeformableAttention.forward (batch first, without the residual, dropout and
query_pos, which the caller adds) on top of the float64 grid_sample reference.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import relative_error

from codetr.ops import MultiScaleDeformableAttention, msda_reference, set_msda_implementation

EMBED_DIMS, HEADS, LEVELS, POINTS = 16, 2, 3, 4
SHAPES = [(6, 8), (3, 4), (2, 2)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_module(
    device: str = "cpu", dtype: torch.dtype = torch.float64
) -> MultiScaleDeformableAttention:
    """A module whose parameters are all random: the default initialisation zeroes the
    projections to offsets and weights, which would hide layout mistakes."""
    module = MultiScaleDeformableAttention(
        embed_dims=EMBED_DIMS, num_heads=HEADS, num_levels=LEVELS, num_points=POINTS
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return module.to(device, dtype)


def make_inputs(batch: int, queries: int, reference_dims: int, device: str = "cpu", seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    num_values = sum(h * w for h, w in SHAPES)
    query = torch.randn(batch, queries, EMBED_DIMS, generator=generator, dtype=torch.float64)
    value = torch.randn(batch, num_values, EMBED_DIMS, generator=generator, dtype=torch.float64)
    centres = torch.rand(batch, queries, LEVELS, 2, generator=generator, dtype=torch.float64)
    if reference_dims == 4:
        sizes = 0.05 + 0.3 * torch.rand(
            batch, queries, LEVELS, 2, generator=generator, dtype=torch.float64
        )
        reference_points = torch.cat([centres, sizes], -1)
    else:
        reference_points = centres
    spatial_shapes = torch.tensor(SHAPES, dtype=torch.int64)
    sizes_per_level = spatial_shapes.prod(1)
    level_start_index = sizes_per_level.cumsum(0) - sizes_per_level
    tensors = (query, reference_points, value, spatial_shapes, level_start_index)
    return tuple(t.to(device) for t in tensors)


def mmcv_formula(module, query, reference_points, value, spatial_shapes, value_padding_mask=None):
    """mmcv MultiScaleDeformableAttention.forward, batch first, in float64, written out here."""
    batch, queries, _ = query.shape
    value = F.linear(value, module.value_proj.weight, module.value_proj.bias)
    if value_padding_mask is not None:
        value = value.masked_fill(value_padding_mask[..., None], 0.0)
    value = value.reshape(batch, value.shape[1], HEADS, -1)
    offsets = F.linear(query, module.sampling_offsets.weight, module.sampling_offsets.bias)
    offsets = offsets.reshape(batch, queries, HEADS, LEVELS, POINTS, 2)
    weights = F.linear(query, module.attention_weights.weight, module.attention_weights.bias)
    weights = weights.reshape(batch, queries, HEADS, LEVELS * POINTS).softmax(-1)
    weights = weights.reshape(batch, queries, HEADS, LEVELS, POINTS)
    if reference_points.shape[-1] == 2:
        width_height = spatial_shapes.flip(-1).to(query)  # offsets are in pixels of each level
        locations = reference_points[:, :, None, :, None, :] + offsets / width_height[:, None, :]
    else:
        # offsets are in units of half the box size divided by the number of points
        centre, size = reference_points[..., :2], reference_points[..., 2:]
        locations = (
            centre[:, :, None, :, None, :] + offsets / POINTS * size[:, :, None, :, None, :] * 0.5
        )
    sampled = msda_reference(value, spatial_shapes, locations, weights)
    return F.linear(sampled, module.output_proj.weight, module.output_proj.bias)


def test_parameter_names_and_shapes_match_mmcv():
    module = MultiScaleDeformableAttention(embed_dims=256, num_heads=8, num_levels=5, num_points=4)
    shapes = {name: tuple(p.shape) for name, p in module.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (8 * 5 * 4 * 2, 256),
        "sampling_offsets.bias": (8 * 5 * 4 * 2,),
        "attention_weights.weight": (8 * 5 * 4, 256),
        "attention_weights.bias": (8 * 5 * 4,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


def test_mmcv_state_dict_loads_strictly():
    module = make_module()
    checkpoint = {name: torch.randn_like(p) for name, p in module.state_dict().items()}
    module.load_state_dict(checkpoint, strict=True)
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, checkpoint[name]), name


def test_default_initialisation_is_mmcv_s():
    # mmcv init_weights: offset projection weight 0 and bias = for head m the direction
    # (cos, sin)(2 pi m / M) scaled so its larger component is 1, times (point index + 1),
    # the same on every level; attention weight projection all zero (uniform softmax).
    module = MultiScaleDeformableAttention(
        embed_dims=EMBED_DIMS, num_heads=HEADS, num_levels=LEVELS, num_points=POINTS
    )
    assert not module.sampling_offsets.weight.any()
    assert not module.attention_weights.weight.any() and not module.attention_weights.bias.any()
    bias = module.sampling_offsets.bias.detach().reshape(HEADS, LEVELS, POINTS, 2)
    for head in range(HEADS):
        angle = 2 * math.pi * head / HEADS
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for point in range(POINTS):
            expected = (direction * (point + 1)).expand(LEVELS, 2)
            torch.testing.assert_close(bias[head, :, point], expected.to(bias.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reference_dims", [2, 4])
@pytest.mark.parametrize("use_reference", [False, True], ids=["op", "reference"])
def test_forward_matches_mmcv_formula(device, reference_dims, use_reference):
    module = make_module(device)
    module.use_reference = use_reference
    query, reference_points, value, spatial_shapes, level_start_index = make_inputs(
        2, 7, reference_dims, device
    )
    output = module(query, reference_points, value, spatial_shapes, level_start_index)
    assert output.shape == (2, 7, EMBED_DIMS)
    expected = mmcv_formula(module, query, reference_points, value, spatial_shapes)
    torch.testing.assert_close(output, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_op_and_reference_paths_agree_in_gradients(device):
    module = make_module(device)
    inputs = make_inputs(2, 5, 2, device)
    query, value = inputs[0].requires_grad_(), inputs[2].requires_grad_()
    results = []
    for use_reference in (False, True):
        module.use_reference = use_reference
        output = module(*inputs)
        results.append(
            torch.autograd.grad(output.square().sum(), [query, value, *module.parameters()])
        )
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_reference", [False, True], ids=["op", "reference"])
def test_value_padding_mask_zeroes_padded_values(device, use_reference):
    module = make_module(device)
    module.use_reference = use_reference
    query, reference_points, value, spatial_shapes, level_start_index = make_inputs(2, 6, 2, device)
    mask = torch.zeros(value.shape[:2], dtype=torch.bool, device=device)
    mask[0, 10:30] = True
    mask[1, -5:] = True
    output = module(query, reference_points, value, spatial_shapes, level_start_index, mask)
    expected = mmcv_formula(module, query, reference_points, value, spatial_shapes, mask)
    torch.testing.assert_close(output, expected, rtol=1e-9, atol=1e-10)
    # Whatever sits in the padded positions has no effect on the result.
    garbage = torch.where(mask[..., None], torch.full_like(value, 1e6), value)
    changed = module(query, reference_points, garbage, spatial_shapes, level_start_index, mask)
    torch.testing.assert_close(changed, output, rtol=1e-9, atol=1e-10)


def test_set_msda_implementation_reaches_nested_modules():
    model = torch.nn.ModuleDict(
        {"encoder": torch.nn.ModuleList([make_module(), make_module()]), "decoder": make_module()}
    )
    attentions = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert len(attentions) == 3 and not any(m.use_reference for m in attentions)
    set_msda_implementation(model, use_reference=True)
    assert all(m.use_reference for m in attentions)
    set_msda_implementation(model, use_reference=False)
    assert not any(m.use_reference for m in attentions)


def test_reference_points_with_three_coordinates_are_rejected():
    module = make_module()
    query, reference_points, value, spatial_shapes, level_start_index = make_inputs(1, 3, 4)
    with pytest.raises(ValueError, match="reference_points"):
        module(query, reference_points[..., :3], value, spatial_shapes, level_start_index)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_module_in_lower_precision(device, dtype):
    # Whole-module error against the float64 formula on the same parameters and inputs cast to
    # dtype. Rounding of inputs, parameters and each of the four projections' outputs to dtype
    # dominates (unit roundoff 2^-11 fp16, 2^-8 bf16; the layer keeps locations and weights in
    # float32): measured on CPU 2e-7, 1.1e-3, 8.6e-3, bounded at about 3x that.
    tolerance = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}[dtype]
    module64 = make_module(device)
    module = make_module(device, dtype)
    inputs = make_inputs(2, 50, 4, device)
    low = tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)
    with torch.no_grad():
        output = module(*low)
        expected = mmcv_formula(module64, *inputs[:4])
    assert output.dtype == dtype
    assert relative_error(output, expected) < tolerance
