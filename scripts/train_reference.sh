#!/usr/bin/env bash
# The reference model: generates the synthetic dataset, trains codetr/configs/synthetic_r50.toml from
# scratch with bf16 AMP on one GPU, evaluates it on the val split and prints AP / AP50.
# Run from anywhere on the GPU machine:  bash scripts/train_reference.sh
#
# Recipe (deterministic given SEED up to GPU atomics): 1144 iterations, the count that
# `--time-limit 6` fitted on one H200 on 2026-11-30 (AP 0.862 on val; BENCHMARKS.md). Setting
# TIME_LIMIT (minutes) instead fits the iteration count to a time budget after 40 iterations
# (logged and stored in the checkpoint's meta).
#   data   codetr data synthetic --train-images 6000 --val-images 500 --size 512 512 --seed 0
#   train  codetr train --batch-size 32 --amp bf16 --seed 0 --iterations 1144
# Writes everything under out/reference/ (ignored by git): data/, train/{latest.pth,
# train_log.jsonl,loss.png,metrics.json}; copies the logs, metrics and plot to $OUT when set.
# Environment: SEED, TRAIN_IMAGES, VAL_IMAGES, ITERATIONS, TIME_LIMIT (minutes, empty = none),
# BATCH, AMP, WORKERS, WORK (output folder), CONFIG, SIZE ("512 512"), PYTHON, BUILD (1 = always
# build the extension, 0 = never; default: only when the CUDA op is not usable).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SEED="${SEED:-0}"
TRAIN_IMAGES="${TRAIN_IMAGES:-6000}"
VAL_IMAGES="${VAL_IMAGES:-500}"
SIZE="${SIZE:-512 512}"
ITERATIONS="${ITERATIONS:-1144}"
TIME_LIMIT="${TIME_LIMIT:-}"
BATCH="${BATCH:-32}"
AMP="${AMP:-bf16}"
WORKERS="${WORKERS:-12}"
WORK="${WORK:-out/reference}"
CONFIG="${CONFIG:-codetr/configs/synthetic_r50.toml}"
started=$(date +%s)
stamp() { echo "===== $* ($(( $(date +%s) - started )) s)"; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

# Libraries the training needs; offline machines install them from ./.whl when it exists
# (on a connected machine: pip download --only-binary=:all: --python-version 3.12 scipy pycocotools matplotlib tqdm -d .whl).
for module in scipy pycocotools tqdm matplotlib; do
  if ! "$PYTHON" -c "import $module" 2>/dev/null; then
    if [[ -d .whl ]]; then "$PYTHON" -m pip install -q --no-index --find-links .whl "$module" || true; fi
  fi
done
"$PYTHON" -c "import scipy, pycocotools, tqdm" || { echo "error: scipy, pycocotools and tqdm are required"; exit 2; }

CUDA_OP_CHECK='import torch, codetr.ops
v = torch.randn(1, 4, 1, 8, device="cuda", requires_grad=True)
out = codetr.ops.msda(v, torch.tensor([[2, 2]], device="cuda"), torch.tensor([0], device="cuda"),
                      torch.rand(1, 3, 1, 1, 1, 2, device="cuda"), torch.ones(1, 3, 1, 1, 1, device="cuda"))
out.sum().backward()'
if [[ "${BUILD:-}" == 1 ]] || { [[ "${BUILD:-}" != 0 ]] && ! "$PYTHON" -c "$CUDA_OP_CHECK" 2>/dev/null; }; then
  stamp "build the extension"
  arch="$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
  if [[ -x /usr/bin/g++ ]]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PYTHON" -m pip install -q --no-build-isolation --no-deps -e .
fi

mkdir -p "$WORK"
if [[ ! -f "$WORK/data/annotations/instances_val.json" ]]; then
  stamp "generate data"
  # shellcheck disable=SC2086  # SIZE is two numbers
  "$PYTHON" -m codetr data synthetic --output "$WORK/data" --train-images "$TRAIN_IMAGES" \
    --val-images "$VAL_IMAGES" --size $SIZE --seed "$SEED" --overwrite
fi

stamp "train"
rm -rf "$WORK/train"
limit=()
if [[ -n "$TIME_LIMIT" ]]; then limit=(--time-limit "$TIME_LIMIT"); fi
"$PYTHON" -m codetr train --config "$CONFIG" --data "$WORK/data" --output "$WORK/train" \
  --iterations "$ITERATIONS" "${limit[@]}" --batch-size "$BATCH" --amp "$AMP" --seed "$SEED" \
  --eval-every 2000 --save-every 2000 --log-every 20 --workers "$WORKERS"
stamp "done"

"$PYTHON" - "$WORK/train" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
steps = [r for r in records if "loss" in r]
speed = sorted(r["images_per_second"] for r in steps[2:] or steps)
metrics = json.loads((out / "metrics.json").read_text())
print(f"iterations {metrics['iteration']}  final loss {steps[-1]['loss']:.3f}  "
      f"median images/s {speed[len(speed) // 2]:.1f}  max memory {max(r['max_memory_gib'] for r in steps):.1f} GiB")
print("val AP {AP:.4f}  AP50 {AP50:.4f}  AP75 {AP75:.4f}  APs {APs:.4f}  APm {APm:.4f}  APl {APl:.4f}".format(**metrics["bbox"]))
PY
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  cp "$WORK/train/train_log.jsonl" "$WORK/train/metrics.json" "$OUT/"
  cp "$WORK/train/loss.png" "$OUT/" 2>/dev/null || true
fi
