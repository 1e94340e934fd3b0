"""Running Co-DINO models: ExportedProgram, ONNX Runtime and TensorRT, one result type.

:func:`load_runtime` picks the runtime for a file; every runtime is a :class:`Runtime`.
"""

from codetr.runtime.base import Runtime
from codetr.runtime.loader import load_runtime

__all__ = ["Runtime", "load_runtime"]
