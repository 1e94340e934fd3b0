"""torch.ops.codetr.msda against the float64 grid_sample reference and hand-computed values.

CPU tests run everywhere; tests marked ``cuda`` run the same checks on a GPU and add the
float32 / float16 / bfloat16 kernels. Errors are ||out - ref|| / ||ref|| (relative_error).
"""

from __future__ import annotations

import io
import math
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import MakeMsdaInputs, MsdaInputs, relative_error

from codetr.ops import MSDA_CHECK_VARIABLE, msda, msda_reference, set_msda_checks

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
HALF_DTYPES = [torch.float16, torch.bfloat16]


def run_op(inputs: MsdaInputs, im2col_step: int = 64) -> torch.Tensor:
    return msda(*inputs, im2col_step=im2col_step)


def run_reference(inputs: MsdaInputs) -> torch.Tensor:
    """The oracle in float64 on the exact values the op saw."""
    exact = inputs.float64()
    return msda_reference(
        exact.value, exact.spatial_shapes, exact.sampling_locations, exact.attention_weights
    )


def grads(fn, inputs: MsdaInputs, grad_output: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(output, d value, d sampling_locations, d attention_weights) of fn(inputs) . grad_output."""
    leaves = (inputs.value, inputs.sampling_locations, inputs.attention_weights)
    leaves = tuple(t.detach().requires_grad_(True) for t in leaves)
    fresh = inputs._replace(
        value=leaves[0], sampling_locations=leaves[1], attention_weights=leaves[2]
    )
    output = fn(fresh)
    return (output, *torch.autograd.grad(output, leaves, grad_output.to(output.dtype)))


RESULT_NAMES = ("output", "d value", "d sampling_locations", "d attention_weights")


def assert_results_close(got: tuple[torch.Tensor, ...], expected: tuple[torch.Tensor, ...], **tol):
    """assert_close on each of grads()'s four results, naming the one that differs."""
    for name, g, e in zip(RESULT_NAMES, got, expected, strict=True):
        torch.testing.assert_close(g, e, **tol, msg=lambda m, name=name: f"{name}: {m}")


def assert_relative_errors_below(got, expected, tolerance: float) -> None:
    for name, g, e in zip(RESULT_NAMES, got, expected, strict=True):
        assert g.isfinite().all(), name
        error = relative_error(g, e)
        assert error < tolerance, f"{name}: relative error {error:.2e} >= {tolerance:.0e}"


def reference_fn(inputs: MsdaInputs) -> torch.Tensor:
    return msda_reference(
        inputs.value, inputs.spatial_shapes, inputs.sampling_locations, inputs.attention_weights
    )


# ---------------------------------------------------------------------------------------------
# Hand-computed values on a 2x2 map holding v(x, y) = 1 + x + 2y at pixel (column x, row y):
#   row 0: 1 2    row 1: 3 4
# Pixel centres sit at normalised ((x + 0.5) / 2, (y + 0.5) / 2) (align_corners=False); inside
# the map bilinear interpolation of this linear function is exact, so v = 1 + px + 2 py with
# px = 2 * loc_x - 0.5, py = 2 * loc_y - 0.5. Towards the border, missing corners count as 0.
# ---------------------------------------------------------------------------------------------
HAND_CASES = [
    # (loc_x, loc_y, expected value, reason)
    (0.25, 0.25, 1.0, "pixel centre (0, 0)"),
    (0.75, 0.25, 2.0, "pixel centre (1, 0)"),
    (0.25, 0.75, 3.0, "pixel centre (0, 1)"),
    (0.75, 0.75, 4.0, "pixel centre (1, 1)"),
    (0.5, 0.5, 2.5, "centre of the map: mean of the four pixels"),
    (0.375, 0.625, 2.75, "px 0.25, py 0.75: 1 + 0.25 + 1.5"),
    (0.0, 0.25, 0.5, "left edge, px -0.5: half of pixel (0, 0), the other half is padding"),
    (1.0, 0.25, 1.0, "right edge, px 1.5: half of pixel (1, 0)"),
    (0.25, 1.0, 1.5, "bottom edge, py 1.5: half of pixel (0, 1)"),
    (0.0, 0.0, 0.25, "corner, px = py = -0.5: a quarter of pixel (0, 0)"),
    (-0.2, 0.25, 0.1, "px -0.9: 0.1 of pixel (0, 0)"),
    (-0.25, 0.25, 0.0, "px -1: all weight on the padding column"),
    (1.25, 0.75, 0.0, "px 2: all weight on the padding column"),
    (-5.0, 0.5, 0.0, "far left"),
    (7.0, 0.5, 0.0, "far right"),
    (0.5, -5.0, 0.0, "far above"),
    (0.5, 7.0, 0.0, "far below"),
]


def two_by_two_inputs(loc_x: float, loc_y: float, dtype: torch.dtype, device: str) -> MsdaInputs:
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dtype, device=device).reshape(1, 4, 1, 1)
    locations = torch.tensor([loc_x, loc_y], dtype=dtype, device=device).reshape(1, 1, 1, 1, 1, 2)
    weights = torch.ones(1, 1, 1, 1, 1, dtype=dtype, device=device)
    return MsdaInputs(
        value,
        torch.tensor([[2, 2]], device=device),
        torch.tensor([0], device=device),
        locations,
        weights,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("loc_x", "loc_y", "expected", "reason"), HAND_CASES)
