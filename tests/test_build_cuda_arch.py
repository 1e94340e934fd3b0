"""codetr_build.cuda_arch: the architecture list of a build on a machine without a GPU.

torch's own choice is the capability of each visible GPU, which on a GPU-less machine is an empty
list that ``torch.utils.cpp_extension._get_cuda_arch_flags`` indexes (IndexError, torch 2.14).
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from codetr_build.cuda_arch import arch_list_for_build, default_arch_list, parse_arch_list
from codetr_build.tensorrt_plugin import gencode_flags

# What the nvcc of CUDA 13.0 and 12.4 print for --list-gpu-arch.
CUDA_13_ARCHS = "compute_75\ncompute_80\ncompute_86\ncompute_87\ncompute_88\ncompute_89\ncompute_90\n" \
                "compute_100\ncompute_110\ncompute_103\ncompute_120\ncompute_121\n"
CUDA_12_4_ARCHS = "compute_50\ncompute_52\ncompute_53\ncompute_60\ncompute_61\ncompute_62\ncompute_70\n" \
                  "compute_72\ncompute_75\ncompute_80\ncompute_86\ncompute_87\ncompute_89\ncompute_90\n"


def fake_nvcc(folder: Path, listing: str) -> Path:
    nvcc = folder / "nvcc"
    nvcc.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return nvcc


def test_gpu_less_build_gets_the_documented_list(tmp_path: Path) -> None:
    nvcc = fake_nvcc(tmp_path, CUDA_13_ARCHS)
    assert arch_list_for_build({}, 0, nvcc) == "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
    assert arch_list_for_build({"TORCH_CUDA_ARCH_LIST": "  "}, 0, nvcc) == "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"


def test_older_toolkit_drops_what_its_nvcc_cannot_build(tmp_path: Path) -> None:
    assert default_arch_list(fake_nvcc(tmp_path, CUDA_12_4_ARCHS)) == "7.5;8.0;8.6;8.9;9.0+PTX"


@pytest.mark.parametrize(("environ", "gpus"), [({"TORCH_CUDA_ARCH_LIST": "9.0"}, 0), ({}, 1)])
def test_torch_decides_when_told_or_when_it_sees_a_gpu(tmp_path: Path, environ: dict, gpus: int) -> None:
    assert arch_list_for_build(environ, gpus, fake_nvcc(tmp_path, CUDA_13_ARCHS)) is None


def test_torch_accepts_the_list(tmp_path: Path, monkeypatch) -> None:
    """The list in torch's own format: its flag builder turns it into one -gencode per arch."""
    arch_list = arch_list_for_build({}, 0, fake_nvcc(tmp_path, CUDA_13_ARCHS))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch_list)
    flags = cpp_extension._get_cuda_arch_flags()
    assert "-gencode=arch=compute_120,code=compute_120" in flags
    assert {flag for flag in flags if "code=sm_" in flag} == {
        f"-gencode=arch=compute_{arch},code=sm_{arch}" for arch in ("75", "80", "86", "89", "90", "100", "120")}


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="a GPU is visible: torch builds for it")
def test_torch_alone_fails_without_a_gpu(monkeypatch) -> None:
    """The fault the default works around (torch 2.14.1); if torch fixes it, this test says so."""
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    with pytest.raises(IndexError):
        cpp_extension._get_cuda_arch_flags()


def test_plugin_build_uses_the_same_list(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    nvcc = fake_nvcc(tmp_path, CUDA_13_ARCHS)
    flags = gencode_flags(nvcc)
    assert flags[-4:] == ["-gencode", "arch=compute_120,code=sm_120", "-gencode", "arch=compute_120,code=compute_120"]
    assert flags[1::2][:-1] == [f"arch=compute_{arch},code=sm_{arch}" for arch, _ in
                                parse_arch_list("7.5;8.0;8.6;8.9;9.0;10.0;12.0")]
