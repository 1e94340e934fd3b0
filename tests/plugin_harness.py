"""Python side of csrc/tensorrt/harness: calls the plugin library's IPluginV3 methods the way
TensorRT would, with no TensorRT installed. Used by the plugin tests (fields, formats, shape
checks on CPU) and by scripts/check_plugin_enqueue.py (enqueue on a GPU against the torch op).

The harness is compiled with the host C++ compiler against the TensorRT headers the plugin
library was built with (TensorRT_INCLUDE_DIR / TENSORRT_ROOT, see codetr_build). It compiles a
file of the source checkout, so it is test code (tests/), not part of the installed package.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from codetr.contract.plugin import (
    CODETR_OP_TYPE,
    CODETR_PLUGIN_NAMESPACE,
    CODETR_PLUGIN_VERSION,
)

HARNESS_SOURCE = (
    Path(__file__).resolve().parents[1] / "csrc" / "tensorrt" / "harness" / "msda_plugin_harness.cpp"
)
MAX_DIMS = 8


class TrtDataType(enum.IntEnum):
    """nvinfer1::DataType values."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


class PluginFieldType(enum.IntEnum):
    """nvinfer1::PluginFieldType values used here."""

    FLOAT32 = 2
    INT32 = 5
    INT64 = 10


def compile_harness(include_dir: Path, build_dir: Path, cuda_include_dir: Path) -> Path:
    """Compile the harness (cached by source and header folder) and return the library path."""
    key = hashlib.sha256(HARNESS_SOURCE.read_bytes() + str(include_dir).encode()).hexdigest()[:16]
    library = Path(build_dir) / f"libmsda_plugin_harness_{key}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        temporary = library.with_name(library.name + f".{os.getpid()}.tmp")
        subprocess.run(
            [os.environ.get("CXX", "g++"), "-std=c++17", "-O1", "-shared", "-fPIC",
             "-isystem", str(include_dir), "-isystem", str(cuda_include_dir),
             str(HARNESS_SOURCE), "-o", str(temporary), "-ldl"],
            check=True,
        )
        os.replace(temporary, library)
    return library


