"""codetr.export.tensorrt_engine: the engine builder keeps float32 IEEE float32 unless TF32 is allowed.

Built with TensorRT-RTX (builds on a CPU) or TensorRT, on a one-convolution float32 graph; the
builder config the build used is captured to read its TF32 flag.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import codetr.export.tensorrt_engine as tensorrt_engine
from codetr.tensorrt.backend import import_tensorrt, tensorrt_unavailable_reason


def one_conv_onnx(path: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype=np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "weight"], ["features"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


@pytest.fixture
def captured_configs(monkeypatch) -> list:
    """Builder configs created by build_engine, through a TensorRT module whose Builder records them."""
    if tensorrt_unavailable_reason():
        pytest.skip(tensorrt_unavailable_reason())
    trt = import_tensorrt()
    configs = []

    class RecordingBuilder:
        def __init__(self, logger) -> None:
            self._builder = trt.Builder(logger)

        def create_builder_config(self):
            configs.append(self._builder.create_builder_config())
            return configs[-1]

        def __getattr__(self, name):
            return getattr(self._builder, name)

    class RecordingModule(types.ModuleType):
        Builder = RecordingBuilder

        def __getattr__(self, name):
            return getattr(trt, name)

    recording = RecordingModule(trt.__name__)
    recording.__version__ = trt.__version__
    monkeypatch.setattr(tensorrt_engine, "import_tensorrt", lambda: recording)
    return configs


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_tf32_builder_flag_follows_allow_tf32(tmp_path: Path, captured_configs: list, allow_tf32: bool) -> None:
    trt = import_tensorrt()
    engine = tmp_path / "model.engine"
    tensorrt_engine.build_engine(one_conv_onnx(tmp_path / "model.onnx"), engine, optimization_level=0,
                                 allow_tf32=allow_tf32)
    (config,) = captured_configs
    assert config.get_flag(trt.BuilderFlag.TF32) is allow_tf32
    assert engine.stat().st_size > 0
