#!/usr/bin/env bash
# Puts the C++ runner's header-only dependency nlohmann_json into third_party/nlohmann_json (an
# ignored folder; never committed), from Debian's nlohmann-json3-dev, for machines without it
# installed (e.g. a GPU machine without a package manager: build there with this folder carried).
# With --tensorrt, also TensorRT's public headers into third_party/tensorrt/include from a
# TensorRT source tree given as TENSORRT_SOURCE (compile-only checks of the TensorRT path).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/third_party"
if [ ! -d "$root/third_party/nlohmann_json/usr/include/nlohmann" ]; then
  work="$(mktemp -d)"
  (cd "$work" && apt-get download nlohmann-json3-dev)
  dpkg -x "$work"/nlohmann-json3-dev_*.deb "$root/third_party/nlohmann_json"
  rm -rf "$work"
fi
echo "nlohmann_json: $root/third_party/nlohmann_json/usr"
if [ "${1:-}" = "--tensorrt" ]; then
  : "${TENSORRT_SOURCE:?set TENSORRT_SOURCE to a TensorRT source tree (with include/NvInfer.h)}"
  mkdir -p "$root/third_party/tensorrt"
  cp -r "$TENSORRT_SOURCE/include" "$root/third_party/tensorrt/"
  echo "TensorRT headers: $root/third_party/tensorrt/include"
fi
