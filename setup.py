"""Builds codetr._C and, when TensorRT headers are found, the TensorRT plugin library.

codetr._C holds the MSDA op's CPU kernels always, and its CUDA kernels whenever a CUDA toolkit is
found and torch is a CUDA build. TORCH_CUDA_ARCH_LIST picks the architectures; unset, torch builds
for the visible GPUs, and with no GPU visible codetr picks and prints a documented default list
(codetr_build/cuda_arch.py). The plugin
library (codetr/lib/libcodetr_msda_trt.so) needs TensorRT's headers through TensorRT_INCLUDE_DIR
or TENSORRT_ROOT; without them the build says so and skips it.

Build against the torch already installed: pip install --no-build-isolation -e .
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from codetr_build.cuda_arch import arch_list_for_build  # noqa: E402
from codetr_build.cuda_toolkit import find_cuda_home  # noqa: E402
from codetr_build.tensorrt_plugin import LIBRARY_NAME, build_tensorrt_plugin  # noqa: E402

MSDA = Path("csrc") / "msda"


def msda_extension():
    cuda_home = find_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME when imported.
        os.environ["CUDA_HOME"] = str(cuda_home)
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = [
        "csrc/module.cpp",
        str(MSDA / "msda.cpp"),
        str(MSDA / "msda_autograd.cpp"),
        str(MSDA / "msda_from_offsets.cpp"),
        str(MSDA / "cpu" / "msda_cpu.cpp"),
    ]
    cxx_flags = ["-O3"]
    if torch.version.cuda is None:
        reason = "torch is a CPU-only build"
    elif cuda_home is None:
        reason = "no CUDA toolkit found (set CUDA_HOME)"
    elif os.environ.get("CODETR_WITH_CUDA", "1") == "0":
        reason = "CODETR_WITH_CUDA=0"
    else:
        print(f"codetr: building the MSDA op for CPU and CUDA (CUDA_HOME={cuda_home})")
        arch_list = arch_list_for_build(os.environ, torch.cuda.device_count(), cuda_home / "bin" / "nvcc")
        if arch_list is not None:
            # torch would index the (empty) list of visible GPUs and die with IndexError.
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
            print(
                f"codetr: no GPU visible and TORCH_CUDA_ARCH_LIST unset: building for TORCH_CUDA_ARCH_LIST={arch_list} "
                "(set TORCH_CUDA_ARCH_LIST, e.g. 9.0, to build faster for one GPU)"
            )
        else:
            print(f"codetr: CUDA architectures: {os.environ.get('TORCH_CUDA_ARCH_LIST') or 'those of the visible GPUs'}")
        sources += [str(MSDA / "cuda" / "msda_cuda.cpp"), str(MSDA / "cuda" / "msda_kernels.cu")]
        nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        return CUDAExtension(
            "codetr._C", sources, extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}
        )
    print(f"codetr: building the MSDA op for CPU only ({reason})")
    return CppExtension("codetr._C", sources, extra_compile_args={"cxx": cxx_flags})


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExtensionAndPlugin(BuildExtension):
        """Also builds the TensorRT plugin library next to the package's modules."""

        def run(self):
            super().run()
            package_dir = ROOT / "codetr" if self.inplace else Path(self.build_lib) / "codetr"
            build_tensorrt_plugin(Path(self.build_temp) / "tensorrt", package_dir / "lib" / LIBRARY_NAME)

    return BuildExtensionAndPlugin.with_options(use_ninja=shutil.which("ninja") is not None)


setup(
    ext_modules=[msda_extension()],
    cmdclass={"build_ext": build_ext_class()},
    package_data={"codetr": ["lib/*.so", "configs/*.toml"]},
)
