"""``torch.ops.codetr.msda_from_offsets``: MSDA from the layer's raw projections.

Oracle: the definition written out here in float64 -- locations = reference + offsets / (W, H),
weights = softmax over each row's L*P logits -- fed to the pure-PyTorch ``msda_reference``. On
CUDA the fused fast kernel is also held to the unfused path (ATen preparation + the msda op's
kernel) on shapes that take it.
"""

from __future__ import annotations

import pytest
import torch

from codetr.ops import MultiScaleDeformableAttention, msda, msda_from_offsets, msda_reference, set_msda_implementation

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make_inputs(
    batch: int = 2,
    queries: int = 5,
    heads: int = 2,
    channels: int = 4,
    shapes=((4, 6), (2, 3)),
    points: int = 4,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """float64 inputs: reference points in [0, 1], offsets ~ N(0, 2) pixels with every 7th
    query's first point 500 pixels away (outside its map), logits ~ N(0, 2)."""
    generator = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    starts = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
    num_values = int(spatial_shapes.prod(1).sum())
    offsets = 2 * torch.randn(batch, queries, heads, levels, points, 2, generator=generator, dtype=torch.float64)
    offsets[:, ::7, :, :, 0, 0] = 500.0
    tensors = {
        "value": torch.randn(batch, num_values, heads, channels, generator=generator, dtype=torch.float64),
        "spatial_shapes": spatial_shapes,
        "level_start_index": starts,
        "reference_points": torch.rand(batch, queries, levels, 2, generator=generator, dtype=torch.float64),
        "sampling_offsets": offsets,
        "attention_logits": 2 * torch.randn(batch, queries, heads, levels, points, generator=generator, dtype=torch.float64),
    }
    return {name: tensor.to(device) for name, tensor in tensors.items()}


def cast(inputs: dict[str, torch.Tensor], dtype: torch.dtype, reference_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    cast_to = {"value": dtype, "sampling_offsets": dtype, "attention_logits": dtype, "reference_points": reference_dtype}
    return {name: tensor.to(cast_to[name]) if name in cast_to else tensor for name, tensor in inputs.items()}


def prepared(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(sampling_locations, attention_weights) by the definition, in ``dtype``."""
    offsets = inputs["sampling_offsets"].to(dtype)
    batch, queries, heads, levels, points, _ = offsets.shape
    size = inputs["spatial_shapes"].flip(-1).to(dtype).view(1, 1, 1, levels, 1, 2)  # (W, H)
    locations = inputs["reference_points"].to(dtype)[:, :, None, :, None, :] + offsets / size
    logits = inputs["attention_logits"].to(dtype).reshape(batch, queries, heads, levels * points)
    return locations, logits.softmax(-1).view(batch, queries, heads, levels, points)


def expected_float64(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    locations, weights = prepared(inputs, torch.float64)
    shapes = [tuple(shape) for shape in inputs["spatial_shapes"].tolist()]
    return msda_reference(inputs["value"].double(), shapes, locations, weights)


def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return msda_from_offsets(**inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_matches_the_definition(device, dtype, tolerance):
    inputs = make_inputs(device=device)
    got = run(cast(inputs, dtype, dtype))
    assert got.dtype == dtype and got.shape == (2, 5, 2 * 4)
    torch.testing.assert_close(got.double(), expected_float64(inputs), rtol=tolerance, atol=tolerance)


# Shapes that take the CUDA fused kernel (fast_forward_fits in csrc/msda/cuda/msda_kernels.cu:
# P = 4 and B * Q * M * G >= 2^20 lanes, G = D * itemsize / 16); D = 16 in half precision has
# G = 2, the variant where every lane prepares all 4 points. (value dtype, reference dtype, D).
FAST_CASES = [
    (torch.float32, torch.float32, 32),
    (torch.float16, torch.float32, 32),
    (torch.float16, torch.float16, 32),
    (torch.float16, torch.float32, 16),
    (torch.bfloat16, torch.float32, 32),
]
# One ulp of the output's dtype near 1; in float32, the kernel's pixel coordinates (reference *
# W + offset - 0.5, no division) round differently from the composition's by ~W * 2^-24 pixels.
FAST_TOLERANCE = {torch.float32: 5e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("dtype", "reference_dtype", "channels"),
    FAST_CASES,
    ids=[f"{v}-{r}-D{d}".replace("torch.", "") for v, r, d in FAST_CASES],
)
def test_cuda_fused_kernel_matches_the_unfused_op(dtype, reference_dtype, channels):
    batch, heads = 2, 8
    lanes = channels * dtype.itemsize // 16
    queries = 2**20 // (batch * heads * lanes) + 1  # + 1: a part-filled last block
    inputs = make_inputs(
        batch=batch, queries=queries, heads=heads, channels=channels,
        shapes=((24, 36), (12, 18), (6, 9), (3, 5)), device="cuda", seed=3,
    )
    inputs["attention_logits"][0, 5, 1, 2, 3] = float("nan")  # poisons row (0, 5, head 1) only
    inputs = cast(inputs, dtype, reference_dtype)
    got = run(inputs)
    # The kernel prepares in float32 whatever the reference points' dtype (the composition
    # would round float16 locations, 0.02 pixels apart on these maps).
    locations, weights = prepared(inputs, torch.float32)
    unfused = msda(inputs["value"], inputs["spatial_shapes"], inputs["level_start_index"], locations, weights)
    tolerance = FAST_TOLERANCE[dtype]
    torch.testing.assert_close(got, unfused, rtol=tolerance, atol=tolerance, equal_nan=True)
    poisoned = got.view(batch, queries, heads, channels).isnan().any(-1)
    assert poisoned[0, 5, 1] and poisoned.sum() == 1
    close = expected_float64({name: tensor.double() if tensor.is_floating_point() else tensor for name, tensor in inputs.items()})
    assert ((got.double() - close).nan_to_num().norm() / close.nan_to_num().norm()).item() < tolerance


@pytest.mark.parametrize("device", DEVICES)
def test_layer_with_fused_inputs_matches_the_layer_without(device):
    torch.manual_seed(0)
    layer = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=2, num_points=4).double().to(device)
    torch.nn.init.normal_(layer.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(layer.attention_weights.weight)
    shapes = torch.tensor([[4, 6], [2, 3]], device=device)
    starts = torch.tensor([0, 24], device=device)
    query = torch.randn(2, 30, 16, dtype=torch.float64, device=device)
    reference = torch.rand(2, 30, 2, 2, dtype=torch.float64, device=device)
    value = torch.randn(2, 30, 16, dtype=torch.float64, device=device)
    with torch.no_grad():
        plain = layer(query, reference, value, shapes, starts)
        set_msda_implementation(layer, use_reference=False, fuse_inputs=True)
        fused = layer(query, reference, value, shapes, starts)
        # Box reference points (the decoder's) keep the unfused path.
        boxes = torch.rand(2, 30, 2, 4, dtype=torch.float64, device=device)
        fused_boxes = layer(query, boxes, value, shapes, starts)
        set_msda_implementation(layer, use_reference=False)
        plain_boxes = layer(query, boxes, value, shapes, starts)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_boxes, plain_boxes, rtol=0, atol=0)


def test_fused_inputs_refuse_the_reference_path():
    layer = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=2, num_points=4)
    with pytest.raises(ValueError, match="fuse_inputs needs the op path"):
        set_msda_implementation(layer, use_reference=True, fuse_inputs=True)


def test_torch_export_keeps_one_op_node():
    class Fused(torch.nn.Module):
        def forward(self, *tensors):
            return msda_from_offsets(*tensors)

    inputs = make_inputs()
    program = torch.export.export(Fused(), tuple(inputs.values()), strict=False)
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets == [torch.ops.codetr.msda_from_offsets.default]
    torch.testing.assert_close(program.module()(*inputs.values()), run(inputs), rtol=0, atol=0)


def test_an_input_that_requires_grad_is_refused_unless_grad_is_off():
    inputs = make_inputs()
    inputs["sampling_offsets"].requires_grad_(True)
    with pytest.raises(RuntimeError, match="msda_from_offsets has no gradient"):
        run(inputs)
    with torch.no_grad():
        torch.testing.assert_close(run(inputs), expected_float64(inputs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("empty", ["batch", "queries"])
def test_empty_batch_or_queries_give_empty_output(device, empty):
    inputs = make_inputs(device=device)
    axis = 0 if empty == "batch" else 1
    for name in ("value", "reference_points", "sampling_offsets", "attention_logits"):
        if name != "value" or empty == "batch":
            inputs[name] = inputs[name].narrow(axis, 0, 0)
    expected_shape = (0, 5, 8) if empty == "batch" else (2, 0, 8)
    assert run(inputs).shape == expected_shape


def _bad(name: str, change):
    def apply(inputs):
        inputs[name] = change(inputs[name])
        return inputs

    return apply


BAD_INPUTS = {
    "reference_points rank": (_bad("reference_points", lambda t: t[..., 0]), "reference_points must be"),
    "reference_points levels": (_bad("reference_points", lambda t: t[:, :, :1]), "reference_points must be"),
    "sampling_offsets points": (_bad("sampling_offsets", lambda t: t[:, :, :, :, :3]), "attention_logits must be"),
    "sampling_offsets rank": (_bad("sampling_offsets", lambda t: t[..., 0]), "sampling_offsets must be"),
    "attention_logits heads": (_bad("attention_logits", lambda t: t[:, :, :1]), "attention_logits must be"),
    "sampling_offsets dtype": (_bad("sampling_offsets", lambda t: t.float()), "sampling_offsets must have value's dtype"),
    "attention_logits dtype": (_bad("attention_logits", lambda t: t.float()), "attention_logits must have value's dtype"),
    "reference_points dtype": (_bad("reference_points", lambda t: t.float()), "reference_points must have value's dtype"),
    "spatial_shapes dtype": (_bad("spatial_shapes", lambda t: t.int()), "spatial_shapes must be (an )?int64"),
    "level values": (_bad("level_start_index", lambda t: t + 1), "level_start_index"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_error_names_the_argument(case):
    corrupt, message = BAD_INPUTS[case]
    with pytest.raises(RuntimeError, match=message):
        run(corrupt(make_inputs()))


# Level values are data, not shapes: only the kernel sees them.
@pytest.mark.parametrize("case", [case for case in BAD_INPUTS if case != "level values"])
def test_bad_input_is_refused_at_trace_time(case):
    """torch.export sees the same mistakes (sizes, dtypes) as the kernel, not only ranks."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    corrupt, message = BAD_INPUTS[case]
    inputs = corrupt(make_inputs())
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
        run({name: mode.from_tensor(tensor) for name, tensor in inputs.items()})
