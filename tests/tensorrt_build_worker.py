"""Builds an ONNX model into a serialized engine with our plugin library loaded, in its own
process, and prints a JSON report on stdout.

The TensorRT tests run this as a subprocess because TensorRT-RTX's ONNX parser needs
``libtensorrt_rtx.so`` on LD_LIBRARY_PATH, which only a new process picks up (see
codetr.tensorrt.backend.rtx_link_dir).

Usage: python tensorrt_build_worker.py REQUESTS_JSON
REQUESTS_JSON is a list of requests, built one after another in this process (each with its own
builder and log); the output is the list of their reports.
Request: {"onnx": path, "plugin": path, "profile": {input: [min, opt, max]}, "engine": path,
          "embed_plugin": bool (serialize the plugin library into the engine)}
Report: {"parsed", "parser_errors", "network_layers": [[name, type]], "engine_bytes",
         "engine_layers": [[name, type, metadata]], "errors": [logged errors]}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from codetr.tensorrt.backend import check_plugin_nodes_parsable, import_tensorrt
from codetr.tensorrt.inspect import layers_from_build_log, make_recording_logger
from codetr.tensorrt.plugin import register_plugin_library


def build(request: dict) -> dict:
    trt = import_tensorrt()
    logger = make_recording_logger(trt)
    check_plugin_nodes_parsable(trt)
    builder = trt.Builder(logger)
    plugin = register_plugin_library(trt, request["plugin"])
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(request["onnx"])
    report = {
        "parsed": bool(parsed),
        "parser_errors": [parser.get_error(i).desc() for i in range(parser.num_errors)],
        "network_layers": [
            [network.get_layer(i).name, network.get_layer(i).type.name]
            for i in range(network.num_layers)
        ],
        "engine_bytes": None,
        "engine_layers": [],
    }
    if parsed:
        config = builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if request.get("profile"):
            profile = builder.create_optimization_profile()
            for name, (low, opt, high) in request["profile"].items():
                profile.set_shape(name, low, opt, high)
            config.add_optimization_profile(profile)
        if request.get("embed_plugin"):
            config.plugins_to_serialize = [str(plugin.path)]
        serialized = builder.build_serialized_network(network, config)
        if serialized is not None:
            report["engine_bytes"] = serialized.nbytes
            Path(request["engine"]).write_bytes(bytes(serialized))
        report["engine_layers"] = [
            [layer.name, layer.layer_type, layer.metadata]
            for layer in layers_from_build_log(text for _, text in logger.messages)
        ]
    report["errors"] = logger.errors()
    return report


if __name__ == "__main__":
    print(json.dumps([build(request) for request in json.loads(sys.argv[1])]))
