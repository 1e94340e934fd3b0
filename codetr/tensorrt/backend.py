"""Which TensorRT Python package to use, whether one is usable, and one known trap of TensorRT-RTX.

``tensorrt`` (TensorRT 10.x/11.x) is preferred; ``tensorrt_rtx_bindings`` (TensorRT-RTX, package
``tensorrt-rtx-cu13-bindings``) is the fallback that builds engines on a machine without a GPU.
Both are optional extras of codetr. The probes here catch every exception an import raises:
these packages raise plain ``Exception`` (e.g. ``Could not find libtensorrt_rtx.so.1``) as well
as ImportError/OSError when their shared libraries are missing.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from codetr.contract.cache import cache_dir

logger = logging.getLogger("codetr.tensorrt")

RTX_MODULE = "tensorrt_rtx_bindings"
RTX_CORE_LIBRARY = "libtensorrt_rtx.so"
RESTARTED_FOR_RTX = "CODETR_RESTARTED_FOR_RTX"
"""Set in the environment of a process restarted by :func:`restart_for_rtx_parser`."""


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, else ``tensorrt_rtx_bindings``; ImportError if neither imports."""
    errors = []
    for name in ("tensorrt", RTX_MODULE):
        try:
            return importlib.import_module(name)
        except Exception as error:  # ImportError, OSError, or a plain Exception from the package
            errors.append(f"{name}: {type(error).__name__}: {error}")
    raise ImportError(
        "no TensorRT Python package: pip install tensorrt (or, to build engines without a GPU, "
        "tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings); " + "; ".join(errors)
    )


def tensorrt_unavailable_reason() -> str | None:
    """Why no TensorRT builder can be imported (the message names the install command), or None."""
    try:
        import_tensorrt()
    except ImportError as error:
        return str(error)
    return None


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
    link_dir = cache_dir("rtx")
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


def restart_for_rtx_parser(trt: ModuleType, argv: Sequence[str] | None) -> None:
    """Make TensorRT-RTX's ONNX parser able to import plugin nodes, restarting the process if needed.

    The parser dlopens the unversioned ``libtensorrt_rtx.so`` and aborts the process when that
    fails. The loader reads LD_LIBRARY_PATH only at process start and a preloaded ``.so.1`` does
    not satisfy the unversioned name, so the process restarts itself once (``os.execve`` of
    ``sys.executable`` with ``argv``, e.g. ``["-m", "codetr", "export", ...]``) with
    :func:`rtx_link_dir` on the path. ``argv`` None (called as a library, not owning the process)
    or a failed restart: RuntimeError naming the fix.
    """
    try:
        check_plugin_nodes_parsable(trt)
    except RuntimeError:
        if argv is None or os.environ.get(RESTARTED_FOR_RTX):
            raise
        library_path = os.pathsep.join(filter(None, [str(rtx_link_dir()), os.environ.get("LD_LIBRARY_PATH")]))
        logger.info("restarting with LD_LIBRARY_PATH=%s for TensorRT-RTX's ONNX parser", library_path)
        environment = dict(os.environ, LD_LIBRARY_PATH=library_path, **{RESTARTED_FOR_RTX: "1"})
        os.execve(sys.executable, [sys.executable, *argv], environment)
