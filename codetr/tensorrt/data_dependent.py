"""Layers with data-dependent output shapes, and the builder that cannot build them.

An export with in-graph post-processing (``codetr export --postprocess threshold|nms``) holds one
ONNX ``NonMaxSuppression``, which TensorRT's ONNX parser turns into an ``INMSLayer`` whose output
count is known only at run time; the engine's outputs are then served through an
``IOutputAllocator`` (:mod:`codetr.runtime.tensorrt`). TensorRT 10.x builds it. TensorRT-RTX
(tensorrt-rtx 1.7, the builder that runs without a GPU) parses it but has no implementation
("has no runners that implement it"), and its parser imports ``NonZero`` only through a plugin
it does not ship: :func:`check_buildable` says so before the builder fails deep inside.
"""

from __future__ import annotations

from types import ModuleType

from codetr.tensorrt.backend import is_tensorrt_rtx


def data_dependent_layers(trt: ModuleType, network) -> list[str]:
    """Names of the network's INMSLayer / INonZeroLayer layers."""
    kinds = (trt.LayerType.NMS, trt.LayerType.NON_ZERO)
    layers = (network.get_layer(index) for index in range(network.num_layers))
    return [layer.name for layer in layers if layer.type in kinds]


def check_buildable(trt: ModuleType, network) -> None:
    """RuntimeError naming the layer and the fix when ``trt`` is TensorRT-RTX and the network has
    data-dependent layers (see the module docstring)."""
    if not is_tensorrt_rtx(trt):
        return
    layers = data_dependent_layers(trt, network)
    if layers:
        raise RuntimeError(
            f"TensorRT-RTX {trt.__version__} has no implementation of INMSLayer/INonZeroLayer (layer "
            f"{layers[0]!r}), which --postprocess threshold/nms needs; build the engine with TensorRT 10.x "
            "(pip install tensorrt) on a GPU, or export with --postprocess none"
        )
