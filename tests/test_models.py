"""Co-DINO model (tiny configs, CPU): contract, independent references, precision, export."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from codetr.models import Detections, build_model, select_detections
from codetr.models.positional_encoding import sine_box_encoding, sine_mask_encoding
from codetr.models.swin import ShiftWindowMSA, WindowMSA
from codetr.models.transformer import flatten_levels
from codetr.ops import set_msda_implementation
from model_configs import tiny_config, tiny_swin_config


def sample_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, 64, 96, generator=generator) * 255
    sizes = torch.tensor([[64, 96], [50, 70], [64, 60]][:batch])
    return images, sizes


@pytest.mark.parametrize("make_config", [tiny_config, tiny_swin_config], ids=["resnet", "swin"])
def test_end_to_end_shapes_dtypes_and_ranges(make_config):
    config = make_config()
    model = build_model(config)
    images, sizes = sample_inputs()
    with torch.no_grad():
        detections = model(images, sizes)
    assert isinstance(detections, Detections)
    k = config.model.max_per_img
    assert detections.boxes.shape == (2, k, 4) and detections.boxes.dtype == torch.float32
    assert detections.scores.shape == (2, k) and detections.scores.dtype == torch.float32
    assert detections.labels.shape == (2, k) and detections.labels.dtype == torch.int64
    assert torch.all(detections.scores[:, :-1] >= detections.scores[:, 1:])
    assert torch.all((detections.scores >= 0) & (detections.scores <= 1))
    assert torch.all((detections.labels >= 0) & (detections.labels < config.model.num_classes))
    boxes = detections.boxes
    assert torch.all(boxes[..., 2:] >= boxes[..., :2])
    # boxes lie inside each image's valid (h, w) region
    assert torch.all(boxes[..., 0::2] <= sizes[:, None, 1:2]) and torch.all(boxes[..., 1::2] <= sizes[:, None, 0:1])


def test_outputs_are_deterministic():
    images, sizes = sample_inputs()
    first, second = build_model(tiny_config()), build_model(tiny_config())
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        out_a, out_b, out_again = first(images, sizes), second(images, sizes), first(images, sizes)
    for a, b, c in zip(out_a, out_b, out_again):
        assert torch.equal(a, b) and torch.equal(a, c)
    other_seed = build_model(tiny_config(), seed=1)
    assert not torch.equal(other_seed.query_head.cls_branches[0].weight, first.query_head.cls_branches[0].weight)


@pytest.mark.parametrize("make_config", [tiny_config, tiny_swin_config], ids=["resnet", "swin"])
def test_msda_op_path_matches_reference_path(make_config):
    if not hasattr(torch.ops.codetr, "msda"):
        pytest.skip("torch.ops.codetr.msda is not built (codetr._C missing)")
    model = build_model(make_config())
    images, sizes = sample_inputs()
    with torch.no_grad():
        set_msda_implementation(model, use_reference=False)
        op = model(images, sizes)
        set_msda_implementation(model, use_reference=True)
        reference = model(images, sizes)
    torch.testing.assert_close(op.scores, reference.scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(op.boxes, reference.boxes, atol=1e-3, rtol=1e-5)
    assert torch.equal(op.labels, reference.labels)


def test_reduced_precision_runs_with_float32_outputs():
    images, sizes = sample_inputs()
    model = build_model(tiny_config())
    with torch.no_grad():
        full = model(images, sizes)
        half = model.to(torch.bfloat16)(images, sizes)
    assert half.boxes.dtype == torch.float32 and half.scores.dtype == torch.float32 and half.labels.dtype == torch.int64
    assert torch.isfinite(half.boxes).all() and torch.isfinite(half.scores).all()
    # bf16 keeps ~3 significant digits: the best score moves a little, not arbitrarily
    assert abs(half.scores[:, 0] - full.scores[:, 0]).max() < 0.05


def test_float64_images_are_normalised_in_float64():
    images, sizes = sample_inputs()
    images = images.double() + 1e-3  # not representable in float32
    config = tiny_config()
    model = build_model(config).double().eval()
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model(images, sizes)
    mean = torch.tensor(config.preprocess.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(config.preprocess.std, dtype=torch.float64).view(1, 3, 1, 1)
    assert seen[0].dtype == torch.float64
    torch.testing.assert_close(seen[0], (images - mean) / std, atol=1e-14, rtol=0)


@pytest.mark.parametrize(("dtype", "box_dtype"), [(torch.float64, torch.float64), (torch.bfloat16, torch.float32)])
def test_proposal_boxes_keep_at_least_float32(dtype, box_dtype):
    images, sizes = sample_inputs()
    model = build_model(tiny_config()).to(dtype).eval()
    seen = []
    model.query_head.transformer.decoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[1]))
    with torch.no_grad():
        model(images, sizes)
    assert seen[0].dtype == box_dtype  # the decoder's initial reference boxes, from the proposal top-k


def test_select_detections_matches_brute_force():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 6, 3, generator=generator)
    boxes = torch.rand(1, 6, 4, generator=generator) * 0.5 + 0.2
    sizes = torch.tensor([[40, 80]])
    result = select_detections(logits, boxes, sizes, max_per_img=5)
    ranked = sorted(
        ((1 / (1 + math.exp(-logits[0, q, c].item())), q, c) for q in range(6) for c in range(3)), reverse=True
    )[:5]
    for k, (score, query, label) in enumerate(ranked):
        cx, cy, w, h = boxes[0, query].tolist()
        expected = [max(0.0, (cx - w / 2) * 80), max(0.0, (cy - h / 2) * 40), min(80.0, (cx + w / 2) * 80), min(40.0, (cy + h / 2) * 40)]
        assert result.scores[0, k].item() == pytest.approx(score, rel=1e-6)
        assert result.labels[0, k].item() == label
        assert result.boxes[0, k].tolist() == pytest.approx(expected, rel=1e-5)


def test_sine_mask_encoding_hand_computed():
    # num_feats=2: frequencies are temperature^0 = 1, so channels are [sin y, cos y, sin x, cos x]
    # with y = (row + 1) / H * 2pi over valid pixels.
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, :, 2:] = True  # only 2 valid columns
    encoding = sine_mask_encoding(mask, num_feats=2, temperature=20.0)
    assert encoding.shape == (1, 4, 2, 4)
    row0 = encoding[0, :, 0, 0].tolist()  # y = pi, x = pi
    assert row0 == pytest.approx([0.0, -1.0, 0.0, -1.0], abs=1e-5)
    row1_col1 = encoding[0, :, 1, 1].tolist()  # y = 2pi, x = 2pi
    assert row1_col1 == pytest.approx([0.0, 1.0, 0.0, 1.0], abs=1e-5)


def test_sine_box_encoding_order_is_y_x_w_h():
    boxes = torch.tensor([[[0.25, 0.5, 0.125, 0.75]]])
    encoding = sine_box_encoding(boxes, num_feats=2)  # frequencies 1, 1
    expected = []
    for value in (0.5, 0.25, 0.125, 0.75):
        expected += [math.sin(value * 2 * math.pi), math.cos(value * 2 * math.pi)]
    assert encoding[0, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_encoder_proposals_hand_computed():
    model = build_model(tiny_config())
    transformer = model.query_head.transformer
    features = [torch.zeros(1, 32, 4, 4), torch.zeros(1, 32, 2, 2)]
    masks = [torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool)]
    masks[0][0, :, 2:] = True  # right half of level 0 is padding
    levels = flatten_levels(features, masks)
    assert levels.spatial_shapes.tolist() == [[4, 4], [2, 2]] and levels.level_start_index.tolist() == [0, 16]
    assert levels.valid_ratios[0].tolist() == [[0.5, 1.0], [1.0, 1.0]]
    _, proposals = transformer.encoder_proposals(torch.zeros(1, 20, 32), levels)

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    # level 0, pixel (row 1, col 0): centre ((0.5) / 2 valid columns, 1.5 / 4 rows), size 0.05
    assert proposals[0, 4].tolist() == pytest.approx([logit(0.25), logit(0.375), logit(0.05), logit(0.05)], rel=1e-5)
    assert torch.isinf(proposals[0, 2]).all()  # padded token
    # level 1, pixel (0, 1): centre (0.75, 0.25), size 0.1
    assert proposals[0, 17].tolist() == pytest.approx([logit(0.75), logit(0.25), logit(0.1), logit(0.1)], rel=1e-5)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_window_attention_matches_naive_relative_bias_attention(dtype, tolerance):
    torch.manual_seed(0)
    window, heads, dims = 3, 2, 8
    attention = WindowMSA(dims, heads, window).to(dtype)
    torch.nn.init.normal_(attention.relative_position_bias_table)
    tokens = torch.randn(1, window * window, dims, dtype=dtype)
    result = attention(tokens, None)
    assert result.dtype == dtype
    # naive: bias for the pair (i, j) sits at table row (dy + w - 1) * (2w - 1) + (dx + w - 1)
    q, k, v = attention.qkv(tokens).view(window * window, 3, heads, dims // heads).unbind(1)
    positions = [(r, c) for r in range(window) for c in range(window)]
    outputs = []
    for head in range(heads):
        logits = torch.empty(window * window, window * window, dtype=dtype)
        for i, (ri, ci) in enumerate(positions):
            for j, (rj, cj) in enumerate(positions):
                row = (ri - rj + window - 1) * (2 * window - 1) + (ci - cj + window - 1)
                logits[i, j] = q[i, head] @ k[j, head] / math.sqrt(dims // heads) + attention.relative_position_bias_table[row, head]
        outputs.append(logits.softmax(-1) @ v[:, head])
    expected = attention.proj(torch.cat(outputs, -1))
    torch.testing.assert_close(result[0], expected, atol=tolerance, rtol=tolerance)


def test_shifted_windows_keep_attention_inside_contiguous_regions():
    # With shift s the roll joins image regions that are not neighbours; tokens must only see
    # tokens of their own region. A one-hot value at one pixel must not leak across the seam.
    torch.manual_seed(0)
    attention = ShiftWindowMSA(embed_dims=4, num_heads=1, window=4, shift=2)
    with torch.no_grad():
        attention.w_msa.qkv.weight.zero_()
        attention.w_msa.qkv.bias.zero_()
        attention.w_msa.qkv.weight[8:].copy_(torch.eye(4))  # value = input, uniform attention
        attention.w_msa.proj.weight.copy_(torch.eye(4))
        attention.w_msa.proj.bias.zero_()
    x = torch.zeros(1, 8, 8, 4)
    x[0, 0, 0, 0] = 1.0  # top-left pixel; after the roll it shares a window with the bottom-right corner
    with torch.no_grad():
        out = attention(x)[0, :, :, 0]
    # other side of the seam: only the exp(-100) residue of the official mask value
    assert out[7, 7].abs() < 1e-30 and out[6, 6].abs() < 1e-30
    assert out[0, 0] == pytest.approx(0.25) and out[1, 1] == pytest.approx(0.25)  # same 2x2 region


@pytest.mark.parametrize(
    "make_config", [tiny_config, pytest.param(tiny_swin_config, marks=pytest.mark.slow)], ids=["resnet", "swin"]
)
def test_torch_export_with_dynamic_height_and_width(make_config):
    # The example's stage sizes divide the Swin window; the check input's do not, so a graph
    # specialised to "no padding needed" would fail here.
    model = build_model(make_config())
    images = torch.rand(2, 3, 128, 192) * 255
    sizes = torch.tensor([[128, 192], [100, 150]])
    height, width = torch.export.Dim("height", min=2, max=64), torch.export.Dim("width", min=2, max=64)
    exported = torch.export.export(
        model, (images, sizes), dynamic_shapes={"images": {2: 32 * height, 3: 32 * width}, "image_sizes": None}
    )
    other_images = torch.rand(2, 3, 96, 160) * 255
    other_sizes = torch.tensor([[90, 128], [96, 160]])
    with torch.no_grad():
        eager = model(other_images, other_sizes)
    traced = exported.module()(other_images, other_sizes)
    for a, b in zip(eager, traced):
        torch.testing.assert_close(a, b)


def test_mismatched_neck_channels_rejected():
    config = tiny_config()
    bad = dataclasses.replace(config, model=dataclasses.replace(config.model, neck=dataclasses.replace(config.model.neck, in_channels=(1, 2, 3))))
    with pytest.raises(ValueError, match="neck.in_channels"):
        build_model(bad)


def test_nearest_level_masks_follow_mmdet_interpolation():
    # mmdet builds level masks with F.interpolate(nearest) of the pixel mask; 50 valid rows of 64
    # at 1/8 scale -> rows 0..6 valid (floor(i * 8) < 50 for i <= 6).
    from codetr.models.head import padding_masks

    (mask,) = padding_masks(torch.tensor([[50, 96]]), 64, 96, [(8, 12)])
    assert (~mask[0, :, 0]).sum().item() == 7
    reference = F.interpolate((torch.arange(64)[:, None] >= 50).float().expand(64, 96)[None, None], size=(8, 12))[0, 0].bool()
    assert torch.equal(mask[0], reference)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("make_config", [tiny_config, tiny_swin_config], ids=["resnet", "swin"])
def test_cuda_reduced_precision_tracks_float32(make_config, dtype):
    model = build_model(make_config()).cuda()
    images, sizes = (tensor.cuda() for tensor in sample_inputs())
    with torch.no_grad():
        full = model(images, sizes)
        reduced = model.to(dtype)(images, sizes)
    assert reduced.boxes.dtype == torch.float32 and reduced.scores.dtype == torch.float32
    assert torch.isfinite(reduced.boxes).all() and torch.isfinite(reduced.scores).all()
    tolerance = 0.01 if dtype == torch.float16 else 0.05
    assert (reduced.scores[:, 0] - full.scores[:, 0]).abs().max() < tolerance


# ---- input checks and geometry --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([[64, 97], [64, 96]], r"image_sizes must lie in \[1, 64\] x \[1, 96\] .* got \[\[64, 97\]\] for image\(s\) \[0\]"),
        ([[64, 96], [65, 10]], r"got \[\[65, 10\]\] for image\(s\) \[1\]"),
        ([[0, 96], [64, 96]], r"got \[\[0, 96\]\] for image\(s\) \[0\]"),
        ([[64, -3], [64, 96]], r"got \[\[64, -3\]\] for image\(s\) \[0\]"),
    ],
)
def test_image_sizes_outside_the_images_tensor_are_refused(sizes, message):
    model = build_model(tiny_config())
    images, _ = sample_inputs()
    with pytest.raises(ValueError, match=message):
        model(images, torch.tensor(sizes))


@pytest.mark.parametrize(
    ("images", "sizes", "message"),
    [
        (torch.zeros(2, 1, 64, 96), torch.tensor([[64, 96]] * 2), r"images must be \[B, 3, H, W\], got \[2, 1, 64, 96\]"),
        (torch.zeros(2, 3, 64, 96), torch.tensor([[64, 96]] * 3), "image_sizes has 3 rows for a batch of 2 images"),
        (torch.zeros(2, 3, 64, 96), torch.tensor([[64.0, 96.0]] * 2), r"image_sizes must be \[B, 2\] integer \(h, w\), got \[2, 2\] torch.float32"),
        (torch.zeros(2, 3, 64, 96), torch.tensor([64, 96]), r"image_sizes must be \[B, 2\] integer"),
    ],
)
def test_malformed_inputs_are_refused(images, sizes, message):
    with pytest.raises(ValueError, match=message):
        build_model(tiny_config())(images, sizes)


@pytest.mark.parametrize("make_config", [tiny_config, tiny_swin_config], ids=["resnet", "swin"])
@pytest.mark.parametrize(("height", "width"), [(64, 96), (70, 45), (33, 129)])
def test_encoder_tokens_match_the_features_the_model_computes(make_config, height, width):
    model = build_model(make_config())
    with torch.no_grad():
        features = model.neck(model.backbone(torch.zeros(1, 3, height, width)))
    cells = [feature.shape[2] * feature.shape[3] for feature in features]
    expected = [math.ceil(height / stride) * math.ceil(width / stride) for stride in model.feature_strides]
    assert cells == expected and model.encoder_tokens(height, width) == sum(cells)


def test_too_few_encoder_tokens_name_the_smallest_size_that_works():
    config = tiny_config()  # strides 8, 16, 32, 64 (ResNet-18 stages 1-3 + one extra level)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, transformer=dataclasses.replace(config.model.transformer, num_queries=30)))
    model = build_model(config)
    # by hand, ceil(side / stride)^2 summed: 16 -> 4 + 1 + 1 + 1 = 7; 32 -> 16 + 4 + 1 + 1 = 22;
    # 33 -> 25 + 9 + 4 + 1 = 39 >= 30, so 33 is the smallest square side (64 among multiples of 32).
    assert model.encoder_tokens(16, 16) == 7 and model.encoder_tokens(32, 32) == 22 and model.encoder_tokens(33, 33) == 39
    assert model.min_input_size() == 33 and model.min_input_size(multiple=32) == 64
    widths = [w for w in range(1, 400) if model.encoder_tokens(16, w) >= 30]  # by exhaustive search
    assert model.min_input_size(height=16) == widths[0]
    with pytest.raises(ValueError, match=rf"input size 16x16 gives 7 encoder tokens \(feature strides \[8, 16, 32, 64\]\), fewer than "
                       rf"the model's 30 queries: the smallest square input that works is 33x33, and at height 16 the width must be at least {widths[0]}"):
        model(torch.zeros(1, 3, 16, 16), torch.tensor([[16, 16]]))
    model(torch.zeros(1, 3, 33, 33), torch.tensor([[33, 33]]))  # the named size runs


def test_r50_at_64x64_names_its_smallest_size():
    from codetr.config import load_config
    from model_configs import CONFIGS

    with torch.device("meta"):
        model = build_model(load_config(CONFIGS / "co_dino_5scale_r50_lsj_8xb2_1x_coco.toml"), seed=None)
    # strides 4..64: 16^2 + 8^2 + 4^2 + 2^2 + 1 = 341 at 64x64 (the reported case); 100 -> 863, 101 -> 914
    assert model.encoder_tokens(64, 64) == 341 and model.encoder_tokens(100, 100) == 863 and model.encoder_tokens(101, 101) == 914
    with pytest.raises(ValueError, match="341 encoder tokens .* fewer than the model's 900 queries: the smallest square input that works is 101x101"):
        model.check_input_size(64, 64)
