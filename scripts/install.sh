#!/usr/bin/env bash
# Installs codetr with its test dependencies and builds the C++/CUDA extension (codetr._C)
# against the torch installed first: the extension must link the torch it runs with, so the
# build uses no isolated environment.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install "torch>=2.11" "torchvision>=0.26" ninja "setuptools>=69" wheel
python3 -m pip install --no-build-isolation -e ".[test]"