def test_two_by_two_map_hand_values(device, loc_x, loc_y, expected, reason):
    output = run_op(two_by_two_inputs(loc_x, loc_y, torch.float32, device))
    assert output.shape == (1, 1, 1)
    assert output.item() == pytest.approx(expected, abs=1e-6), reason


@pytest.mark.parametrize("device", DEVICES)
def test_two_by_two_map_hand_gradients(device):
    # At px 0.25, py 0.75 (loc 0.375, 0.625) with weight 0.5:
    #   out = 0.5 * (1 + px + 2 py);
    #   d out / d loc_x = 0.5 * 1 * 2 (W), d out / d loc_y = 0.5 * 2 * 2 (H)
    #   d out / d weight = 2.75; d out / d value = 0.5 * bilinear weights
    #   (1 - 0.25)(1 - 0.75), 0.25 (1 - 0.75), (1 - 0.25) 0.75, 0.25 * 0.75 for pixels 1, 2, 3, 4.
    inputs = two_by_two_inputs(0.375, 0.625, torch.float64, device)
    inputs = inputs._replace(attention_weights=inputs.attention_weights * 0.5)
    output, grad_value, grad_locations, grad_weights = grads(
        run_op, inputs, torch.ones(1, 1, 1, dtype=torch.float64, device=device)
    )
    assert output.item() == pytest.approx(1.375)
    assert grad_locations.flatten().tolist() == pytest.approx([1.0, 2.0])
    assert grad_weights.item() == pytest.approx(2.75)
    assert grad_value.flatten().tolist() == pytest.approx([0.09375, 0.03125, 0.28125, 0.09375])


@pytest.mark.parametrize("device", DEVICES)
def test_levels_heads_points_and_weights_combine_as_a_weighted_sum(device):
    # Level 0: 1x1 map (value 10, 20 for heads 0, 1); level 1: 1x3 map (1, 2, 3 / 4, 5, 6).
    # Head 0 samples level 0's pixel centre with weight 0.25 and level 1's pixels 0 and 2
    # with weights 0.5 and 0.25: 0.25 * 10 + 0.5 * 1 + 0.25 * 3 = 3.75.
    # Head 1 uses the same locations with weights 1, 0, -2: 20 + 0 - 2 * 6 = 8.
    value = torch.tensor([[10.0, 20.0], [1.0, 4.0], [2.0, 5.0], [3.0, 6.0]], device=device)
    value = value.reshape(1, 4, 2, 1)
    level0 = [[0.5, 0.5], [0.5, 0.5]]  # the 1x1 map's centre, twice (second weight is 0)
    level1 = [[1 / 6, 0.5], [5 / 6, 0.5]]  # pixel centres 0 and 2 of the 1x3 map
    per_head = torch.tensor([level0, level1], device=device)  # [L, P, 2]
    locations = per_head.expand(2, 2, 2, 2).reshape(1, 1, 2, 2, 2, 2)
    weights = torch.tensor([[[0.25, 0.0], [0.5, 0.25]], [[1.0, 0.0], [0.0, -2.0]]], device=device)
    inputs = MsdaInputs(
        value,
        torch.tensor([[1, 1], [1, 3]], device=device),
        torch.tensor([0, 1], device=device),
        locations.contiguous(),
        weights.reshape(1, 1, 2, 2, 2),
    )
    assert run_op(inputs).flatten().tolist() == pytest.approx([3.75, 8.0])


# ---------------------------------------------------------------------------------------------
# float64 parity with the reference on many shapes (odd D, L 1..5, P 1..8, B and Q = 1)
# ---------------------------------------------------------------------------------------------
PARITY_CASES = [
    # (B, Q, M, D, shapes, P)
    (1, 1, 1, 1, [(1, 1)], 1),
    (1, 1, 1, 3, [(3, 5)], 1),
    (2, 7, 2, 17, [(4, 6), (2, 3)], 2),
    (1, 9, 3, 33, [(5, 7), (3, 4), (1, 2)], 3),
    (3, 4, 1, 32, [(6, 5), (3, 3), (2, 2), (1, 1)], 4),
    (2, 11, 4, 8, [(7, 9), (4, 5), (2, 3), (1, 2), (1, 1)], 5),
    (1, 5, 8, 3, [(2, 9), (9, 2)], 8),
    (2, 3, 2, 64, [(8, 8), (4, 4), (2, 2)], 6),
    (1, 13, 2, 5, [(1, 17)], 7),
    (4, 2, 1, 2, [(3, 3), (2, 2), (1, 1), (1, 1), (2, 1)], 8),
    (1, 6, 8, 32, [(6, 9), (3, 5), (2, 3), (1, 2), (1, 1)], 4),
    (2, 1, 3, 31, [(5, 5), (2, 2)], 1),
    (1, 4, 1, 96, [(3, 4)], 2),
    (5, 3, 2, 7, [(2, 3), (1, 1), (4, 1)], 3),
]


