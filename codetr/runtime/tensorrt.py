"""Running a serialized TensorRT engine (``model.engine``) on a CUDA GPU.

The runner binds torch tensors to the engine by address (``set_tensor_address``) and enqueues
on torch's current CUDA stream (``execute_async_v3``), so it composes with other torch work
without host synchronisation. Outputs whose shape only the engine knows at run time
(data-dependent shapes) are allocated through an ``IOutputAllocator`` that hands TensorRT torch
memory. With ``cuda_graph=True`` the enqueue is captured and replayed while the input shapes stay the
same (a shape change recaptures).

Before deserializing, the export's metadata (``metadata.json`` beside the engine, handed over
by :func:`codetr.runtime.load_runtime`) is checked against the running TensorRT and our plugin
library, so a version mismatch is reported as such instead of as TensorRT's generic
deserialization failure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import torch

from codetr.models import Detections
from codetr.contract.metadata import ExportMetadata
from codetr.runtime.base import Runtime, check_inputs, resolve_device
from codetr.runtime.cuda_graph import CudaGraphReplay
from codetr.tensorrt.backend import import_tensorrt
from codetr.tensorrt.plugin import PACKAGE_LIBRARY, register_available_plugin
from codetr.tensorrt.stock_plugin import check_stock_plugin


def torch_dtype(trt: ModuleType, trt_type) -> torch.dtype:
    """The torch dtype of a TensorRT DataType (ValueError for types torch has no match for)."""
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    if trt_type not in table:
        raise ValueError(f"TensorRT data type {trt_type} has no torch equivalent")
    return table[trt_type]


def check_engine_metadata(metadata: Mapping, backend: str, version: str, plugin_version: str | None) -> None:
    """Raise ValueError when ``metadata`` (the export's metadata.json) says the engine was
    built by another TensorRT package/version than ``backend``/``version``, or with a plugin
    version other than ``plugin_version`` (None: no plugin library available).

    TensorRT engines only deserialize under the exact TensorRT version that built them.
    """
    versions = metadata.get("versions", {})
    built_by = {name: versions[name] for name in ("tensorrt", "tensorrt_rtx_bindings") if name in versions}
    if built_by and built_by.get(backend) != version:
        (built_backend, built_version), = built_by.items()
        raise ValueError(
            f"engine was built with {built_backend} {built_version} but {backend} {version} is "
            "running; engines only load under the TensorRT version that built them: rebuild "
            "the engine with codetr export on this machine"
        )
    if metadata.get("msda") == "plugin":
        if plugin_version is None:
            raise ValueError(
                "engine uses the codetr MSDA plugin but no plugin library is available "
                f"(expected {PACKAGE_LIBRARY}); build it with TensorRT headers "
                "(see codetr_build/tensorrt_plugin.py) or pass plugin_library="
            )
        built_plugin = versions.get("codetr_msda_plugin")
        if built_plugin is not None and built_plugin != plugin_version:
            raise ValueError(
                f"engine was built with codetr MSDA plugin version {built_plugin} but the loaded "
                f"library is version {plugin_version}; rebuild the engine or use the matching "
                "plugin library"
            )


def make_output_allocator(trt: ModuleType, dtype: torch.dtype, device: torch.device):
    """A ``trt.IOutputAllocator`` that keeps one data-dependent output in torch memory;
    ``.output()`` returns a copy of the last result."""

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffer = torch.empty(0, dtype=torch.uint8, device=device)
            self.shape: tuple[int, ...] = ()

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            # Grow only: TensorRT asks again on every run, often for the same size.
            if self.buffer.numel() < size:
                self.buffer = torch.empty(max(size, 1), dtype=torch.uint8, device=device)
            return self.buffer.data_ptr()

        def notify_shape(self, tensor_name, shape):
            self.shape = tuple(shape)

        def output(self) -> torch.Tensor:
            count = math.prod(self.shape)
            itemsize = torch.empty(0, dtype=dtype).element_size()
            return self.buffer[: count * itemsize].view(dtype).view(self.shape).clone()

    return TorchOutputAllocator()


class TensorRTRuntime(Runtime):
    """A deserialized engine with one execution context, on ``device`` (default: cuda:0).

    ``plugin_library``: our MSDA plugin library (default: the package's copy, loaded when
    present). ``metadata``: the export's metadata, checked against the running TensorRT and
    plugin before deserializing and against every input before running.
    ``cuda_graph``: capture the enqueue and replay it until the input shapes change (engines with
    data-dependent output shapes cannot be captured: ValueError on the first call).
    """

    def __init__(
        self,
        engine_path: str | Path,
        metadata: ExportMetadata | None = None,
        *,
        plugin_library: str | Path | None = None,
        device: str | torch.device | None = None,
        cuda_graph: bool = False,
    ) -> None:
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise FileNotFoundError(f"engine_path: no such file {engine_path}")
        if not torch.cuda.is_available():
            raise ValueError("the TensorRT runtime needs a CUDA GPU; none is visible to torch")
        self.device = resolve_device(device or "cuda")
        if self.device.type != "cuda":
            raise ValueError(f"device must be a CUDA device for a TensorRT engine, got {self.device}")
        self.metadata = metadata
        trt = import_tensorrt()
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)

        plugin = register_available_plugin(trt, plugin_library)
        plugin_version = plugin.version if plugin else None
        if metadata is not None:
            check_engine_metadata(metadata.document, trt.__name__, trt.__version__, plugin_version)
            if metadata.msda == "nvidia":  # the engine's MSDA layers are libnvinfer_plugin's stock plugin
                try:
                    check_stock_plugin(trt, self._logger)
                except RuntimeError as error:
                    raise ValueError(str(error)) from None

        with torch.cuda.device(self.device):
            runtime = trt.Runtime(self._logger)
            self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise ValueError(
                    f"TensorRT {trt.__version__} could not deserialize {engine_path}; it was "
                    "probably built by another TensorRT version, for another GPU, or needs a "
                    "plugin library that is not loaded (see the TensorRT log above)"
                )
            self.context = self.engine.create_execution_context()
        self._runtime = runtime  # the engine must not outlive its runtime

        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        self.input_names = [name for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        self.output_names = [name for name in names if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
        if len(self.input_names) != 2 or len(self.output_names) != 3:
            raise ValueError(
                f"{engine_path}: expected inputs (images, image_sizes) and outputs (boxes, scores, "
                f"labels), got inputs {self.input_names} and outputs {self.output_names}"
            )
        self._dtypes = {name: torch_dtype(trt, self.engine.get_tensor_dtype(name)) for name in names}
        self._allocators: dict[str, object] = {}
        self.cuda_graph = cuda_graph
        self._replay = CudaGraphReplay(self.device)

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes, self.metadata)
        inputs = [
            tensor.to(self.device, self._dtypes[name]).contiguous()
            for name, tensor in zip(self.input_names, (images, image_sizes))
        ]
        with torch.cuda.device(self.device):
            if self.cuda_graph:
                outputs = self._replay(lambda static_inputs, stream: self._enqueue(static_inputs, stream, capturing=True), inputs)
            else:
                outputs = self._enqueue(inputs, torch.cuda.current_stream(self.device))
        boxes, scores, labels = outputs
        return Detections(boxes.float(), scores.float(), labels.long())

    def _bind(self, inputs: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Set input shapes/addresses and allocate the outputs TensorRT can size from the input
        shapes; the others (None here) go to an output allocator during the run."""
        for name, tensor in zip(self.input_names, inputs):
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(
                    f"input {name} of shape {tuple(tensor.shape)} is outside the engine's "
                    f"optimisation profile"
                )
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs: list[torch.Tensor | None] = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if -1 in shape:  # data-dependent: only known once the engine has run
                if name not in self._allocators:
                    allocator = make_output_allocator(self._trt, self._dtypes[name], self.device)
                    self.context.set_output_allocator(name, allocator)
                    self._allocators[name] = allocator
                outputs.append(None)
                continue
            tensor = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            self.context.set_tensor_address(name, tensor.data_ptr())
            outputs.append(tensor)
        return outputs

    def _enqueue(
        self, inputs: list[torch.Tensor], stream: torch.cuda.Stream, capturing: bool = False
    ) -> list[torch.Tensor]:
        outputs = self._bind(inputs)
        if capturing and any(output is None for output in outputs):
            raise ValueError(
                "cuda_graph=True needs output shapes known from the input shapes; this engine "
                "has data-dependent output shapes, which a CUDA graph cannot capture"
            )
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return [
            self._allocators[name].output() if output is None else output
            for name, output in zip(self.output_names, outputs)
        ]
