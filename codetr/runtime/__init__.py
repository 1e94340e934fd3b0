"""Running Co-DINO models: the eager model, ExportedProgram, ONNX Runtime, TensorRT,
Torch-TensorRT and AOTInductor, one interface and one result type.

:func:`load_runtime` picks the runtime for an exported file (by the artifact table and the
export's metadata.json beside it); every runtime is a :class:`Runtime` and checks its inputs
before running. :class:`codetr.runtime.predictor.Predictor` adds the pre- and post-processing.
"""

from codetr.runtime.base import Runtime
from codetr.runtime.loader import load_runtime

__all__ = ["Runtime", "load_runtime"]
