"""What an engine is made of: its layers and which of them are plugin layers.

Two sources, one result type:
- :func:`engine_layers` asks a deserialized engine's IEngineInspector (needs a GPU);
- :func:`layers_from_build_log` reads the same inspector report that the builder logs at VERBOSE
  severity when the builder config has ``ProfilingVerbosity.DETAILED``. That is how a GPU-less
  machine (TensorRT-RTX builds engines on CPU but cannot deserialize them) sees what it built.
Both need ``ProfilingVerbosity.DETAILED`` at build time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterable
from types import ModuleType

# TensorRT reports plugin layers as "PluginV3" (or "PluginV2"); TensorRT-RTX as "custom_layer".
PLUGIN_LAYER_TYPES = frozenset({"PluginV3", "PluginV2", "custom_layer"})
_LOG_LAYER = re.compile(r"^Name: (?P<name>[^,]*), LayerType: (?P<type>[^,]*),.*?Metadata: (?P<meta>.*)$")
_LOG_INPUTS = re.compile(r"Inputs: \[(?P<inputs>.*?)\], (?:Constants|Outputs): ")
_DATATYPE = re.compile(r"Datatype: (\w+)")


@dataclasses.dataclass(frozen=True)
class EngineLayer:
    """One layer of a built engine. ``metadata`` carries e.g. "[ONNX Layer: msda0]";
    ``input_dtypes``: TensorRT's names of its input tensors' types (e.g. "Float", "Half", "Int8"),
    empty when the source does not give them."""

    name: str
    layer_type: str
    metadata: str
    input_dtypes: tuple[str, ...] = ()

    @property
    def is_plugin(self) -> bool:
        return self.layer_type in PLUGIN_LAYER_TYPES


def make_recording_logger(trt: ModuleType, forward_to: logging.Logger | None = None):
    """A ``trt.ILogger`` that keeps every message (``.messages``: list of (severity, text)),
    forwarding to ``forward_to`` at a matching logging level."""
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[object, str]] = []

        def log(self, severity, msg) -> None:
            self.messages.append((severity, msg))
            if forward_to is not None:
                forward_to.log(levels.get(severity, logging.INFO), "TensorRT: %s", msg)

        def errors(self) -> list[str]:
            bad = (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR)
            return [text for severity, text in self.messages if severity in bad]

    return RecordingLogger()


def engine_layers(trt: ModuleType, engine) -> list[EngineLayer]:
    """Layers of a deserialized ``ICudaEngine`` from its inspector's JSON report."""
    report = json.loads(
        engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    )
    layers = report["Layers"]
    if layers and isinstance(layers[0], str):
        raise ValueError(
            "the engine was built without ProfilingVerbosity.DETAILED, so it records layer "
            "names only and no layer types"
        )
    return [
        EngineLayer(layer["Name"], layer["LayerType"], str(layer.get("Metadata", "")),
                    tuple(str(tensor.get("Format/Datatype", "")) for tensor in layer.get("Inputs", [])))
        for layer in layers
    ]


def layers_from_build_log(messages: Iterable[str]) -> list[EngineLayer]:
    """Layers listed in the builder's VERBOSE "Layers:" report (see the module docstring)."""
    layers = []
    for message in messages:
        for line in message.splitlines():
            match = _LOG_LAYER.match(line)
            if match:
                inputs = _LOG_INPUTS.search(line)
                dtypes = tuple(_DATATYPE.findall(inputs["inputs"])) if inputs else ()
                layers.append(EngineLayer(match["name"], match["type"], match["meta"], dtypes))
    return layers


def onnx_nodes_of(layers: Iterable[EngineLayer]) -> set[str]:
    """Names of the ONNX nodes each layer came from ("[ONNX Layer: a] ... [ONNX Layer: b]")."""
    return {name for layer in layers for name in re.findall(r"ONNX Layer: ([^\]]+)", layer.metadata)}
