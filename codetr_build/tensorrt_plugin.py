"""Build of libcodetr_msda_trt.so, the TensorRT plugin library of the MSDA op.

The library is the plugin (csrc/tensorrt/msda_plugin) plus the same CUDA kernels the torch op
compiles (csrc/msda/cuda/msda_kernels.cu), with the CUDA runtime linked statically. It does not
link TensorRT: a plugin library only implements TensorRT's interfaces, so the public headers are
all it needs, and it works with any TensorRT whose headers it was compiled against.

Environment:
  TensorRT_INCLUDE_DIR   folder holding NvInferRuntime.h; else
  TENSORRT_ROOT          a TensorRT install or source tree with include/NvInferRuntime.h
  CUDA_HOME / CUDA_PATH  CUDA toolkit (else the one around nvcc, else /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST   GPU architectures, as for the torch op ("8.0;9.0+PTX"); default: the
                         common desktop/datacenter ones nvcc supports, PTX for the newest
                         (codetr_build.cuda_arch)
  CXX                    host compiler (default g++)

Standalone use, from the repository root: python -m codetr_build.tensorrt_plugin BUILD_DIR OUTPUT_PATH
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from codetr_build.cuda_arch import default_arch_list, parse_arch_list
from codetr_build.cuda_toolkit import find_cuda_home, static_cudart_dir

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
PLUGIN_SOURCES = [
    CSRC / "tensorrt" / "msda_plugin" / "msda_plugin.cpp",
    CSRC / "tensorrt" / "msda_plugin" / "plugin_library.cpp",
]
KERNEL_SOURCE = CSRC / "msda" / "cuda" / "msda_kernels.cu"
LIBRARY_NAME = "libcodetr_msda_trt.so"
# Matches the torch op's nvcc flags in setup.py so both builds compile the kernels alike.
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-std=c++17"]
CXX_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra"]


def find_tensorrt_include_dir() -> Path | None:
    """The folder with TensorRT's NvInferRuntime.h named by TensorRT_INCLUDE_DIR or
    TENSORRT_ROOT, or None."""
    candidates = []
    if os.environ.get("TensorRT_INCLUDE_DIR"):
        candidates.append(Path(os.environ["TensorRT_INCLUDE_DIR"]))
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    for candidate in candidates:
        if (candidate / "NvInferRuntime.h").is_file():
            return candidate
    return None


def gencode_flags(nvcc: Path) -> list[str]:
    """nvcc -gencode flags from TORCH_CUDA_ARCH_LIST, else for codetr_build.cuda_arch's default list."""
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or default_arch_list(nvcc)
    flags = []
    for arch, with_ptx in parse_arch_list(arch_list):
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        if with_ptx:
            flags += ["-gencode", f"arch=compute_{arch},code=compute_{arch}"]
    return flags


def build_tensorrt_plugin(build_dir: Path, output_path: Path) -> Path | None:
    """Compiles the plugin library into build_dir and moves it to output_path.

    Returns output_path, or None after printing why the plugin was skipped (no TensorRT headers,
    no CUDA toolkit). A compiler error raises subprocess.CalledProcessError.
    """
    include_dir = find_tensorrt_include_dir()
    if include_dir is None:
        print(
            "codetr: skipping the TensorRT plugin: no NvInferRuntime.h found "
            "(set TensorRT_INCLUDE_DIR or TENSORRT_ROOT to build it)"
        )
        return None
    cuda_home = find_cuda_home()
    cudart_dir = static_cudart_dir(cuda_home) if cuda_home else None
    if cudart_dir is None:
        print("codetr: skipping the TensorRT plugin: no CUDA toolkit with libcudart_static.a found")
        return None

    build_dir = Path(build_dir)
    output_path = Path(output_path)
    build_dir.mkdir(parents=True, exist_ok=True)
    nvcc = cuda_home / "bin" / "nvcc"
    cxx = os.environ.get("CXX", "g++")
    includes = [f"-I{CSRC}", "-isystem", str(include_dir), "-isystem", str(cuda_home / "include")]
    print(f"codetr: building the TensorRT plugin against {include_dir}")

    objects = []
    for source in PLUGIN_SOURCES:
        obj = build_dir / f"{source.stem}.o"
        _run([cxx, *CXX_FLAGS, *includes, "-c", str(source), "-o", str(obj)])
        objects.append(obj)
    kernel_obj = build_dir / "msda_kernels.o"
    _run(
        [str(nvcc), *NVCC_FLAGS, *gencode_flags(nvcc), "-Xcompiler", "-fPIC,-fvisibility=hidden",
         f"-I{CSRC}", "-c", str(KERNEL_SOURCE), "-o", str(kernel_obj)]
    )
    objects.append(kernel_obj)

    # Link into the build folder, then move: an interrupted build never leaves a half library
    # where the package looks for it.
    built = build_dir / LIBRARY_NAME
    _run(
        [cxx, "-shared", "-o", str(built), *map(str, objects),
         f"-L{cudart_dir}", "-lcudart_static", "-ldl", "-lpthread", "-lrt",
         "-Wl,--no-undefined", "-Wl,--exclude-libs,ALL"]
    )
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_path.with_name(output_path.name + ".tmp")
    shutil.copy2(built, temporary)
    os.replace(temporary, output_path)
    print(f"codetr: built {output_path}")
    return output_path


def _run(command: list[str]) -> None:
    print(" ".join(command))
    subprocess.run(command, check=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} BUILD_DIR OUTPUT_PATH")
    sys.exit(0 if build_tensorrt_plugin(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
