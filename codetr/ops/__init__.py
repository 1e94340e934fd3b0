"""Operators: multiscale deformable attention as a torch op, its PyTorch reference and the layer."""

from codetr.ops.modules import MultiScaleDeformableAttention, set_msda_implementation
from codetr.ops.msda import MSDA_CHECK_VARIABLE, msda, set_msda_checks
from codetr.ops.msda_reference import msda_reference

__all__ = [
    "MSDA_CHECK_VARIABLE",
    "MultiScaleDeformableAttention",
    "msda",
    "msda_reference",
    "set_msda_checks",
    "set_msda_implementation",
]
