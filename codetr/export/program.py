"""torch.export of the whole Co-DINO inference graph.

The graph runs from pre-processed images to top-k detections: normalisation, backbone, neck,
transformer, head and score top-k are all inside ``CoDINO.forward``. Multiscale deformable
attention stays one ``torch.ops.codetr.msda`` node (plugin modes) or is traced through the
pure-PyTorch reference (decomposed mode).
"""

from __future__ import annotations

import torch
from torch.export import Dim, ExportedProgram

from codetr.config import Config
from codetr.contract.artifacts import MsdaMode
from codetr.export.options import DimRange, ExportOptions
from codetr.models.precision import tf32
from codetr.ops import set_msda_implementation

MAX_SIDE_PER_SCALE = 4
"""The largest input side an export accepts, as a multiple of the config's largest resize scale.

The model was trained on images resized to that scale; far beyond it objects are larger than
any it learned and memory grows with the area (an absurd 100000x100000 input fails only when
memory runs out). Four times the scale (4096 pixels for the 1024-pixel LSJ configs) leaves room
for high-resolution use."""


def feature_strides(config: Config) -> tuple[int, ...]:
    """Stride of each feature level the encoder sees, finest first: the backbone outputs
    (patch * 2^index, patch 4 for ResNet's stem) and one halving per extra neck level."""
    backbone = config.model.swin or config.model.resnet
    patch = config.model.swin.patch_size if config.model.swin else 4
    strides = [patch * 2**index for index in backbone.out_indices]
    while len(strides) < config.model.neck.num_outs:
        strides.append(strides[-1] * 2)
    return tuple(strides)


def largest_feature_stride(config: Config) -> int:
    """Stride of the coarsest feature level."""
    return feature_strides(config)[-1]