class PluginHarness:
    """One loaded plugin library. Plugins are opaque handles; free them with :meth:`destroy`."""

    def __init__(self, harness_library: Path, plugin_library: Path) -> None:
        lib = ctypes.CDLL(str(harness_library))
        pointer = ctypes.c_void_p
        i32p = ctypes.POINTER(ctypes.c_int32)
        i64p = ctypes.POINTER(ctypes.c_int64)
        signatures = {
            "harness_open": (ctypes.c_int, [ctypes.c_char_p] * 4),
            "harness_messages": (ctypes.c_char_p, []),
            "harness_create": (
                pointer,
                [ctypes.c_int32, ctypes.POINTER(ctypes.c_char_p), i32p, i64p, ctypes.c_int32],
            ),
            "harness_roundtrip": (pointer, [pointer]),
            "harness_serialized_fields": (ctypes.c_char_p, [pointer]),
            "harness_identity": (ctypes.c_char_p, [pointer]),
            "harness_clone": (pointer, [pointer]),
            "harness_destroy": (None, [pointer]),
            "harness_supports": (ctypes.c_int, [pointer, i32p]),
            "harness_output_type": (ctypes.c_int, [pointer, i32p, i32p]),
            "harness_on_shape_change": (ctypes.c_int, [pointer, i32p, i32p, i64p]),
            "harness_enqueue": (
                ctypes.c_int, [pointer, i32p, i32p, i64p, ctypes.POINTER(pointer), pointer]
            ),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        self._lib = lib
        status = lib.harness_open(
            str(plugin_library).encode(),
            CODETR_OP_TYPE.encode(),
            CODETR_PLUGIN_VERSION.encode(),
            CODETR_PLUGIN_NAMESPACE.encode(),
        )
        if status != 0:
            raise RuntimeError(f"harness could not open {plugin_library}: {self.messages()}")

    def messages(self) -> str:
        """What the plugin logged since the last call."""
        return self._lib.harness_messages().decode()

    def create(
        self,
        fields: Sequence[tuple[str, PluginFieldType, int]] = (),
        runtime_phase: bool = False,
    ) -> int | None:
        """createPlugin with (name, type, value) fields; None when the creator refuses."""
        count = len(fields)
        names = (ctypes.c_char_p * count)(*(name.encode() for name, _, _ in fields))
        types = (ctypes.c_int32 * count)(*(int(kind) for _, kind, _ in fields))
        values = (ctypes.c_int64 * count)(*(value for _, _, value in fields))
        return self._lib.harness_create(count, names, types, values, int(runtime_phase))

    def roundtrip(self, plugin: int) -> int | None:
        """Serialize the plugin's fields and recreate it from them in the runtime phase."""
        return self._lib.harness_roundtrip(plugin)

    def serialized_fields(self, plugin: int) -> dict[str, tuple[int, int]]:
        """{name: (PluginFieldType value, integer value)} from getFieldsToSerialize."""
        text = self._lib.harness_serialized_fields(plugin).decode()
        fields = {}
        for entry in filter(None, text.split(";")):
            name, kind, value = entry.split(":")
            fields[name] = (int(kind), int(value))
        return fields

    def identity(self, plugin: int) -> tuple[str, str, str]:
        name, version, namespace = (self._lib.harness_identity(plugin).decode().split(" ") + [""])[:3]
        return name, version, namespace

    def clone(self, plugin: int) -> int | None:
        return self._lib.harness_clone(plugin)

    def destroy(self, plugin: int) -> None:
        self._lib.harness_destroy(plugin)

    def supports(self, plugin: int, types: Sequence[TrtDataType]) -> bool:
        """Whether the six tensor types (five inputs, output) are a supported combination."""
        return bool(self._lib.harness_supports(plugin, (ctypes.c_int32 * 6)(*types)))

    def output_type(self, plugin: int, input_types: Sequence[TrtDataType]) -> TrtDataType | None:
        """getOutputDataTypes, or None when the plugin rejects the input types."""
        result = ctypes.c_int32()
        status = self._lib.harness_output_type(
            plugin, (ctypes.c_int32 * 5)(*input_types), ctypes.byref(result)
        )
        return TrtDataType(result.value) if status == 0 else None

    def on_shape_change(
        self, plugin: int, types: Sequence[TrtDataType], shapes: Sequence[Sequence[int]]
    ) -> int:
        """onShapeChange with six concrete shapes; returns the plugin's status (0 = accepted)."""
        return self._lib.harness_on_shape_change(plugin, *_descriptions(types, shapes))

    def enqueue(
        self,
        plugin: int,
        types: Sequence[TrtDataType],
        shapes: Sequence[Sequence[int]],
        pointers: Sequence[int],
        stream: int,
    ) -> int:
        """onShapeChange + enqueue on device pointers (five inputs, output) and a CUDA stream
        handle; returns the plugin's status."""
        devices = (ctypes.c_void_p * 6)(*pointers)
        return self._lib.harness_enqueue(plugin, *_descriptions(types, shapes), devices, stream)


def _descriptions(types: Sequence[TrtDataType], shapes: Sequence[Sequence[int]]):
    if len(types) != 6 or len(shapes) != 6:
        raise ValueError("types and shapes must describe six tensors: five inputs, then the output")
    dims = (ctypes.c_int64 * (6 * MAX_DIMS))()
    for index, shape in enumerate(shapes):
        dims[index * MAX_DIMS : index * MAX_DIMS + len(shape)] = list(shape)
    return (
        (ctypes.c_int32 * 6)(*types),
        (ctypes.c_int32 * 6)(*(len(shape) for shape in shapes)),
        dims,
    )
