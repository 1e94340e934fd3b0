"""NVIDIA's stock ``MultiscaleDeformableAttnPlugin_TRT``, version 2: which TensorRT ships it.

Version 2 (the IPluginV3 form codetr's ``--msda nvidia`` ONNX names, see
:mod:`codetr.contract.plugin`) is in the plugin library (``libnvinfer_plugin``) of TensorRT
10.11.0 and later (TensorRT 10.11.0 release notes: "Added version 2 of the
MultiscaleDeformableAttention plugin (MultiscaleDeformableAttnPlugin_TRT), that implements the
IPluginV3 interface"); version 1 (IPluginV2DynamicExt, TensorRT OSS 22.05 / TensorRT 8.2.5) has
other input types and is not what codetr writes. TensorRT-RTX ships no plugin library.
A ``pip install tensorrt`` of 10.11 or later has it, without the C++ headers codetr's own plugin
needs to build.
"""

from __future__ import annotations

from types import ModuleType

from codetr.contract.plugin import NVIDIA_OP_TYPE, NVIDIA_PLUGIN_NAMESPACE, NVIDIA_PLUGIN_VERSION
from codetr.tensorrt.backend import is_tensorrt_rtx

FIRST_TENSORRT = (10, 11)
"""The first TensorRT (major, minor) whose plugin library has version 2 of the stock plugin."""


def _version(trt: ModuleType) -> tuple[int, int]:
    major, minor = (int(part) for part in trt.__version__.split(".")[:2])
    return major, minor


def stock_plugin_missing_reason(trt: ModuleType, logger=None) -> str | None:
    """Why ``trt`` cannot build or run the stock plugin v2 (None when its registry has it).

    Initialises ``libnvinfer_plugin`` (``trt.init_libnvinfer_plugins``) and asks the plugin
    registry for the creator; ``logger`` is the trt.ILogger for that call (default: a WARNING one).
    """
    name = f"{NVIDIA_OP_TYPE} version {NVIDIA_PLUGIN_VERSION}"
    if is_tensorrt_rtx(trt):
        return f"TensorRT-RTX {trt.__version__} ships no plugin library, so no {name}"
    since = ".".join(map(str, FIRST_TENSORRT))
    if _version(trt) < FIRST_TENSORRT:
        return f"TensorRT {trt.__version__} predates {name} (IPluginV3), which TensorRT {since}.0 added; pip install 'tensorrt>={since}'"
    if not trt.init_libnvinfer_plugins(logger or trt.Logger(trt.Logger.WARNING), ""):
        return f"TensorRT {trt.__version__} could not initialise its plugin library (libnvinfer_plugin)"
    if trt.get_plugin_registry().get_creator(NVIDIA_OP_TYPE, NVIDIA_PLUGIN_VERSION, NVIDIA_PLUGIN_NAMESPACE) is None:
        return f"TensorRT {trt.__version__}'s plugin library registers no {name}"
    return None


def check_stock_plugin(trt: ModuleType, logger=None) -> None:
    """RuntimeError with :func:`stock_plugin_missing_reason` unless ``trt`` has the stock plugin v2."""
    reason = stock_plugin_missing_reason(trt, logger)
    if reason:
        raise RuntimeError(
            f"{reason}; build codetr's plugin library (needs TensorRT headers) and export with --msda plugin, "
            "or export with --msda decomposed"
        )
