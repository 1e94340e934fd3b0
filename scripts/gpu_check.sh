#!/usr/bin/env bash
# The MSDA op's GPU checks, run from the repository root on a CUDA machine:
#   1. build the extension in place against the installed torch;
#   2. run the op's and the module's tests, the CUDA-marked ones included (TEST_ARGS="-m cuda"
#      for those alone);
#   3. compute-sanitizer memcheck on a small forward+backward with out-of-range, non-finite
#      locations and a level running past the end of value;
#   4. the benchmark (default set, ~4 min on an H100).
# Everything is printed; logs (and the benchmark's jsonl) go to $OUT when it is set.
# Options (environment):
#   STEPS="build tests"    the steps to run, default "build tests memcheck bench"; the build
#                          stays in the work tree, so a later call can run "memcheck bench";
#   BENCH_ARGS="--cases dec_b1 --dtypes float16"   a benchmark subset;
#   PYTHON=python3.12.
# The GPU machine is offline: a missing pytest or ninja is installed from wheels in ./.whl if
# present (pip download pytest ninja -d .whl on a connected machine, then carry .whl).
set -uo pipefail

cd "$(dirname "$0")/.."
LOG_DIR="${OUT:-$(mktemp -d)}"
mkdir -p "$LOG_DIR"
PYTHON="${PYTHON:-python3}"
declare -A STATUS

step() {  # step NAME COMMAND...: runs COMMAND, tees its output to $LOG_DIR/NAME.log
  local name="$1"
  shift
  echo "===== $name: $* ($(date -u +%H:%M:%S))"
  "$@" 2>&1 | tee "$LOG_DIR/$name.log"
  STATUS[$name]=${PIPESTATUS[0]}
  echo "===== $name exit ${STATUS[$name]}"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

STEPS="${STEPS:-build tests memcheck bench}"
wants() { [[ " $STEPS " == *" $1 "* ]]; }

for module in pytest ninja; do
  if ! "$PYTHON" -c "import $module" 2>/dev/null && [[ -d .whl ]]; then
    "$PYTHON" -m pip install --no-index --find-links .whl "$module"
  fi
done

if wants build; then
  # Only the local GPU's architecture, to keep the build short.
  arch="$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}"
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  # The H100 machine sets CXX=/opt/gcc/bin/g++, a GCC that links libstdc++ statically: the
  # extension then crashed formatting its first error message (seen 2026-11-22). The system
  # compiler links libstdc++ dynamically, like torch.
  if [[ -x /usr/bin/g++ ]]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
  step build "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
fi
step import "$PYTHON" -c "import torch, codetr.ops; print(torch.ops.codetr.msda)"

# shellcheck disable=SC2086  # TEST_ARGS is a list of options
wants tests && step tests "$PYTHON" -m pytest -q -rfEs ${TEST_ARGS:-} \
  tests/test_msda_op.py tests/test_msda_module.py

# Each allocation is its own cudaMalloc without the caching allocator, so memcheck sees an
# out-of-bounds access instead of a read inside a larger cached block.
MEMCHECK_CASE=$(cat <<'EOF'
import math
import torch
from codetr.ops import msda

torch.manual_seed(0)
device = "cuda"
shapes = torch.tensor([[5, 7], [3, 4], [1, 2]], device=device)
sizes = shapes.prod(1)
starts = sizes.cumsum(0) - sizes
num_values = int(sizes.sum())
for value_dtype, location_dtype, channels in [
    (torch.float32, torch.float32, 32), (torch.float32, torch.float32, 17),
    (torch.float16, torch.float16, 3), (torch.bfloat16, torch.float32, 33),
    (torch.float64, torch.float64, 5),
]:
    batch, queries, heads, levels, points = 2, 9, 3, 3, 4
    value = torch.randn(batch, num_values, heads, channels, device=device, dtype=value_dtype)
    locations = torch.rand(batch, queries, heads, levels, points, 2, device=device) * 1.4 - 0.2
    far = torch.tensor([-5.0, 7.0, 1e30, -1e30, 3e9, math.nan, math.inf, -math.inf], device=device)
    locations[:, :, :, :, 0, 0] = far[torch.arange(queries * heads * levels * batch, device=device) % 8].reshape(batch, queries, heads, levels)
    locations[:, ::2, :, :, 1, 1] = 1.0 + 1e-7
    locations = locations.to(location_dtype)
    weights = torch.rand(batch, queries, heads, levels, points, device=device, dtype=location_dtype)
    for short_value in (False, True):  # True: level 2 runs past the end of value
        v = (value[:, :-1] if short_value else value).detach().requires_grad_(True)
        l = locations.detach().requires_grad_(True)
        w = weights.detach().requires_grad_(True)
        out = msda(v, shapes, starts, l, w)
        out.backward(torch.randn_like(out))
        torch.cuda.synchronize()
        print(value_dtype, location_dtype, channels, "short" if short_value else "full",
              "finite output:", bool(out.isfinite().all()))
print("memcheck case done")
EOF
)
if command -v compute-sanitizer >/dev/null; then
  SANITIZER=compute-sanitizer
elif [[ -x /usr/local/cuda/bin/compute-sanitizer ]]; then
  SANITIZER=/usr/local/cuda/bin/compute-sanitizer
else
  SANITIZER=""
fi
if ! wants memcheck; then
  :
elif [[ -n "$SANITIZER" ]]; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 step memcheck "$SANITIZER" --tool memcheck --error-exitcode 1 \
    --leak-check no "$PYTHON" -c "$MEMCHECK_CASE"
else
  echo "compute-sanitizer not found"
  STATUS[memcheck]=127
fi

# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
wants bench && step bench "$PYTHON" benchmarks/bench_msda.py --out "$LOG_DIR/bench_msda.jsonl" ${BENCH_ARGS:-}

echo "===== summary (logs in $LOG_DIR)"
failed=0
for name in build import tests memcheck bench; do
  [[ -v "STATUS[$name]" ]] || continue
  echo "$name: exit ${STATUS[$name]}"
  [[ "${STATUS[$name]}" == 0 ]] || failed=1
done
exit $failed
