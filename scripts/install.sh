#!/usr/bin/env bash
# Installs codetr with its test dependencies and builds the C++/CUDA extension (codetr._C)
# against the torch installed first: the extension must link the torch it runs with, so the
# build uses no isolated environment. With TensorRT headers (TensorRT_INCLUDE_DIR or
# TENSORRT_ROOT) the build also makes the TensorRT plugin library.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install "torch>=2.11" "torchvision>=0.26" ninja "setuptools>=69" wheel
python3 -m pip install --no-build-isolation -e ".[test,int8]"

# torch-tensorrt-rtx is released per torch version and pins an older tensorrt-rtx than the
# builder above, so it comes without its dependencies (torch, dllist, psutil are installed).
torch_minor=$(python3 -c "import torch; print('.'.join(torch.__version__.split('.')[:2]))")
python3 -m pip install --no-deps "torch-tensorrt-rtx==${torch_minor}.*" ||
  echo "codetr: no torch-tensorrt-rtx for torch ${torch_minor}; its tests will skip"

# The C++ runner's one header-only dependency, into the ignored third_party/ (its tests skip
# without it).
bash scripts/fetch_cpp_deps.sh ||
  echo "codetr: could not fetch nlohmann_json; the C++ runner tests will skip"
