#!/usr/bin/env bash
# The MSDA op's CUDA tests and forward benchmark against an already built codetr (no build
# here), so that one GPU call can run it once per build ("before" / "after") and compare:
#
#   PYTHONPATH=/path/to/built/tree scripts/gpu_msda.sh results.jsonl
#
# Run from the root of this tree: its tests/ and benchmarks/ are used, the codetr package (and
# its compiled _C) is whichever `import codetr` finds outside the working directory, normally
# through PYTHONPATH. Steps (~1-2 min on an H200):
#   1. tests/test_msda_op.py and tests/test_msda_module.py, the CUDA ones (-k cuda), then
#      compute-sanitizer memcheck of forward shapes large enough for the fast kernel, with
#      locations far outside the maps, on the last row/column and NaN, and of msda_from_offsets
#      with far-away and NaN offsets and an infinite logit (skipped without
#      compute-sanitizer);
#   2. benchmarks/bench_msda.py forward, fp32/fp16/bf16, codetr and codetr_f32loc, on enc_b1,
#      enc_b1_local and dec_b1, then forward+backward of enc_b1 fp16 (backward unchanged check);
#      all rows go to $1 (JSONL), then a compact table is printed; then
#      benchmarks/bench_msda_from_offsets.py (fused input preparation against the unfused path)
#      -> ${1%.jsonl}-from-offsets.jsonl.
# Exit status: the tests' if they fail, else the benchmark's.
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 RESULTS.jsonl" >&2
  exit 2
fi
out="$1"
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# The tree that provides codetr, found from / so that this tree's own codetr/ does not shadow it.
build_root="$(cd / && "$PYTHON" -c 'import codetr, pathlib; print(pathlib.Path(codetr.__file__).resolve().parents[1])')" || {
  echo "error: codetr is not importable (set PYTHONPATH to a built tree)" >&2
  exit 2
}
export PYTHONPATH="$build_root${PYTHONPATH:+:$PYTHONPATH}"
echo "codetr from: $build_root ($(git -C "$build_root" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
"$PYTHON" -c 'import torch, codetr.ops, codetr._C as c; print("extension:", c.__file__); print("torch", torch.__version__, torch.cuda.get_device_name())'

echo "===== tests ($(date -u +%H:%M:%S))"
# pyproject's pythonpath = ["."] would put this tree first; point it at the build instead.
"$PYTHON" -m pytest -q -x -o "pythonpath=$build_root" -p no:cacheprovider \
  tests/test_msda_op.py tests/test_msda_module.py tests/test_msda_from_offsets.py -k cuda
tests_status=$?
if [[ $tests_status -ne 0 ]]; then
  echo "===== tests FAILED (exit $tests_status)"
fi

echo "===== memcheck, fast forward shapes ($(date -u +%H:%M:%S))"
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)"
if [[ -n "$sanitizer" ]]; then
  # Each allocation its own cudaMalloc (no caching allocator), so a read past a tensor is seen.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 --leak-check no "$PYTHON" - <<'PY'
import torch
from codetr.ops import msda
from codetr.ops.msda import msda_from_offsets

