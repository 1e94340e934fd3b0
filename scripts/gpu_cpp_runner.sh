#!/usr/bin/env bash
# GPU check of the C++ runner: builds codetr's op for Python (if needed) and cpp/ with CUDA, then
# runs tests/test_cpp_runner.py, which makes AOTInductor packages of the tiny config on the CPU
# and on the GPU, runs codetr_infer on them and compares its COCO results with the same package
# run from Python (codetr pre/post-processing). Prints one comparison line per case.
#
# Needs: torch (CUDA), nvcc, cmake, ninja, g++; nlohmann_json headers on the system or in
# third_party/nlohmann_json (scripts/fetch_cpp_deps.sh on a machine with apt; carry that folder).
# Usage, from the repository root: bash scripts/gpu_cpp_runner.sh   (about 5 minutes on an H200 host)
set -euo pipefail
cd "$(dirname "$0")/.."
export CXX="${CXX:-/usr/bin/g++}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
jobs="${JOBS:-$(nproc)}"  # JOBS: parallel compile jobs (default: every core)

echo "== machine"
nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())"
cmake --version | head -1; ninja --version; "$CXX" --version | head -1; nvcc --version | tail -1
for header in png.h jpeglib.h nlohmann/json.hpp; do
  if [ -e "/usr/include/$header" ]; then echo "system header $header: yes"; else echo "system header $header: no"; fi
done
if [ ! -d third_party/nlohmann_json/usr/include/nlohmann ] && [ ! -e /usr/include/nlohmann/json.hpp ]; then
  echo "error: nlohmann_json not found: run scripts/fetch_cpp_deps.sh where apt works and carry third_party/nlohmann_json" >&2
  exit 2
fi

echo "== build (codetr._C for the Python reference, cpp/ with CUDA), in parallel"
start=$(date +%s)
if python3 -c "import torch, codetr; assert torch._C._dispatch_has_kernel_for_dispatch_key('codetr::msda', 'CUDA')" 2>/dev/null; then
  echo "codetr._C with CUDA kernels already built"
  python_build=0
else
  pip install --no-build-isolation --no-deps -e . > build_python.log 2>&1 &
  python_build=$!
fi
python3 -m codetr_build.cpp_runner build/cpp_gpu --cuda --jobs "$jobs" > build_cpp.log 2>&1 || {
  tail -40 build_cpp.log; echo "error: the CMake build of cpp/ failed (build_cpp.log)" >&2; exit 1; }
grep -E "^-- codetr:" build_cpp.log || true
if [ "$python_build" != 0 ]; then
  wait "$python_build" || { tail -40 build_python.log; echo "error: pip install -e . failed" >&2; exit 1; }
fi
echo "builds took $(( $(date +%s) - start )) s"

echo "== codetr_infer links no Python"
ldd build/cpp_gpu/codetr_infer | grep -E "python|codetr_ops|torch_cuda" || true
echo "Python symbols needed by libcodetr_ops.so: $(nm -D --undefined-only build/cpp_gpu/libcodetr_ops.so | grep -c ' Py' || true)"

# CPP_RUNNER_TESTS selects tests by pytest -k: "cuda" (default: the CUDA package; the CPU package
# passes on the CPU-only development machine) or "cuda or cpu or errors" (all).
tests="${CPP_RUNNER_TESTS:-cuda}"
echo "== codetr_infer vs the Python runtime (tiny config, AOTInductor package; tests: $tests)"
CODETR_INFER="$PWD/build/cpp_gpu/codetr_infer" python3 -m pytest -q -s -p no:cacheprovider --runslow \
  -k "$tests" tests/test_cpp_runner.py 2>&1 | grep -vE "^\s*$|Warning|warn\(" | tail -40
