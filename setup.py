"""Builds codetr._C: the MSDA op's CPU kernels always, its CUDA kernels whenever a CUDA toolkit
matching torch's CUDA build is found (TORCH_CUDA_ARCH_LIST picks the architectures).

Build against the torch already installed: pip install --no-build-isolation -e .
"""

import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
MSDA = Path("csrc") / "msda"


def find_cuda_home() -> str | None:
    """CUDA_HOME, else the toolkit around nvcc, else /usr/local/cuda; None if no toolkit."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc may be a wrapper script on the PATH (/usr/local/bin/nvcc), so the directory
        # above it is only a guess: keep it only if it holds the CUDA headers.
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for candidate in candidates:
        if candidate and (Path(candidate) / "include" / "cuda_runtime.h").is_file():
            return candidate
    return None


def msda_extension():
    # torch.utils.cpp_extension reads CUDA_HOME when imported.
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/module.cpp", str(MSDA / "msda.cpp"), str(MSDA / "cpu" / "msda_cpu.cpp")]
    cxx_flags = ["-O3"]
    with_cuda = (
        cuda_home is not None
        and torch.version.cuda is not None
        and os.environ.get("CODETR_WITH_CUDA", "1") != "0"
    )
    if not with_cuda:
        reason = "CODETR_WITH_CUDA=0" if cuda_home else "no CUDA toolkit found"
        if torch.version.cuda is None:
            reason = "torch is a CPU-only build"
        print(f"codetr: building the MSDA op for CPU only ({reason})")
        return CppExtension("codetr._C", sources, extra_compile_args={"cxx": cxx_flags})
    sources += [str(MSDA / "cuda" / "msda_cuda.cpp"), str(MSDA / "cuda" / "msda_kernels.cu")]
    nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    print(f"codetr: building the MSDA op for CPU and CUDA (CUDA_HOME={cuda_home})")
    return CUDAExtension(
        "codetr._C", sources, extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}
    )


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


setup(ext_modules=[msda_extension()], cmdclass={"build_ext": build_ext_class()})
