"""Fixtures shared by the TensorRT tests: the plugin library built from this checkout, the
harness around it, and the environment TensorRT-RTX subprocesses need.

The library is built once per source state and kept in a cache folder keyed by the sources and
the header folder, so repeated runs and several test modules share one build.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from codetr.contract.cache import cache_dir
from plugin_harness import PluginHarness, compile_harness
from codetr_build.cuda_toolkit import find_cuda_home, static_cudart_dir
from codetr_build.tensorrt_plugin import (
    KERNEL_SOURCE,
    LIBRARY_NAME,
    PLUGIN_SOURCES,
    build_tensorrt_plugin,
    find_tensorrt_include_dir,
)

ROOT = Path(__file__).resolve().parent.parent
CACHE = cache_dir("test_plugin")
# One architecture keeps the kernel compile short; the code under test is the same.
TEST_ARCH = "9.0"


@pytest.fixture(scope="session")
def include_dir() -> Path:
    found = find_tensorrt_include_dir()
    if found is None:
        pytest.skip("TensorRT headers not found: set TensorRT_INCLUDE_DIR or TENSORRT_ROOT")
    return found


@pytest.fixture(scope="session")
def cuda_home() -> Path:
    found = find_cuda_home()
    if found is None or static_cudart_dir(found) is None:
        pytest.skip("no CUDA toolkit (nvcc + libcudart_static.a) to compile the plugin")
    return found


@pytest.fixture(scope="session")
def plugin_library(include_dir, cuda_home) -> Path:
    sources = [*PLUGIN_SOURCES, KERNEL_SOURCE, *sorted(KERNEL_SOURCE.parent.glob("*.h")),
               *sorted(PLUGIN_SOURCES[0].parent.glob("*.h"))]
    digest = hashlib.sha256(str(include_dir).encode())
    for source in sources:
        digest.update(source.read_bytes())
    build_dir = CACHE / digest.hexdigest()[:16]
    library = build_dir / "lib" / LIBRARY_NAME
    if not library.is_file():
        saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
        os.environ["TORCH_CUDA_ARCH_LIST"] = TEST_ARCH
        try:
            assert build_tensorrt_plugin(build_dir, library) == library
        finally:
            if saved is None:
                del os.environ["TORCH_CUDA_ARCH_LIST"]
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    return library


@pytest.fixture(scope="session")
def harness(plugin_library, include_dir, cuda_home) -> PluginHarness:
    return PluginHarness(compile_harness(include_dir, plugin_library.parent, cuda_home / "include"), plugin_library)


@pytest.fixture(scope="session")
def rtx_environment() -> dict[str, str]:
    """Environment for a TensorRT-RTX subprocess: libtensorrt_rtx.so findable (see
    codetr.tensorrt.backend.rtx_link_dir) and this checkout importable."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX (tensorrt-rtx-cu13-bindings) not installed")
    from codetr.tensorrt.backend import rtx_link_dir

    library_path = os.pathsep.join(filter(None, [str(rtx_link_dir()), os.environ.get("LD_LIBRARY_PATH")]))
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, LD_LIBRARY_PATH=library_path, PYTHONPATH=python_path)
