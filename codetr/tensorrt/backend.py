"""Which TensorRT Python package to use, and one known trap of TensorRT-RTX.

``tensorrt`` (TensorRT 10.x/11.x) is preferred; ``tensorrt_rtx_bindings`` (TensorRT-RTX, package
``tensorrt-rtx-cu13-bindings``) is the fallback that builds engines on a machine without a GPU.
Both are optional extras of codetr.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from pathlib import Path
from types import ModuleType

RTX_MODULE = "tensorrt_rtx_bindings"
RTX_CORE_LIBRARY = "libtensorrt_rtx.so"


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, else ``tensorrt_rtx_bindings``; ImportError if neither imports."""
    errors = []
    for name in ("tensorrt", RTX_MODULE):
        try:
            return importlib.import_module(name)
        except ImportError as error:  # also OSError-based failures to load the shared libraries
            errors.append(f"{name}: {error}")
    raise ImportError(
        "no TensorRT Python package: pip install tensorrt (or, to build engines without a GPU, "
        "tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings); " + "; ".join(errors)
    )


def is_tensorrt_rtx(trt: ModuleType) -> bool:
    return trt.__name__ == RTX_MODULE


def rtx_link_dir() -> Path:
    """A folder holding ``libtensorrt_rtx.so`` -> TensorRT-RTX's ``libtensorrt_rtx.so.1``.

    TensorRT-RTX's ONNX parser dlopens the unversioned name when it meets a plugin node and
    terminates the process when that fails; the wheel ships only the versioned file. Put this
    folder on LD_LIBRARY_PATH (it is read at process start, so in the parent's environment).
    """
    import tensorrt_rtx_libs

    target = Path(tensorrt_rtx_libs.__file__).resolve().parent / f"{RTX_CORE_LIBRARY}.1"
    link_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "codetr" / "rtx"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / RTX_CORE_LIBRARY
    if not (link.is_symlink() and link.resolve() == target):
        temporary = link_dir / f".{RTX_CORE_LIBRARY}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        os.replace(temporary, link)
    return link_dir


def check_plugin_nodes_parsable(trt: ModuleType) -> None:
    """Raise RuntimeError, instead of letting the process abort, when TensorRT-RTX's parser
    could not load its core library under the unversioned name (see :func:`rtx_link_dir`)."""
    if not is_tensorrt_rtx(trt):
        return
    import tensorrt_rtx_libs

    # The parser searches its own folder (RPATH $ORIGIN) first, then the usual library path.
    if (Path(tensorrt_rtx_libs.__file__).parent / RTX_CORE_LIBRARY).exists():
        return
    try:
        ctypes.CDLL(RTX_CORE_LIBRARY)
        return
    except OSError:
        pass
    raise RuntimeError(
        f"TensorRT-RTX's ONNX parser needs {RTX_CORE_LIBRARY} on the library path to import "
        f"plugin nodes and would abort the process without it; run with "
        f"LD_LIBRARY_PATH={rtx_link_dir()}:$LD_LIBRARY_PATH"
    )