def parity_id(case) -> str:
    b, q, m, d, shapes, p = case
    return f"B{b}-Q{q}-M{m}-D{d}-L{len(shapes)}-P{p}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", PARITY_CASES, ids=parity_id)
def test_float64_forward_and_backward_match_reference(device, case, msda_inputs):
    batch, queries, heads, channels, shapes, points = case
    inputs = msda_inputs(
        batch,
        queries,
        heads,
        channels,
        shapes,
        points,
        device=device,
        location_range=(-0.3, 1.3),
        seed=len(PARITY_CASES) * batch + queries,
    )
    grad_output = torch.randn(batch, queries, heads * channels, dtype=torch.float64, device=device)
    got = grads(run_op, inputs, grad_output)
    expected = grads(reference_fn, inputs, grad_output)
    assert all(g.dtype == torch.float64 for g in got)
    assert_results_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(24))
def test_float64_random_shapes_match_reference(device, seed, msda_inputs):
    draw = torch.Generator().manual_seed(1000 + seed)

    def randint(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=draw))

    levels = randint(1, 5)
    shapes = [(randint(1, 9), randint(1, 9)) for _ in range(levels)]
    batch, queries, heads = randint(1, 3), randint(1, 12), randint(1, 4)
    channels, points = randint(1, 40), randint(1, 8)
    inputs = msda_inputs(
        batch,
        queries,
        heads,
        channels,
        shapes,
        points,
        device=device,
        location_range=(-0.5, 1.5),
        seed=seed,
    )
    grad_output = torch.randn(batch, queries, heads * channels, dtype=torch.float64, device=device)
    got = grads(run_op, inputs, grad_output)
    expected = grads(reference_fn, inputs, grad_output)
    assert_results_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("im2col_step", [1, 2, 3, 64])
def test_im2col_step_does_not_change_the_result(device, im2col_step, msda_inputs):
    # B = 5 is divisible by none of 2, 3, 64: peers require B % min(B, im2col_step) == 0.
    inputs = msda_inputs(batch=5, device=device)
    torch.testing.assert_close(run_op(inputs, im2col_step), run_reference(inputs))


@pytest.mark.parametrize("device", DEVICES)
def test_far_out_of_range_locations_contribute_zero(device, msda_inputs):
    inputs = msda_inputs(batch=2, queries=6, shapes=[(4, 6), (3, 2)], points=4, device=device)
    far = torch.tensor([-5.0, 7.0, -1e30, 1e30, 3e9, -3e9, 1.0 + 1e-3, -1e-3 - 0.5], device=device)
    locations = inputs.sampling_locations.clone()
    # Every other point of every query gets one far coordinate (x or y), cycling through `far`.
    count = locations[..., ::2, 0].numel()
    picks = far[torch.arange(count, device=device) % far.numel()]
    locations[..., ::2, 0] = picks.reshape(locations[..., ::2, 0].shape)
    locations[..., 1::2, 1] = -picks.reshape(locations[..., 1::2, 1].shape)
    grad_output = torch.randn(2, 6, 8, dtype=torch.float64, device=device)
    got = grads(run_op, inputs._replace(sampling_locations=locations), grad_output)
    # The oracle sees the same points moved to -5 or 7: still outside, and within the range
    # where grid_sample's own float-to-integer conversion is well defined.
    clamped = inputs._replace(sampling_locations=locations.clamp(-5.0, 7.0))
    expected = grads(reference_fn, clamped, grad_output)
    assert_results_close(got, expected)


