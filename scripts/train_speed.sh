#!/usr/bin/env bash
# Training speed of the reference recipe (the shipped config synthetic_r50, global batch 32), on the data
# that scripts/train_reference.sh generated (WORK/data): short `codetr train` runs of ITERATIONS
# iterations, each printing the median images/s (global, all processes) of its logged windows after
# the first two and rank 0's peak memory:
#   1 GPU, no AMP (IEEE float32: TF32 off, as codetr trains by default)
#   1 GPU, bf16 AMP (the reference recipe)
#   GPUS GPUs (torchrun, DDP over NCCL, SyncBatchNorm), bf16 AMP, the same global batch; only when
#   the machine has that many GPUs
# Run from anywhere on the GPU machine, after scripts/train_reference.sh:  bash scripts/train_speed.sh
# Environment: RUNS (which of "none bf16 ddp", default all three), WORK (out/reference), ITERATIONS (100),
# GPUS (2), BATCH (32), WORKERS (12), CONFIG, PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WORK="${WORK:-out/reference}"
ITERATIONS="${ITERATIONS:-100}"
GPUS="${GPUS:-2}"
BATCH="${BATCH:-32}"
WORKERS="${WORKERS:-12}"
CONFIG="${CONFIG:-synthetic_r50}"
RUNS="${RUNS:-none bf16 ddp}"
[[ -f "$WORK/data/annotations/instances_train.json" ]] || { echo "error: no $WORK/data: run scripts/train_reference.sh first"; exit 2; }
available="$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")"

summarise() {  # summarise LABEL RUN_FOLDER
  "$PYTHON" - "$1" "$2/train_log.jsonl" <<'PY'
import json, sys
label, log = sys.argv[1], sys.argv[2]
records = [json.loads(line) for line in open(log)]
speeds = sorted(record["images_per_second"] for record in records[2:])
print(f"{label:<32} median {speeds[len(speeds) // 2]:6.1f} images/s over {len(speeds)} windows "
      f"(min {speeds[0]:.1f}, max {speeds[-1]:.1f}); peak memory {max(r['max_memory_gib'] for r in records):.1f} GiB; "
      f"loss at {records[-1]['iteration']}: {records[-1]['loss']:.3f}")
PY
}

speed_run() {  # speed_run LABEL PROCESSES AMP
  local label="$1" processes="$2" amp="$3" run="$WORK/speed/$1"
  rm -rf "$run"
  local launcher=("$PYTHON" -m)
  if (( processes > 1 )); then launcher=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$processes" -m); fi
  echo "===== $label: $processes process(es), --amp $amp, $ITERATIONS iterations ($(date -u +%H:%M:%S))"
  if "${launcher[@]}" codetr train --config "$CONFIG" --data "$WORK/data" --output "$run" --iterations "$ITERATIONS" \
      --batch-size "$BATCH" --amp "$amp" --seed 0 --log-every 10 --save-every 0 --eval-every 0 --workers "$WORKERS" \
      > "$run.log" 2>&1; then
    summarise "$label" "$run"
  else
    echo "$label failed:"; tail -20 "$run.log"
  fi
}

wants() { [[ " $RUNS " == *" $1 "* ]]; }
mkdir -p "$WORK/speed"
wants none && CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" speed_run gpu1_amp_none 1 none
wants bf16 && CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" speed_run gpu1_amp_bf16 1 bf16
if wants ddp; then
  if (( available >= GPUS && GPUS > 1 )); then
    speed_run "gpu${GPUS}_amp_bf16" "$GPUS" bf16
  else
    echo "===== $GPUS GPUs: this machine has $available: skipped"
  fi
fi
