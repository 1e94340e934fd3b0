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
from codetr.ops import set_msda_implementation

def largest_feature_stride(config: Config) -> int:
    """Stride of the coarsest feature level: the backbone's last output (stride patch * 2^index,
    patch 4 for ResNet's stem) halved once more per extra neck level."""
    backbone = config.model.swin or config.model.resnet
    patch = config.model.swin.patch_size if config.model.swin else 4
    extra_levels = config.model.neck.num_outs - len(backbone.out_indices)
    return patch * 2 ** max(backbone.out_indices) * 2**extra_levels


def prepare_model(model: torch.nn.Module, options: ExportOptions) -> torch.nn.Module:
    """Put ``model`` in inference mode on the export device, dtype and MSDA implementation."""
    model = model.eval().requires_grad_(False).to(device=options.device, dtype=options.dtype)
    set_msda_implementation(model, use_reference=options.msda is MsdaMode.DECOMPOSED)
    return model


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
    with torch.no_grad():
        return torch.export.export(PlainOutputs(model), example_inputs(options), dynamic_shapes=shapes, strict=False)
