"""Configure and build cpp/ (the C++ runner codetr_infer and libcodetr_ops.so) with CMake against
the torch installed in this Python.

libtorch's CMake package (torch.utils.cmake_prefix_path) insists on a CUDA toolkit when torch is
a CUDA build, even for a CPU-only runner; this passes the toolkit found around nvcc (FindCUDA
guesses wrong when nvcc is a wrapper outside the toolkit) and, when the toolkit lacks libnvrtc,
the one of the nvidia-cuda-nvrtc wheel torch depends on. nlohmann_json is found on the system or in third_party/nlohmann_json
(scripts/fetch_cpp_deps.sh); TensorRT headers through TensorRT_INCLUDE_DIR / TENSORRT_ROOT or
third_party/tensorrt/include.

Usage, from the repository root: python -m codetr_build.cpp_runner BUILD_DIR [--cuda]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from codetr_build.cuda_toolkit import find_cuda_home
from codetr_build.tensorrt_plugin import find_tensorrt_include_dir

ROOT = Path(__file__).resolve().parent.parent
THIRD_PARTY = ROOT / "third_party"


def _first_file(folders: list[Path], patterns: tuple[str, ...]) -> Path | None:
    for folder in folders:
        for pattern in patterns:
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


NLOHMANN_JSON_PREFIXES = (THIRD_PARTY / "nlohmann_json" / "usr", Path("/usr/local"), Path("/usr"))
"""Where nlohmann_json's CMake package is looked for: scripts/fetch_cpp_deps.sh's, then the system's."""


def find_nlohmann_json() -> Path | None:
    """The first of :data:`NLOHMANN_JSON_PREFIXES` holding nlohmann_json's CMake package
    (``share/cmake/nlohmann_json`` or ``lib*/cmake/nlohmann_json``, as Debian and the upstream
    install put it), or None."""
    for prefix in NLOHMANN_JSON_PREFIXES:
        if _first_file([prefix / "share" / "cmake", *sorted(prefix.glob("lib*/cmake")), *sorted(prefix.glob("lib/*/cmake"))],
                       ("nlohmann_json/nlohmann_jsonConfig.cmake",)):
            return prefix
    return None


def cmake_arguments(cuda: bool) -> list[str]:
    """CMake -D arguments for cpp/: the installed torch, nlohmann_json, CUDA and TensorRT hints."""
    import torch

    prefixes = [torch.utils.cmake_prefix_path]
    nlohmann_json = find_nlohmann_json()
    if nlohmann_json is not None:
        prefixes.append(str(nlohmann_json))
    arguments = [f"-DCMAKE_PREFIX_PATH={';'.join(prefixes)}", f"-DCODETR_WITH_CUDA={'ON' if cuda else 'OFF'}"]
    if torch.version.cuda:
        cuda_home = find_cuda_home()
        if cuda_home is None:
            raise RuntimeError("torch is a CUDA build: its CMake package needs a CUDA toolkit (set CUDA_HOME)")
        arguments.append(f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}")
        if _first_file([cuda_home / "lib64", cuda_home / "lib"], ("libnvrtc.so",)) is None:
            # The nvidia-cuda-nvrtc wheel torch depends on (nvidia/cu13/lib, nvidia/cuda_nvrtc/lib),
            # installed beside torch: in a --system-site-packages venv that is not the venv's purelib.
            nvidia = Path(torch.__file__).parent.parent / "nvidia"
            nvrtc = _first_file(sorted(nvidia.glob("*/lib")), ("libnvrtc.so", "libnvrtc.so.[0-9]*"))
            if nvrtc:
                arguments.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc}")
    tensorrt_include = find_tensorrt_include_dir()
    if tensorrt_include is None and (THIRD_PARTY / "tensorrt" / "include" / "NvInferRuntime.h").is_file():
        tensorrt_include = THIRD_PARTY / "tensorrt" / "include"
    if tensorrt_include is not None:
        arguments.append(f"-DTensorRT_INCLUDE_DIR={tensorrt_include}")
        arguments.append(f"-DTensorRT_ROOT={tensorrt_include.parent}")
    return arguments


def build_cpp_runner(build_dir: Path, cuda: bool = False, jobs: int | None = None) -> Path:
    """Configure and build cpp/ into ``build_dir``; returns the path of codetr_infer. Raises
    subprocess.CalledProcessError with CMake's output when a step fails."""
    build_dir = Path(build_dir)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(ROOT / "cpp"), "-B", str(build_dir), *generator, *cmake_arguments(cuda)]
    subprocess.run(configure, check=True)
    build = ["cmake", "--build", str(build_dir)]
    if jobs:
        build += ["--parallel", str(jobs)]
    subprocess.run(build, check=True)
    return build_dir / "codetr_infer"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("build_dir", type=Path, help="CMake build folder")
    parser.add_argument("--cuda", action="store_true", help="build the MSDA op's CUDA kernels (default: CPU only)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default: CMake's)")
    args = parser.parse_args()
    print(build_cpp_runner(args.build_dir, args.cuda, args.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
