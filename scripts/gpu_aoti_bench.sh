#!/usr/bin/env bash
# AOTInductor package and `codetr bench` on a CUDA GPU (written for the H200), from the repository
# root, after the build (CXX=/usr/bin/g++ TORCH_CUDA_ARCH_LIST=9.0 pip install --no-build-isolation
# --no-deps -e .). Co-DINO R50, random weights, float16, 768x1152:
#   export_b1  static batch 1: exported_program + aoti (timed, AOTInductor compile included)
#   export_b8  static batch 8: aoti only (for the batch-8 throughput)
#   bench      codetr bench of model.pt2, both packages with and without CUDA graphs, eager float32 and
#              float16, at batch 1 and 8 -> $OUT/bench_r50.{json,png}
#   dynamic    dynamic height/width (512..1344) export: torch.export + ONNX + aoti, timed with
#              whatever time is left of the budget (stage times are logged as they finish)
#   swin       (not in the default STEPS) Swin-L static batch 1 aoti export (at most SWIN_EXPORT_S, default 240 s)
#              + bench, eager float16 and bfloat16 beside it -> $OUT/bench_swin_l.*; export_swin and
#              bench_swin are its two halves (e.g. compile while the GPU is busy, time when it is free)
#   tests      (not in the default STEPS) the AOTInductor tests on the GPU, the CUDA-graph replay test
#              included (it compiles the tiny model for CUDA)
# Logs and results go to $OUT (default: a temporary folder); a summary is printed at the end.
# A dynamic export that needs more than the time left: STEPS=dynamic BUDGET_S=400 bash scripts/gpu_aoti_bench.sh
# Environment: WORK (the exports' folder, default a temporary one), PROFILE (non-empty: benches with --profile, where the GPU time goes), STEPS (default
# "export_b1 export_b8 bench dynamic"), BUDGET_S (default 520): every step
# runs under a timeout taken from what is left of it (an export at most 240 s, 150 s kept for the
# bench; the dynamic export gets the rest), ITERATIONS (50), WARMUP (10), PYTHON (python3); for a dry
# run of the script itself: CONFIG (the R50 config), DEVICE (cuda), HEIGHT (768), WIDTH (1152),
# DYNAMIC (512:1344, both sides).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
# WORK: where the exports go; a given one is kept (a later run with STEPS=bench reuses it), the
# default temporary one is removed at the end.
WORK_GIVEN="${WORK:-}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
PYTHON="${PYTHON:-python3}"
STEPS="${STEPS:-export_b1 export_b8 bench dynamic}"
BUDGET_S="${BUDGET_S:-520}"
ITERATIONS="${ITERATIONS:-50}"
WARMUP="${WARMUP:-10}"
R50="${CONFIG:-codetr/configs/co_dino_5scale_r50_lsj_8xb2_1x_coco.toml}"
SWIN=codetr/configs/co_dino_5scale_swin_l_16xb1_16e_o365tococo.toml
DEVICE="${DEVICE:-cuda}"
SIZE=(--height "${HEIGHT:-768}" --width "${WIDTH:-1152}")
START=$SECONDS
declare -A STATUS SECONDS_TAKEN
wants() { [[ " $STEPS " == *" $1 "* ]]; }

left() {  # left RESERVE_S CAP_S: seconds of the budget left after keeping RESERVE_S, at most CAP_S, at least 30
  local seconds=$((BUDGET_S - (SECONDS - START) - $1))
  (( seconds > $2 )) && seconds=$2
  (( seconds < 30 )) && seconds=30
  echo "$seconds"
}

