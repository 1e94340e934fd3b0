"""Operators: multiscale deformable attention as a torch op, its PyTorch reference and the layer;
the detection selection of in-graph post-processing (:mod:`codetr.ops.select`)."""

from codetr.ops.modules import MultiScaleDeformableAttention, set_msda_implementation
from codetr.ops.msda import msda
from codetr.ops.msda_reference import msda_reference
from codetr.ops.select import select_detections

__all__ = ["MultiScaleDeformableAttention", "msda", "msda_reference", "select_detections", "set_msda_implementation"]
