"""Running exported Co-DINO models: ExportedProgram, ONNX Runtime and TensorRT, one result type."""

from codetr.runtime.base import Runtime, load_runtime

__all__ = ["Runtime", "load_runtime"]