step() {  # step NAME TIMEOUT_S COMMAND...: run COMMAND under a timeout, tee to $OUT/NAME.log, time it
  local name="$1" limit="$2"
  shift 2
  echo "===== $name: $* (limit ${limit} s, $(date -u +%H:%M:%S))"
  local began=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  STATUS[$name]=${PIPESTATUS[0]}
  SECONDS_TAKEN[$name]=$((SECONDS - began))
  echo "===== $name exit ${STATUS[$name]} after ${SECONDS_TAKEN[$name]} s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PYTHON" -c "import torch, triton, codetr.ops; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.ops.codetr.msda)"
# AOTInductor compiles and links the package with $CXX. The system GCC links libstdc++ dynamically, like
# torch; the H100 machine's /opt/gcc links it statically (an extension built with it crashed, 2026-11-22).
if [[ -x /usr/bin/g++ ]]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi

profile=()
[[ -n "${PROFILE:-}" ]] && profile=(--profile)
export_cmd=("$PYTHON" -m codetr export --config "$R50" --dtype float16 --device "$DEVICE" "${SIZE[@]}")

wants export_b1 && step export_b1 "$(left 150 240)" "${export_cmd[@]}" --output "$WORK/r50_b1" --artifacts exported_program,aoti
wants export_b8 && step export_b8 "$(left 150 240)" "${export_cmd[@]}" --output "$WORK/r50_b8" --batch-size 8 --artifacts aoti

if wants bench; then
  artifacts=()
  for file in "$WORK/r50_b1/model.pt2" "$WORK/r50_b1/model_aoti.pt2" "$WORK/r50_b8/model_aoti.pt2"; do
    [[ -f "$file" ]] && artifacts+=("$file")
  done
  step bench "$(left 0 300)" "$PYTHON" -m codetr bench "${artifacts[@]}" eager:float32 eager:float16 --config "$R50" \
    "${SIZE[@]}" --batch-sizes 1,8 --cuda-graph both --iterations "$ITERATIONS" --warmup "$WARMUP" \
    "${profile[@]}" --json "$OUT/bench_r50.json" --plot "$OUT/bench_r50.png"
fi

if wants swin || wants export_swin; then
  step export_swin "$(left 60 "${SWIN_EXPORT_S:-240}")" "$PYTHON" -m codetr export --config "$SWIN" --dtype float16 --device cuda "${SIZE[@]}" \
    --output "$WORK/swin_b1" --artifacts aoti
fi
if wants swin || wants bench_swin; then
  [[ -f "$WORK/swin_b1/model_aoti.pt2" ]] && step bench_swin "$(left 0 120)" "$PYTHON" -m codetr bench \
    "$WORK/swin_b1/model_aoti.pt2" eager:float16 eager:bfloat16 --config "$SWIN" "${SIZE[@]}" --batch-sizes 1 --cuda-graph both \
    --iterations "$ITERATIONS" --warmup "$WARMUP" "${profile[@]}" --json "$OUT/bench_swin_l.json" --plot "$OUT/bench_swin_l.png"
fi

wants tests && step tests "$(left 0 300)" "$PYTHON" -m pytest -q -rfEs tests/test_runtime_aoti.py

if wants dynamic; then
  step dynamic "$(left 0 600)" "${export_cmd[@]}" --output "$WORK/r50_dynamic" --dynamic-height "${DYNAMIC:-512:1344}" \
    --dynamic-width "${DYNAMIC:-512:1344}" --artifacts exported_program,onnx,aoti
fi

echo
echo "================ summary ($((SECONDS - START)) s in all) ================"
for name in export_b1 export_b8 bench export_swin bench_swin tests dynamic; do
  [[ -n "${STATUS[$name]:-}" ]] && printf '%-12s exit %-3s %5s s\n' "$name" "${STATUS[$name]}" "${SECONDS_TAKEN[$name]}"
done
for name in export_b1 export_b8 export_swin dynamic; do
  [[ -f "$OUT/$name.log" ]] || continue
  echo "--- $name stages (seconds)"
  grep -E '\] done in|failed' "$OUT/$name.log" | sed -E 's/^[0-9:]+ //; s/ -> .*//'
done
[[ "${STATUS[dynamic]:-0}" == 124 ]] && echo "dynamic export: stopped by the time box; the stages above finished"
for name in bench_r50 bench_swin_l; do
  [[ -f "$OUT/$name.json" ]] || continue
  echo "--- $name (median ms, images/s, peak GiB)"
  "$PYTHON" - "$OUT/$name.json" <<'EOF'
import json, sys
document = json.load(open(sys.argv[1]))
print(document["header"]["device"], document["header"]["versions"].get("torch"))
for result in document["results"]:
    print(f'{result["label"]:<60} {result["dtype"]:<8} b{result["batch_size"]:<2} '
          f'{result["latency_ms"]["median"]:8.2f} ms  p90 {result["latency_ms"]["p90"]:8.2f}  '
          f'{result["images_per_second"]:7.1f} img/s  {result["peak_memory_gib"] or 0:5.2f} GiB')
for skipped in document["skipped"]:
    print(f'skipped {skipped["label"]} b{skipped["batch_size"]}: {skipped["reason"]}')
EOF
done
echo "logs, JSON and plots: $OUT"
[[ -z "$WORK_GIVEN" ]] && rm -rf "$WORK"
