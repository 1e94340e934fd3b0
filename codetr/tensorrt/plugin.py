"""libcodetr_msda_trt.so, the TensorRT plugin of the MSDA op: where it is, what it was built
against, and registering it with a TensorRT plugin registry.

The package build installs the library as ``codetr/lib/libcodetr_msda_trt.so`` when TensorRT
headers are available (see codetr_build/tensorrt_plugin.py).
"""

from __future__ import annotations

import ctypes
import dataclasses
import re
from pathlib import Path
from types import ModuleType

from codetr.contract.plugin import CODETR_OP_TYPE, CODETR_PLUGIN_NAMESPACE, CODETR_PLUGIN_VERSION

PACKAGE_LIBRARY = Path(__file__).resolve().parent.parent / "lib" / "libcodetr_msda_trt.so"
_INFO_PATTERN = re.compile(r"(\S+) (\S+) (\S+); TensorRT headers (\d+)\.(\d+)\.(\d+)")


@dataclasses.dataclass(frozen=True)
class PluginLibraryInfo:
    """What a plugin library reports about itself (its ``codetr_msda_plugin_info`` symbol)."""

    path: Path
    name: str
    version: str
    namespace: str
    tensorrt_headers: tuple[int, int, int]

    @property
    def tensorrt_headers_text(self) -> str:
        return ".".join(map(str, self.tensorrt_headers))


def plugin_library_path(path: Path | str | None = None) -> Path:
    """``path`` (default: the package's copy), checked to exist."""
    library = Path(path) if path is not None else PACKAGE_LIBRARY
    if not library.is_file():
        hint = (
            "" if path is not None else
            "; it is built with the package when TensorRT headers are found: set "
            "TensorRT_INCLUDE_DIR (or TENSORRT_ROOT) and reinstall, or run "
            "python -m codetr_build.tensorrt_plugin build/trt codetr/lib/libcodetr_msda_trt.so"
        )
        raise FileNotFoundError(f"plugin library not found: {library}{hint}")
    return library


def read_plugin_library_info(path: Path | str | None = None) -> PluginLibraryInfo:
    """Load the library with ctypes (no TensorRT needed) and read its identity."""
    library = plugin_library_path(path)
    handle = ctypes.CDLL(str(library))
    try:
        info_function = handle.codetr_msda_plugin_info
    except AttributeError:
        raise ValueError(f"{library} is not a codetr MSDA plugin library") from None
    info_function.restype = ctypes.c_char_p
    text = info_function().decode()
    match = _INFO_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f"{library}: unreadable plugin info {text!r}")
    name, version, namespace, *header_version = match.groups()
    return PluginLibraryInfo(
        library, name, version, namespace, tuple(int(part) for part in header_version)
    )


def check_plugin_library(info: PluginLibraryInfo, trt: ModuleType) -> None:
    """Raise RuntimeError if ``info`` is not the plugin this codetr expects, or was compiled
    against headers of another TensorRT major version than ``trt`` (their interface layouts
    differ, so the plugin would misbehave rather than fail)."""
    expected = _contract_identity()
    found = (info.name, info.version, info.namespace)
    if found != expected:
        raise RuntimeError(
            f"{info.path} provides plugin {found}, but this codetr exports {expected}; "
            "rebuild the plugin library from this codetr version"
        )
    if trt.__name__ == "tensorrt":
        runtime_major = int(trt.__version__.split(".")[0])
        if runtime_major != info.tensorrt_headers[0]:
            raise RuntimeError(
                f"{info.path} was built against TensorRT {info.tensorrt_headers_text} headers "
                f"but TensorRT {trt.__version__} is running; rebuild it with TensorRT_INCLUDE_DIR "
                f"pointing at TensorRT {runtime_major}.x headers"
            )


def _contract_identity() -> tuple[str, str, str]:
    """(name, version, namespace) of our plugin as the ONNX export names it."""
    return (CODETR_OP_TYPE, CODETR_PLUGIN_VERSION, CODETR_PLUGIN_NAMESPACE)


_registered: dict[tuple[int, Path], PluginLibraryInfo] = {}


def register_plugin_library(trt: ModuleType, path: Path | str | None = None) -> PluginLibraryInfo:
    """Load the plugin library into ``trt``'s global plugin registry (once per library).

    After this, ONNX ``codetr::CodetrMSDA`` nodes parse into plugin layers and engines that use
    the plugin deserialize. Raises FileNotFoundError / RuntimeError with the reason otherwise.
    """
    info = read_plugin_library_info(path)
    check_plugin_library(info, trt)
    registry = trt.get_plugin_registry()
    key = (id(registry), info.path.resolve())
    if key in _registered:
        return _registered[key]
    if registry.load_library(str(info.path)) is None:
        raise RuntimeError(f"TensorRT could not load the plugin library {info.path}")
    name, version, namespace = _contract_identity()
    if registry.get_creator(name, version, namespace) is None:
        raise RuntimeError(
            f"{info.path} loaded but registered no creator {name} v{version} in namespace "
            f"{namespace!r}"
        )
    _registered[key] = info
    return info


def register_available_plugin(trt: ModuleType, path: Path | str | None = None) -> PluginLibraryInfo | None:
    """Register ``path`` (errors as :func:`register_plugin_library` when it is given), else the
    package's copy when it was built; None when there is none (engines without our plugin still
    load). Every loader of engines or compiled programs registers the plugin this one way."""
    if path is None and not PACKAGE_LIBRARY.is_file():
        return None
    return register_plugin_library(trt, path)
