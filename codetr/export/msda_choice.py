"""``--msda auto``: the MSDA form an engine can be built with here.

1. codetr's own plugin (``--msda plugin``) when its library is built (``codetr/lib/libcodetr_msda_trt.so``
   or ``--plugin-library``);
2. else NVIDIA's stock ``MultiscaleDeformableAttnPlugin_TRT`` version 2 (``--msda nvidia``) when the
   installed TensorRT's plugin library has it (TensorRT 10.11.0 and later, see
   :mod:`codetr.tensorrt.stock_plugin`): what a ``pip install tensorrt`` without C++ headers can use;
3. else no TensorRT engine can hold MSDA as a plugin: with no TensorRT at all the ONNX keeps our
   plugin node (ONNX Runtime runs it); with a TensorRT that lacks both, an explicitly requested
   engine is refused with the reason, and ``--artifacts auto`` skips it.

The choice and its reason are logged and recorded in metadata.json (``msda``, ``options.msda_choice``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from codetr.contract.artifacts import MsdaMode
from codetr.tensorrt.backend import import_tensorrt, tensorrt_unavailable_reason
from codetr.tensorrt.plugin import plugin_library_path
from codetr.tensorrt.stock_plugin import stock_plugin_missing_reason

logger = logging.getLogger("codetr.export")

AUTO = "auto"
MSDA_CHOICES = (AUTO, *(mode.value for mode in MsdaMode))


@dataclasses.dataclass(frozen=True)
class MsdaChoice:
    """The MSDA form to export and why (``reason`` is recorded in metadata.json)."""

    mode: MsdaMode
    reason: str


def choose_msda(requested: str, plugin_library: Path | None = None, engine_requested: bool = False) -> MsdaChoice:
    """Resolve ``requested`` (``auto`` or an :class:`MsdaMode` value) as the module docstring says.

    Raises ValueError for an unknown value, and for ``auto`` with ``engine_requested`` when no
    plugin can hold MSDA in an engine here (the message gives both reasons and the ways out).
    """
    if requested != AUTO:
        try:
            return MsdaChoice(MsdaMode(requested), "requested")
        except ValueError:
            raise ValueError(f"--msda must be one of {', '.join(MSDA_CHOICES)}, got {requested!r}") from None
    try:
        library = plugin_library_path(plugin_library)
    except FileNotFoundError as error:
        no_library = str(error)
    else:
        return _chosen(MsdaChoice(MsdaMode.PLUGIN, f"codetr's plugin library {library}"))
    if tensorrt_unavailable_reason():
        return _chosen(MsdaChoice(
            MsdaMode.PLUGIN, "no TensorRT here to build an engine; the ONNX keeps codetr's plugin node (ONNX Runtime runs it)"
        ))
    trt = import_tensorrt()
    no_stock = stock_plugin_missing_reason(trt)
    if no_stock is None:
        return _chosen(MsdaChoice(
            MsdaMode.NVIDIA,
            f"NVIDIA's stock MultiscaleDeformableAttnPlugin_TRT v2 of TensorRT {trt.__version__} ({no_library.split(';')[0]})",
        ))
    reason = f"no plugin can hold MSDA in a TensorRT engine here: {no_library.split(';')[0]}, and {no_stock}"
    if engine_requested:
        raise ValueError(
            f"--msda auto: {reason}; build codetr's plugin library, install TensorRT >= 10.11 (pip install tensorrt), "
            "or export with --msda decomposed"
        )
    return _chosen(MsdaChoice(MsdaMode.PLUGIN, reason + "; the ONNX keeps codetr's plugin node"))


def _chosen(choice: MsdaChoice) -> MsdaChoice:
    logger.info("--msda auto: %s (%s)", choice.mode.value, choice.reason)
    return choice
