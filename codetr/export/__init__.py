"""Export of Co-DINO: torch.export (.pt2), ONNX (plugin node or decomposed), TensorRT engines and
Torch-TensorRT programs, written as one unit with their ``metadata.json``.

``codetr export`` (:mod:`codetr.cli.export`) is the command line; :func:`export_model` is the API.
"""

from codetr.contract.artifacts import Artifact, MsdaMode
from codetr.export.options import DimRange, ExportOptions
from codetr.export.pipeline import ExportResult, export_model
from codetr.export.stages import ExportError

__all__ = ["Artifact", "DimRange", "ExportError", "ExportOptions", "ExportResult", "MsdaMode", "export_model"]
