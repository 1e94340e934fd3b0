"""Building a serialized TensorRT engine from the exported ONNX model.

Works with ``tensorrt`` 10.x/11.x and, as a fallback, TensorRT-RTX (which builds on a machine
without a GPU); :mod:`codetr.tensorrt.backend` picks the package. The network is strongly typed:
every layer runs in the dtype the ONNX graph gives it, so the precision decisions made in the
PyTorch model (see ``codetr.models``) carry over unchanged instead of TensorRT choosing its own.
TensorRT lets float32 layers use TF32 by default; the builder's TF32 flag is cleared unless
``allow_tf32``, so float32 means IEEE float32 as in the PyTorch model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import onnx

from codetr.atomic import atomic_path
from codetr.contract.plugin import CODETR_OP_TYPE, NVIDIA_OP_TYPE
from codetr.tensorrt.backend import check_plugin_nodes_parsable, import_tensorrt, is_tensorrt_rtx
from codetr.tensorrt.data_dependent import check_buildable
from codetr.tensorrt.stock_plugin import check_stock_plugin
from codetr.tensorrt.inspect import make_recording_logger
from codetr.tensorrt.plugin import PluginLibraryInfo, register_plugin_library

logger = logging.getLogger("codetr.export")

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ShapeProfile:
    """Optimisation profile of one dynamic network input: smallest, tuned-for and largest shape."""

    min: Shape
    opt: Shape
    max: Shape


@dataclasses.dataclass
class EngineBuild:
    """What a build used and logged. ``log`` holds every builder message (VERBOSE included), from
    which :func:`codetr.tensorrt.inspect.layers_from_build_log` lists the engine's layers.
    ``plugin`` is our MSDA plugin library when the graph uses it (None otherwise)."""

    backend: str
    version: str
    log: list[str]
    plugin: PluginLibraryInfo | None = None


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    optimization_level: int = 3,
    profiles: Mapping[str, ShapeProfile] | None = None,
    plugin_library: Path | None = None,
    embed_plugin: bool = False,
    timing_cache: Path | None = None,
    allow_tf32: bool = False,
) -> EngineBuild:
    """Parse ``onnx_path`` into a strongly typed network and write the serialized engine.

    ``profiles`` gives the shape range of each input with dynamic dimensions (one optimisation
    profile). ``plugin_library`` is the codetr MSDA plugin (``libcodetr_msda_trt.so``; default:
    the package's copy), loaded only when the graph has ``codetr::CodetrMSDA`` nodes;
    ``embed_plugin`` serializes it into the engine so deployment needs no separate library.
    ``timing_cache`` is read if present and rewritten with this build's timings (full
    TensorRT only: TensorRT-RTX has no timing cache). ``allow_tf32`` keeps TensorRT's default
    of TF32 for float32 layers; False (default) clears the flag. The engine is written atomically.
    """
    trt = import_tensorrt()
    build_log = _process_logger(trt)
    build_log.messages.clear()
    op_types = _custom_op_types(onnx_path)
    plugin = None
    if CODETR_OP_TYPE in op_types:
        plugin = register_plugin_library(trt, plugin_library)
        check_plugin_nodes_parsable(trt)
    if NVIDIA_OP_TYPE in op_types:
        check_stock_plugin(trt, build_log)

    builder = trt.Builder(build_log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, build_log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: " + "; ".join(errors))
    check_buildable(trt, network)

    config = builder.create_builder_config()
    config.builder_optimization_level = optimization_level
    # Layer types and names in the engine (and in the VERBOSE build log), for inspection.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not allow_tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    _add_profile(builder, network, config, profiles or {})
    if embed_plugin and CODETR_OP_TYPE in op_types:
        config.plugins_to_serialize = [str(plugin.path)]
    use_timing_cache = timing_cache is not None and not is_tensorrt_rtx(trt)
    if use_timing_cache:
        cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=True)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        reasons = build_log.errors() or ["no reason logged"]
        raise RuntimeError("TensorRT could not build the engine: " + "; ".join(reasons))
    with atomic_path(engine_path) as temporary:
        temporary.write_bytes(memoryview(serialized))
    if use_timing_cache:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(timing_cache) as temporary:
            temporary.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return EngineBuild(trt.__name__, trt.__version__, [text for _, text in build_log.messages], plugin)


_loggers: dict[str, object] = {}


def _process_logger(trt: ModuleType):
    """One recording logger per TensorRT package, alive until the process ends.

    TensorRT keeps the first logger it is given as its library-wide logger and may call it
    after the build (even at interpreter exit); a logger garbage-collected after one build would
    leave it a dangling pointer.
    """
    if trt.__name__ not in _loggers:
        _loggers[trt.__name__] = make_recording_logger(trt, forward_to=logger)
    return _loggers[trt.__name__]


def _custom_op_types(onnx_path: Path) -> set[str]:
    """Op types of the graph's non-standard (plugin) nodes."""
    # Weights are not needed to see which ops the graph uses.
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {node.op_type for node in model.graph.node if node.domain not in ("", "ai.onnx")}


def _add_profile(builder, network, config, profiles: Mapping[str, ShapeProfile]) -> None:
    dynamic_inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if any(dim < 0 for dim in tensor.shape):
            dynamic_inputs[tensor.name] = tuple(tensor.shape)
    missing = sorted(set(dynamic_inputs) - set(profiles))
    if missing:
        raise ValueError(f"no shape profile for the dynamic input(s) {', '.join(missing)}")
    unknown = sorted(set(profiles) - set(dynamic_inputs))
    if unknown:
        raise ValueError(f"shape profiles given for inputs that are not dynamic: {', '.join(unknown)}")
    if not dynamic_inputs:
        return
    profile = builder.create_optimization_profile()
    for name, network_shape in dynamic_inputs.items():
        shapes = profiles[name]
        _check_profile(name, network_shape, shapes)
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)


def _check_profile(name: str, network_shape: Sequence[int], shapes: ShapeProfile) -> None:
    for label, shape in (("min", shapes.min), ("opt", shapes.opt), ("max", shapes.max)):
        if len(shape) != len(network_shape) or any(
            fixed >= 0 and fixed != size for fixed, size in zip(network_shape, shape)
        ):
            raise ValueError(f"profile {label} shape {shape} of input {name!r} does not fit {tuple(network_shape)}")
    if not all(low <= mid <= high for low, mid, high in zip(shapes.min, shapes.opt, shapes.max)):
        raise ValueError(f"profile of input {name!r} needs min <= opt <= max, got {shapes}")