torch.manual_seed(0)
shapes = torch.tensor([[64, 96], [32, 48], [16, 24], [8, 12]], device="cuda")
sizes = shapes.prod(1)
starts = sizes.cumsum(0) - sizes
for value_dtype, location_dtype, channels in [(torch.float16, torch.float16, 32), (torch.bfloat16, torch.float32, 32),
                                              (torch.float32, torch.float32, 32), (torch.float16, torch.float16, 16)]:
    batch, heads, points = 2, 8, 4
    queries = 2**20 // (batch * heads * (channels * value_dtype.itemsize // 16)) + 3  # fast path, last block part-filled
    value = torch.randn(batch, int(sizes.sum()), heads, channels, device="cuda", dtype=value_dtype)
    locations = torch.rand(batch, queries, heads, 4, points, 2, device="cuda") * 1.4 - 0.2
    locations[:, ::5, :, :, 0, 0] = -1e30
    locations[:, 1::5, :, :, 1, 1] = 3e9
    locations[:, 2::5, :, :, 2, 0] = float("nan")
    locations[:, 3::5, :, :, 3] = 1.0 + 1e-7
    weights = torch.rand(batch, queries, heads, 4, points, device="cuda")
    out = msda(value, shapes, starts, locations.to(location_dtype), weights.to(location_dtype))
    torch.cuda.synchronize()
    print(value_dtype, location_dtype, channels, queries, "queries: finite", bool(out.isfinite().all()))
    # msda_from_offsets' fused kernel: offsets far outside and NaN, an infinite logit.
    reference = torch.rand(batch, queries, 4, 2, device="cuda", dtype=location_dtype)
    offsets = torch.randn(batch, queries, heads, 4, points, 2, device="cuda") * 3
    offsets[:, ::5, :, :, 0, 0] = -1e30
    offsets[:, 1::5, :, :, 1, 1] = 6e4
    offsets[:, 2::5, :, :, 2, 0] = float("nan")
    logits = torch.randn(batch, queries, heads, 4, points, device="cuda")
    logits[:, 3::5, :, 1, 2] = float("inf")
    out = msda_from_offsets(value, shapes, starts, reference, offsets.to(value_dtype), logits.to(value_dtype))
    torch.cuda.synchronize()
    print("  msda_from_offsets: finite", bool(out.isfinite().all()))
print("memcheck fast path done")
PY
  memcheck_status=$?
  echo "===== memcheck exit $memcheck_status"
  (( tests_status == 0 )) && tests_status=$memcheck_status
else
  echo "compute-sanitizer not found: memcheck skipped"
fi

echo "===== benchmark ($(date -u +%H:%M:%S))"
tmp="$(mktemp -d)"
"$PYTHON" benchmarks/bench_msda.py --cases enc_b1 enc_b1_local dec_b1 \
  --dtypes float32 float16 bfloat16 --impls codetr codetr_f32loc --forward-only \
  --out "$tmp/fwd.jsonl" > "$tmp/fwd.log" 2>&1
bench_status=$?
"$PYTHON" benchmarks/bench_msda.py --cases enc_b1 --dtypes float16 --impls codetr \
  --out "$tmp/fb.jsonl" > "$tmp/fb.log" 2>&1
fb_status=$?
if [[ $bench_status -ne 0 || $fb_status -ne 0 ]]; then
  tail -n 30 "$tmp/fwd.log" "$tmp/fb.log"
  bench_status=1
fi
cat "$tmp"/fwd.jsonl "$tmp"/fb.jsonl > "$out" 2>/dev/null
echo "rows: $out"
# The fused preparation against the layer's unfused path, encoder shapes, batch 1 and 8.
"$PYTHON" benchmarks/bench_msda_from_offsets.py --out "${out%.jsonl}-from-offsets.jsonl" || bench_status=1

"$PYTHON" - "$out" <<'EOF'
import json, sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for env in (r for r in rows if r["kind"] == "env"):
    print(f"{env.get('gpu', env['dev'])}, torch {env['torch']}, copy {env.get('copy_GBps', 0):.0f} GB/s")
print(f"{'case':<13} {'impl':<14} {'dtype':<9} {'fwd ms':>7} {'warm ms':>8} {'f+b ms':>7} "
      f"{'err fwd':>8} {'err own in':>10}")
for r in (r for r in rows if r["kind"] == "row"):
    fb = f"{r['fwdbwd_ms']:.3f}" if "fwdbwd_ms" in r else ""
    own = f"{r['err_fwd_q']:.1e}" if "err_fwd_q" in r else ""
    print(f"{r['case']:<13} {r['impl']:<14} {r['dtype']:<9} {r['fwd_ms']:>7.3f} "
          f"{r['fwd_warm_ms']:>8.3f} {fb:>7} {r['err_fwd']:>8.1e} {own:>10}")
EOF
rm -rf "$tmp"
echo "===== done ($(date -u +%H:%M:%S)): tests exit $tests_status, benchmark exit $bench_status"
[[ $tests_status -ne 0 ]] && exit "$tests_status"
exit "$bench_status"