# ---------------------------------------------------------------------------------------------
# Non-finite inputs. Decided behaviour (the reference differs for locations, see below):
# - a NaN or +-Inf sampling location is a point outside every map: it contributes 0 to the
#   output and gets zero gradients (grid_sample instead returns NaN for it);
# - NaN / Inf in value or in an attention weight propagate as in the reference: NaN (or Inf)
#   in exactly the outputs that read them, every other output unchanged.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_locations_behave_like_points_outside_the_map(device, bad, msda_inputs):
    inputs = msda_inputs(batch=2, queries=4, points=3, device=device)
    locations = inputs.sampling_locations.clone()
    locations[0, 1, 0, 0, 0, 0] = bad  # x only
    locations[1, 2, 1, 1, 2, 1] = bad  # y only
    locations[1, 3, 0, 0, 1, :] = bad  # both
    outside = torch.where(locations.isfinite(), locations, torch.full_like(locations, -5.0))
    grad_output = torch.randn(2, 4, 8, dtype=torch.float64, device=device)
    got = grads(run_op, inputs._replace(sampling_locations=locations), grad_output)
    expected = grads(reference_fn, inputs._replace(sampling_locations=outside), grad_output)
    assert_results_close(got, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_value_propagates_like_the_reference(device, bad, msda_inputs):
    inputs = msda_inputs(batch=2, queries=8, device=device, location_range=(0.0, 1.0))
    value = inputs.value.clone()
    value[1, 5, 0, 2] = bad
    inputs = inputs._replace(value=value)
    got, expected = run_op(inputs), run_reference(inputs)
    assert got.isfinite().any() and not got.isfinite().all()
    torch.testing.assert_close(got, expected, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_attention_weight_poisons_only_its_head(device, msda_inputs):
    # Locations strictly inside the maps, so the NaN weight multiplies a sampled value.
    inputs = msda_inputs(batch=2, queries=3, device=device, location_range=(0.2, 0.8))
    weights = inputs.attention_weights.clone()
    weights[1, 2, 1, 0, 1] = math.nan
    got = run_op(inputs._replace(attention_weights=weights)).reshape(2, 3, 2, 4)
    expected_nan = torch.zeros(2, 3, 2, 4, dtype=torch.bool, device=device)
    expected_nan[1, 2, 1] = True
    assert torch.equal(got.isnan(), expected_nan)
    reference = run_reference(inputs).reshape(2, 3, 2, 4)
    torch.testing.assert_close(got[~expected_nan], reference[~expected_nan])


# ---------------------------------------------------------------------------------------------
# Layout, dtypes, autograd, tracing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device, msda_inputs):
    dense = msda_inputs(batch=2, queries=5, heads=3, channels=5, device=device)
    value = dense.value.transpose(1, 2).contiguous().transpose(1, 2)  # strides of [B, M, S, D]
    wide = torch.zeros(*dense.sampling_locations.shape[:-1], 4, dtype=torch.float64, device=device)
    wide[..., ::2] = dense.sampling_locations
    locations = wide[..., ::2]
    weights = dense.attention_weights.transpose(0, 1).contiguous().transpose(0, 1)
    spatial_shapes = dense.spatial_shapes.t().contiguous().t()
    level_start_index = torch.stack([dense.level_start_index, dense.level_start_index], 1)[:, 0]
    strided = MsdaInputs(value, spatial_shapes, level_start_index, locations, weights)
    assert not any(t.is_contiguous() for t in strided)
    grad_output = torch.randn(2, 5, 15, dtype=torch.float64, device=device)
    grad_output = grad_output.transpose(0, 1).contiguous().transpose(0, 1)
    got = grads(run_op, strided, grad_output)
    expected = grads(reference_fn, dense, grad_output)
    assert_results_close(got, expected)


# Half-precision results are compared against the reference on the same quantized inputs, so
# the error left is the kernel's: float32 accumulation (~1e-7) plus one rounding of each
# output or gradient to the half type. Rounding to nearest has relative error <= 2^-11 (fp16)
# or 2^-8 (bf16), about 2^-11/sqrt(3) = 2.8e-4 and 2.3e-3 RMS: hence 1e-3 and 8e-3 in norm.
HALF_TOLERANCE = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def assert_half_precision_matches(inputs: MsdaInputs, value_dtype: torch.dtype, location_dtype):
    cast = inputs.to(value_dtype, location_dtype)
    batch, queries = cast.sampling_locations.shape[:2]
    channels = cast.value.shape[2] * cast.value.shape[3]
    grad_output = torch.randn(batch, queries, channels, device=cast.value.device).to(value_dtype)
    got = grads(run_op, cast, grad_output)
    expected = grads(reference_fn, cast.float64(), grad_output.double())
    assert got[0].dtype == value_dtype, "output dtype must be value's dtype"
    assert got[1].dtype == value_dtype
    assert got[2].dtype == got[3].dtype == location_dtype
    tolerance = HALF_TOLERANCE[value_dtype]
    assert_relative_errors_below(got, expected, tolerance)


@pytest.mark.parametrize("location_dtype", ["value", torch.float32], ids=["same", "f32loc"])
@pytest.mark.parametrize("value_dtype", HALF_DTYPES, ids=str)
def test_cpu_half_precision(value_dtype, location_dtype, msda_inputs):
    location_dtype = value_dtype if location_dtype == "value" else location_dtype
    inputs = msda_inputs(
        batch=2, queries=16, heads=2, channels=8, shapes=[(6, 9), (3, 5)], points=4
    )
    assert_half_precision_matches(inputs, value_dtype, location_dtype)


def gradcheck_inputs(make: MakeMsdaInputs, device: str) -> MsdaInputs:
    # Odd D, two levels, locations partly outside; random continuous locations sit far from the
    # cell edges where bilinear sampling is not differentiable (gradcheck's eps is 1e-6).
    return make(
        batch=2,
        queries=3,
        heads=2,
        channels=3,
        shapes=[(3, 4), (2, 3)],
        points=2,
        device=device,
        location_range=(-0.2, 1.2),
        seed=3,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_backward_runs_the_registered_formula_without_warnings(device, msda_inputs):
    # Without an Autograd kernel, torch falls back to a node that warns and returns no
    # gradients ("an autograd kernel was not registered to the Autograd key(s)").
    inputs = msda_inputs(device=device).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        output = run_op(inputs)
        assert "NotImplemented" not in output.grad_fn.name()
        output.sum().backward()
    assert all(
        t.grad is not None
        for t in (inputs.value, inputs.sampling_locations, inputs.attention_weights)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device, msda_inputs):
    inputs = gradcheck_inputs(msda_inputs, device).requires_grad_()

    def op(value, locations, weights):
        return msda(value, inputs.spatial_shapes, inputs.level_start_index, locations, weights)

    assert torch.autograd.gradcheck(
        op, (inputs.value, inputs.sampling_locations, inputs.attention_weights)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("value_dtype", "location_dtype"),
    [
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
        (torch.float16, torch.float32),
    ],
    ids=["float32", "float64", "float16-f32loc"],
)
def test_opcheck(device, value_dtype, location_dtype, msda_inputs):
    inputs = gradcheck_inputs(msda_inputs, device).to(value_dtype, location_dtype)
    torch.library.opcheck(torch.ops.codetr.msda.default, (*inputs.requires_grad_(), 64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(device, backend, msda_inputs):
    inputs = msda_inputs(batch=2, queries=5, device=device)

    @torch.compile(fullgraph=True, backend=backend)
    def compiled(i: MsdaInputs) -> torch.Tensor:
        return msda(*i) * 2.0

    grad_output = torch.randn(2, 5, 8, dtype=torch.float64, device=device)
    got = grads(compiled, inputs, grad_output)
    expected = grads(lambda i: reference_fn(i) * 2.0, inputs, grad_output)
    assert_results_close(got, expected)


class MsdaModule(torch.nn.Module):
    def forward(self, value, spatial_shapes, level_start_index, locations, weights):
        return msda(value, spatial_shapes, level_start_index, locations, weights)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_export_keeps_one_op_node_and_round_trips(device, msda_inputs):
    inputs = msda_inputs(batch=2, queries=5, device=device)
    queries = torch.export.Dim("queries", min=1, max=100_000)
    dynamic_shapes = (None, None, None, {1: queries}, {1: queries})
    program = torch.export.export(MsdaModule(), tuple(inputs), dynamic_shapes=dynamic_shapes)
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.codetr.msda.default) == 1, targets
    assert torch.ops.aten.grid_sampler_2d.default not in targets

    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    other = msda_inputs(batch=2, queries=9, device=device, seed=7)  # a different Q
    torch.testing.assert_close(loaded.module()(*other), run_reference(other))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("empty", ["batch", "queries"])
def test_empty_batch_or_queries_give_empty_output(device, empty, msda_inputs):
    sizes = {"batch": 2, "queries": 3, empty: 0}
    inputs = msda_inputs(**sizes, device=device).requires_grad_()
    output = run_op(inputs)
    assert output.shape == (sizes["batch"], sizes["queries"], 8)
    output.sum().backward()
    assert inputs.value.grad is not None and not inputs.value.grad.any()


# ---------------------------------------------------------------------------------------------
# Bad inputs: the error names the offending argument.
# ---------------------------------------------------------------------------------------------
def replace(**changes):
    return lambda i: i._replace(**{k: f(getattr(i, k)) for k, f in changes.items()})


BAD_INPUTS = {
    # case id: (mutation of valid float32 inputs, argument the message must name)
    "value_rank_3": (replace(value=lambda t: t.flatten(2)), "value"),
    "value_int": (replace(value=lambda t: t.long()), "value"),
    "value_too_short_for_shapes": (replace(value=lambda t: t[:, :-1]), "spatial_shapes|value"),
    "value_too_long_for_shapes": (
        replace(value=lambda t: torch.cat([t, t[:, :1]], 1)),
        "spatial_shapes|value",
    ),
    "spatial_shapes_int32": (replace(spatial_shapes=lambda t: t.int()), "spatial_shapes"),
    "spatial_shapes_float": (replace(spatial_shapes=lambda t: t.float()), "spatial_shapes"),
    "spatial_shapes_rank_1": (replace(spatial_shapes=lambda t: t.flatten()), "spatial_shapes"),
    "spatial_shapes_3_columns": (
        replace(spatial_shapes=lambda t: torch.cat([t, t[:, :1]], 1)),
        "spatial_shapes",
    ),
    "level_start_index_int32": (replace(level_start_index=lambda t: t.int()), "level_start_index"),
    "level_start_index_wrong_length": (
        replace(level_start_index=lambda t: t[:1]),
        "level_start_index",
    ),
    "level_start_index_wrong_values": (
        replace(level_start_index=lambda t: t + 1),
        "level_start_index",
    ),
    "locations_rank_5": (replace(sampling_locations=lambda t: t[..., 0]), "sampling_locations"),
    "locations_last_dim_3": (
        replace(sampling_locations=lambda t: torch.cat([t, t[..., :1]], -1)),
        "sampling_locations",
    ),
    "locations_batch": (replace(sampling_locations=lambda t: t[:1]), "sampling_locations"),
    "locations_heads": (replace(sampling_locations=lambda t: t[:, :, :1]), "sampling_locations"),
    "locations_levels": (
        replace(sampling_locations=lambda t: t[:, :, :, :1]),
        "sampling_locations",
    ),
    "locations_float64": (replace(sampling_locations=lambda t: t.double()), "sampling_locations"),
    "locations_half_with_float32_value": (
        replace(sampling_locations=lambda t: t.half()),
        "sampling_locations",
    ),
    "weights_points": (replace(attention_weights=lambda t: t[..., :1]), "attention_weights"),
    "weights_queries": (replace(attention_weights=lambda t: t[:, :1]), "attention_weights"),
    "weights_float64": (replace(attention_weights=lambda t: t.double()), "attention_weights"),
    "weights_int": (replace(attention_weights=lambda t: t.long()), "attention_weights"),
}

# Empty or negative levels; value, level_start_index and the location tensors are sized to
# agree with them, so spatial_shapes itself is what is wrong.
BAD_LEVELS = {
    "no_levels": [],
    "zero_height": [(0, 5), (2, 3)],
    "zero_width": [(4, 0), (2, 3)],
    "negative_height_and_width": [(-4, -6), (2, 3)],
}

ERRORS = (ValueError, TypeError, RuntimeError, IndexError)
# Value-dependent checks need the shape tensors on the host: free on CPU; on CUDA they cost a sync
# per call, so CUDA runs them only with set_msda_checks(True) (see test_level_checks_*).
HOST_ONLY = {
    "value_too_short_for_shapes",
    "value_too_long_for_shapes",
    "level_start_index_wrong_values",
}


@pytest.fixture
def level_checks():
    """set_msda_checks(True) for one test, restoring the previous setting after it."""
    previous = set_msda_checks(True)
    yield
    set_msda_checks(previous)


# What a fake tensor can tell: shapes and dtypes (values, and value's length against the
# shapes' sum, only the kernel sees; value_int fails the kernel's dtype check alone).
TRACE_TIME = sorted(set(BAD_INPUTS) - HOST_ONLY - {"value_int"})


@pytest.mark.parametrize("case", TRACE_TIME)
def test_bad_input_is_refused_at_trace_time(case, msda_inputs):
    """torch.export checks sizes and dtypes too, so a mistake fails the export, not the run."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mutate, argument = BAD_INPUTS[case]
    inputs = mutate(msda_inputs(dtype=torch.float32))
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=argument):
        run_op(MsdaInputs(*(mode.from_tensor(tensor) for tensor in inputs)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_error_names_the_argument(device, case, msda_inputs, request):
    if device == "cuda" and case in HOST_ONLY:
        request.getfixturevalue("level_checks")
    mutate, argument = BAD_INPUTS[case]
    inputs = mutate(msda_inputs(device=device).to(torch.float32))
    with pytest.raises(ERRORS, match=argument):
        run_op(inputs)


@pytest.mark.parametrize("argument", MsdaInputs._fields)
def test_an_argument_that_is_not_a_tensor_is_named(argument, msda_inputs):
    inputs = msda_inputs(dtype=torch.float32)._replace(**{argument: None})
    with pytest.raises(TypeError, match=f"^msda: {argument} must be a torch.Tensor, got NoneType$"):
        run_op(inputs)


def test_reference_refuses_a_value_length_that_is_not_the_levels_sum(msda_inputs):
    inputs = msda_inputs(dtype=torch.float32)
    shapes = [tuple(pair) for pair in inputs.spatial_shapes.tolist()]
    total = sum(h * w for h, w in shapes)
    with pytest.raises(RuntimeError, match=re.escape(f"value has S = {total - 1} rows but spatial_shapes {shapes} give "
                                                     f"sum(H*W) = {total}")):
        msda_reference(inputs.value[:, :-1], inputs.spatial_shapes, inputs.sampling_locations, inputs.attention_weights)


def _error_message(inputs: MsdaInputs) -> str:
    with pytest.raises(RuntimeError) as error:
        run_op(inputs)
    return str(error.value).splitlines()[0]


@pytest.mark.parametrize("case", sorted(HOST_ONLY))
def test_cpu_checks_level_values_whatever_the_switch(case, msda_inputs):
    mutate, _ = BAD_INPUTS[case]
    inputs = mutate(msda_inputs().to(torch.float32))
    previous = set_msda_checks(False)
    try:
        unchecked = _error_message(inputs)
    finally:
        set_msda_checks(previous)
    assert unchecked.startswith("msda: ") and ("spatial_shapes" in unchecked or "level_start_index" in unchecked)


def test_set_msda_checks_returns_the_previous_setting():
    original = set_msda_checks(True)
    try:
        assert set_msda_checks(False) is True
        assert set_msda_checks(False) is False
    finally:
        set_msda_checks(original)


@pytest.mark.parametrize(("setting", "expected"), [("1", "True"), ("0", "False"), ("", "False")])
def test_environment_variable_sets_the_initial_level_checks(setting, expected):
    environment = {**os.environ, MSDA_CHECK_VARIABLE: setting, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "import codetr.ops; print(codetr.ops.set_msda_checks(False))"],
        env=environment, capture_output=True, text=True, check=True, timeout=120,
    )
    assert result.stdout.strip() == expected


@pytest.mark.cuda
@pytest.mark.parametrize("case", sorted(HOST_ONLY))
def test_level_checks_on_cuda_raise_the_cpu_message(case, msda_inputs, level_checks):
    mutate, _ = BAD_INPUTS[case]
    inputs = mutate(msda_inputs().to(torch.float32))
    on_cuda = MsdaInputs(*(tensor.cuda() for tensor in inputs))
    assert _error_message(on_cuda) == _error_message(inputs)


@pytest.mark.cuda
def test_unchecked_cuda_reads_a_level_that_does_not_fit_as_zeros(msda_inputs):
    """Default CUDA contract: the last level (2x3) lies past the end of a value cut short, so it
    contributes nothing; the levels that fit are computed as usual."""
    inputs = msda_inputs(shapes=((4, 6), (2, 3)), dtype=torch.float64)
    short = inputs._replace(value=inputs.value[:, : 4 * 6 + 2])  # the 2x3 level needs 6 rows, has 2
    without_last_level = inputs._replace(attention_weights=inputs.attention_weights.clone())
    without_last_level.attention_weights[:, :, :, 1] = 0
    expected = run_reference(without_last_level)
    previous = set_msda_checks(False)
    try:
        actual = run_op(MsdaInputs(*(tensor.cuda() for tensor in short)))
    finally:
        set_msda_checks(previous)
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", BAD_LEVELS)
def test_empty_or_negative_level_is_rejected(case, msda_inputs):
    shapes = BAD_LEVELS[case]
    inputs = msda_inputs(shapes=[(4, 6)] * len(shapes)).to(torch.float32)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64).reshape(len(shapes), 2)
    sizes = spatial_shapes.prod(1)
    inputs = inputs._replace(
        value=inputs.value[:, : int(sizes.sum())],
        spatial_shapes=spatial_shapes,
        level_start_index=sizes.cumsum(0) - sizes,
    )
    with pytest.raises(ERRORS, match="spatial_shapes"):
        run_op(inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("im2col_step", [0, -1])
def test_non_positive_im2col_step_is_rejected(device, im2col_step, msda_inputs):
    with pytest.raises(ERRORS, match="im2col_step"):
        run_op(msda_inputs(device=device), im2col_step)


# ---------------------------------------------------------------------------------------------
# CUDA only
# ---------------------------------------------------------------------------------------------
CUDA_SHAPES = [(24, 36), (12, 18), (6, 9), (3, 5)]


def away_from_cell_edges(inputs: MsdaInputs) -> MsdaInputs:
    """Moves float locations off the pixel-cell edges, where the bilinear gradient jumps.

    A float32 kernel computes loc * W - 0.5 with ~W * 2^-24 error; within that distance of an
    edge it may pick the other cell than the float64 reference and its location gradient
    differs by O(1) there. 1e-4 pixels is far above that error.
    """
    locations = inputs.sampling_locations.clone()
    sizes = inputs.spatial_shapes.flip(-1).to(locations)  # (W, H) per level
    sizes = sizes.reshape(1, 1, 1, -1, 1, 2)
    pixels = locations * sizes - 0.5
    near = (pixels - pixels.round()).abs() < 1e-4
    return inputs._replace(
        sampling_locations=torch.where(near, locations + 1e-3 / sizes, locations)
    )


def cuda_inputs(
    make: MakeMsdaInputs, channels: int = 32, batch: int = 2, device: str = "cuda"
) -> MsdaInputs:
    inputs = make(
        batch=batch,
        queries=300,
        heads=8,
        channels=channels,
        shapes=CUDA_SHAPES,
        points=4,
        dtype=torch.float32,
        device=device,
        location_range=(-0.1, 1.1),
        seed=11,
    )
    locations = inputs.sampling_locations.clone()
    locations[:, ::7, :, :, 0, 0] = -5.0  # far outside
    locations[:, 3::7, :, :, 1, 1] = 7.0
    return away_from_cell_edges(inputs._replace(sampling_locations=locations))


@pytest.mark.cuda
@pytest.mark.parametrize("channels", [32, 17])
def test_cuda_float32_forward_and_backward(channels, msda_inputs):
    # float32 computes pixel coordinates as loc * W - 0.5 (error ~W * 2^-24 = 2e-6 px at W = 36)
    # and accumulates L*P*4 = 64 products per output: relative norm error ~1e-6; 2e-5 bound.
    inputs = cuda_inputs(msda_inputs, channels)
    grad_output = torch.randn(2, 300, 8 * channels, device="cuda")
    got = grads(run_op, inputs, grad_output)
    expected = grads(reference_fn, inputs.float64(), grad_output.double())
    assert all(g.dtype == torch.float32 for g in got)
    assert_relative_errors_below(got, expected, 2e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("location_dtype", ["value", torch.float32], ids=["same", "f32loc"])
@pytest.mark.parametrize("value_dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("channels", [32, 17])
def test_cuda_half_precision(value_dtype, location_dtype, channels, msda_inputs):
    location_dtype = value_dtype if location_dtype == "value" else location_dtype
    assert_half_precision_matches(cuda_inputs(msda_inputs, channels), value_dtype, location_dtype)


# Shapes that take the CUDA fast forward (fast_forward_fits in csrc/msda/cuda/msda_kernels.cu):
# P = 4, D a multiple of 16 bytes, and B * Q * M * G >= 2^20 lanes, G = D * itemsize / 16 (the
# small cases above take the general kernel); G a multiple of 4 shares each point's arithmetic
# between 4 lanes, other G (D = 16 in half precision: G = 2) do not. (value dtype, location
# dtype, D).
FAST_BATCH, FAST_HEADS, FAST_LANES = 2, 8, 2**20
FAST_CASES = [
    (torch.float32, torch.float32, 32),
    (torch.float32, torch.float32, 16),
    (torch.float16, torch.float16, 32),
    (torch.float16, torch.float32, 32),
    (torch.float16, torch.float16, 64),
    (torch.float16, torch.float16, 16),
    (torch.bfloat16, torch.bfloat16, 32),
    (torch.bfloat16, torch.float32, 32),
]


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("value_dtype", "location_dtype", "channels"),
    FAST_CASES,
    ids=[f"{v}-{loc}-D{d}".replace("torch.", "") for v, loc, d in FAST_CASES],
)
def test_cuda_fast_forward_matches_reference(value_dtype, location_dtype, channels, msda_inputs):
    lanes = channels * value_dtype.itemsize // 16
    queries = FAST_LANES // (FAST_BATCH * FAST_HEADS * lanes) + 1  # + 1: a part-filled last block
    inputs = msda_inputs(
        batch=FAST_BATCH,
        queries=queries,
        heads=FAST_HEADS,
        channels=channels,
        shapes=CUDA_SHAPES,
        points=4,
        dtype=torch.float32,
        device="cuda",
        location_range=(-0.1, 1.1),
        seed=5,
    )
    locations = inputs.sampling_locations.clone()
    locations[:, ::7, :, :, 0, 0] = -5.0  # far outside
    locations[:, 3::7, :, :, 1, 1] = 7.0
    locations[0, 5::11, 2, 1, 3, 0] = math.nan  # behaves like a point outside the map
    locations[1, 100, 3, 0, 2] = 0.5  # inside, so its NaN weight reaches the output
    weights = inputs.attention_weights.clone()
    weights[1, 100, 3, 0, 2] = math.nan
    cast = inputs._replace(sampling_locations=locations, attention_weights=weights).to(
        value_dtype, location_dtype
    )
    got = run_op(cast).reshape(FAST_BATCH, queries, FAST_HEADS, channels)
    exact = cast.float64()
    exact = exact._replace(sampling_locations=exact.sampling_locations.nan_to_num(nan=-5.0))
    expected = run_reference(exact).reshape(got.shape)
    expected_nan = torch.zeros_like(got, dtype=torch.bool)
    expected_nan[1, 100, 3] = True
    assert torch.equal(got.isnan(), expected_nan)
    tolerance = 2e-5 if value_dtype == torch.float32 else HALF_TOLERANCE[value_dtype]
    assert relative_error(got[~expected_nan], expected[~expected_nan]) < tolerance


@pytest.mark.parametrize("device", DEVICES)
def test_float32_locations_beat_half_locations(device, msda_inputs):
    # The reason half values may take float32 locations: against the float64 result on the
    # unrounded inputs, fp16 locations on a 36-wide map cost ~1e-2 px; float32 ones do not.
    inputs = cuda_inputs(msda_inputs, device=device)
    exact = run_reference(inputs)
    same = relative_error(run_op(inputs.to(torch.float16)), exact)
    mixed = relative_error(run_op(inputs.to(torch.float16, torch.float32)), exact)
    assert mixed < same
    assert mixed < HALF_TOLERANCE[torch.float16]


@pytest.mark.cuda
def test_cuda_level_running_past_value_contributes_zero(msda_inputs):
    # The CUDA op does not sync to compare spatial_shapes with S; a level that would read past
    # the end of value contributes zeros instead (csrc/msda/cuda/msda_launch.h).
    inputs = msda_inputs(shapes=[(2, 2), (2, 2)], device="cuda", location_range=(0.0, 1.0))
    short = inputs._replace(value=inputs.value[:, :6])  # level 1 needs rows 4..7
    only_level0 = inputs._replace(
        attention_weights=inputs.attention_weights
        * torch.tensor([1.0, 0.0], device="cuda")[:, None]
    )
    torch.testing.assert_close(run_op(short), run_reference(only_level0))


@pytest.mark.cuda
@pytest.mark.parametrize(
    "argument", ["spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"]
)
def test_cuda_device_mismatch_names_the_argument(argument, msda_inputs):
    inputs = msda_inputs(device="cuda").to(torch.float32)
    inputs = inputs._replace(**{argument: getattr(inputs, argument).cpu()})
    with pytest.raises(ERRORS, match=argument):
        run_op(inputs)


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay(msda_inputs):
    # No host synchronisation inside the op: it can be captured in a CUDA graph (the runtimes
    # replay captured graphs), and a replay reads the static inputs' new contents.
    static = cuda_inputs(msda_inputs)
    fresh = static._replace(
        value=-static.value,
        sampling_locations=static.sampling_locations.flip(1),
        attention_weights=static.attention_weights.flip(1),
    )
    run_op(static)  # warm-up outside the capture (lazy initialisation)
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        run_op(static)
    torch.cuda.current_stream().wait_stream(side_stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = run_op(static)
    for target, source in zip(static, fresh, strict=True):
        target.copy_(source)
    graph.replay()
    torch.cuda.synchronize()
    assert relative_error(output, run_reference(fresh)) < 2e-5