def encoder_tokens(config: Config, height: int, width: int) -> int:
    """Number of encoder tokens (feature pixels over all levels) for an input of height x width.

    Every stride-2 stage (ResNet's stem convolution and max-pool, Swin's padded patch merging,
    the neck's stride-2 3x3 convolutions) maps a side n to ceil(n / 2), so level l has
    ceil(H / s_l) x ceil(W / s_l) pixels.
    """
    return sum(-(-height // stride) * -(-width // stride) for stride in feature_strides(config))


def smallest_square_side(config: Config) -> int:
    """The smallest square input side, a multiple of the size divisor, whose encoder has at least
    ``num_queries`` tokens: the two-stage query selection takes the top ``num_queries`` tokens."""
    divisor = config.preprocess.size_divisor
    side = divisor
    while encoder_tokens(config, side, side) < config.model.transformer.num_queries:
        side += divisor
    return side


def max_input_side(config: Config) -> int:
    """The largest input side an export accepts (:data:`MAX_SIDE_PER_SCALE`), a multiple of the
    size divisor."""
    divisor = config.preprocess.size_divisor
    return MAX_SIDE_PER_SCALE * max(config.preprocess.scale) // divisor * divisor


def check_input_sizes(config: Config, options: ExportOptions) -> None:
    """Raise ValueError unless the model can take every input size the export would accept.

    - Sizes are multiples of the config's size divisor (the host pre-processing pads to it and
      the feature pyramid halves the input repeatedly).
    - No side exceeds :func:`max_input_side`.
    - The smallest size of a dynamic range is at least twice the coarsest feature stride: a
      feature map 1 pixel tall or wide makes torch.export specialise that dimension.
    - The smallest input gives the encoder at least ``num_queries`` tokens (else the query
      top-k fails deep inside torch.export); the message names the smallest square that works.
    """
    divisor = config.preprocess.size_divisor
    heights, widths = options.height_range, options.width_range
    bounds = [("height", options.height), ("width", options.width)]
    for name, extent in (("dynamic_height", options.dynamic_height), ("dynamic_width", options.dynamic_width)):
        if extent is not None:
            bounds += [(f"{name} MIN", extent.min), (f"{name} MAX", extent.max)]
    limit = max_input_side(config)
    for name, value in bounds:
        if value % divisor:
            raise ValueError(
                f"{name} must be a multiple of {divisor} (the model's size divisor), got {value}; "
                f"nearest valid: {max(divisor, value // divisor * divisor)} or {-(-value // divisor) * divisor}"
            )
        if value > limit:
            raise ValueError(
                f"{name} {value} is beyond this model's useful range: at most {limit} pixels "
                f"({MAX_SIDE_PER_SCALE}x the config's resize scale {max(config.preprocess.scale)})"
            )
    stride = largest_feature_stride(config)
    for name, extent in (("dynamic_height", options.dynamic_height), ("dynamic_width", options.dynamic_width)):
        if extent is not None and extent.min < 2 * stride:
            raise ValueError(
                f"{name} MIN must be at least {2 * stride} (twice the model's coarsest feature stride "
                f"{stride}), got {extent.min}"
            )
    tokens = encoder_tokens(config, heights.min, widths.min)
    queries = config.model.transformer.num_queries
    if tokens < queries:
        side = smallest_square_side(config)
        raise ValueError(
            f"input {heights.min}x{widths.min} gives the encoder {tokens} tokens, fewer than the model's "
            f"{queries} queries (model.transformer.num_queries); the smallest square input that works is "
            f"{side}x{side}"
        )


def prepare_model(model: torch.nn.Module, options: ExportOptions, fuse_msda_inputs: bool = False) -> torch.nn.Module:
    """Put ``model`` in inference mode on the export device, dtype and MSDA implementation.

    ``fuse_msda_inputs``: the encoder's MSDA layers call ``codetr::msda_from_offsets`` (see
    :func:`set_msda_fusion`).
    """
    model = model.eval().requires_grad_(False).to(device=options.device, dtype=options.dtype)
    set_msda_fusion(model, options, fuse_msda_inputs)
    return model


def set_msda_fusion(model: torch.nn.Module, options: ExportOptions, enabled: bool) -> None:
    """Sets the MSDA implementation of ``options`` on ``model``, with (``enabled``) or without
    the encoder's MSDA layers calling ``codetr::msda_from_offsets``, which prepares the sampling
    locations and the softmax inside the CUDA kernel.

    Only graphs that PyTorch runs (the AOTInductor package) take the fused op: ONNX and
    TensorRT know ``codetr::msda`` alone. The decomposed (pure-PyTorch) MSDA has no fused form,
    so ``enabled`` is ignored for it.
    """
    decomposed = options.msda is MsdaMode.DECOMPOSED
    set_msda_implementation(model, use_reference=decomposed, fuse_inputs=enabled and not decomposed)


def example_inputs(options: ExportOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic model inputs at the traced size.

    images [B, 3, H, W] float32 RGB 0-255 whatever the export dtype (the model normalises in
    float32, then casts to its parameters' dtype); image_sizes [B, 2] int64 (h, w), the full canvas.
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (options.batch_size, 3, options.height, options.width), generator=generator)
    image_sizes = torch.tensor([[options.height, options.width]] * options.batch_size, dtype=torch.int64)
    return images.to(options.device, torch.float32), image_sizes.to(options.device)


def dynamic_shapes(options: ExportOptions, size_divisor: int) -> tuple[dict[int, object] | None, None]:
    """torch.export dynamic-shape spec for (images, image_sizes).

    A dynamic side is declared as ``size_divisor * blocks`` so the exporter knows every size is
    a multiple of the divisor; otherwise the strided convolutions' rounding would need guards.
    """
    image_dims: dict[int, object] = {}
    for axis, name, extent in ((2, "height", options.dynamic_height), (3, "width", options.dynamic_width)):
        if extent is not None:
            image_dims[axis] = size_divisor * _blocks(name, extent, size_divisor)
    return (image_dims or None), None


def _blocks(name: str, extent: DimRange, size_divisor: int) -> Dim:
    return Dim(f"{name}_blocks", min=extent.min // size_divisor, max=extent.max // size_divisor)


class PlainOutputs(torch.nn.Module):
    """The model with its Detections returned as a plain (boxes, scores, labels) tuple.

    A plain tuple keeps the saved .pt2 loadable anywhere: a NamedTuple output would have to be
    registered with torch's pytree serializer in every process that saves or loads it.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(self.model(images, image_sizes))


def export_program(model: torch.nn.Module, options: ExportOptions, size_divisor: int) -> ExportedProgram:
    """Trace ``model`` (already prepared) at the options' input size into an ExportedProgram
    with inputs (images, image_sizes) and outputs (boxes, scores, labels)."""
    shapes = dynamic_shapes(options, size_divisor) if options.is_dynamic else None
    with torch.no_grad(), tf32(options.allow_tf32):
        return torch.export.export(PlainOutputs(model), example_inputs(options), dynamic_shapes=shapes, strict=False)
