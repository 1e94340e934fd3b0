"""Operators: multiscale deformable attention as a torch op, its PyTorch reference and the layer;
the detection selection of in-graph post-processing (:mod:`codetr.ops.select`)."""

from codetr.ops.modules import MultiScaleDeformableAttention, set_msda_implementation
from codetr.ops.msda import MSDA_CHECK_VARIABLE, msda, msda_from_offsets, set_msda_checks
from codetr.ops.msda_reference import msda_reference
from codetr.ops.select import select_detections

__all__ = [
    "MSDA_CHECK_VARIABLE",
    "MultiScaleDeformableAttention",
    "msda",
    "msda_from_offsets",
    "msda_reference",
    "select_detections",
    "set_msda_checks",
    "set_msda_implementation",
]
