#!/usr/bin/env bash
# codetr eval on GPUs: the tiny model (eager and its ExportedProgram) on generated data, on one GPU
# and then with torchrun over 2 GPUs (NCCL, one GPU per rank); the two runs must give the same
# metrics and the same detections. Needs a machine with 2 GPUs (nvidia-h200-x2).
# Run from anywhere:  bash scripts/eval_gpu_check.sh      (prints the tables, then OK or MISMATCH)
# Environment: WORK (output folder, default out/eval_gpu_check), PYTHON, IMAGES (default 64),
# DEVICE (default cuda; DEVICE=cpu runs the same commands on 2 CPU processes with gloo, as a smoke test).
# Offline machines install pycocotools from ./.whl when it exists (on a connected machine:
# pip download --only-binary=:all: --python-version 3.12 pycocotools -d .whl).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WORK="${WORK:-out/eval_gpu_check}"
IMAGES="${IMAGES:-64}"
DEVICE="${DEVICE:-cuda}"
started=$(date +%s)
stamp() { echo "===== $* ($(( $(date +%s) - started )) s)"; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
if ! "$PYTHON" -c "import pycocotools" 2>/dev/null && [[ -d .whl ]]; then
  "$PYTHON" -m pip install -q --no-index --find-links .whl pycocotools || true
fi
"$PYTHON" -c "import pycocotools, tqdm" || { echo "error: pycocotools and tqdm are required"; exit 2; }
if [[ "$DEVICE" == cuda ]] && ! "$PYTHON" -c "import torch, codetr.ops; assert torch.cuda.device_count() >= 2" 2>/dev/null; then
  stamp "build the extension"
  arch="$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
  if [[ -x /usr/bin/g++ ]]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" "$PYTHON" -m pip install -q --no-build-isolation --no-deps -e .
fi
if [[ "$DEVICE" == cuda ]]; then
  "$PYTHON" -c "import torch; n = torch.cuda.device_count(); assert n >= 2, f'{n} GPU(s): this check needs 2'"
fi

rm -rf "$WORK" && mkdir -p "$WORK"
stamp "generate data"
"$PYTHON" -m codetr data synthetic --output "$WORK/data" --train-images 0 --val-images "$IMAGES" --size 256 256 --classes 5 --seed 0
# The tiny model with the generated data's first five class names (its own are cat, dog, ...).
sed 's/^class_names = .*/class_names = ["disc", "square", "triangle", "ring", "cross"]/' codetr/configs/tiny.toml > "$WORK/tiny.toml"

stamp "export"
"$PYTHON" -m codetr export --config "$WORK/tiny.toml" --output "$WORK/export" --dtype float32 --height 64 --width 64 \
  --artifacts exported_program --device "$DEVICE"

common=(eval --config "$WORK/tiny.toml" --model "$WORK/export/model.pt2" --data "$WORK/data" --device "$DEVICE" --workers 2)
stamp "eval on 1 $DEVICE process"
"$PYTHON" -m codetr "${common[@]}" --output "$WORK/single"
stamp "eval on 2 $DEVICE processes (torchrun; NCCL on GPUs)"
"$PYTHON" -m torch.distributed.run --nproc-per-node 2 -m codetr "${common[@]}" --output "$WORK/distributed"

stamp "compare"
"$PYTHON" - "$WORK" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
ok = True
for label in ("eager", "model.pt2"):
    single, distributed = (json.loads((work / run / label / "metrics.json").read_text()) for run in ("single", "distributed"))
    same_metrics = single["bbox"] == distributed["bbox"] and single["per_class"] == distributed["per_class"]
    same_results = (work / "single" / label / "results.json").read_bytes() == (work / "distributed" / label / "results.json").read_bytes()
    print(f"{label}: AP {single['bbox']['AP']:.4f} (1 GPU) {distributed['bbox']['AP']:.4f} (2 GPUs); images "
          f"{single['images']} / {distributed['images']}; images/s {single['images_per_second']:.1f} / "
          f"{distributed['images_per_second']:.1f}; same metrics {same_metrics}; same results.json {same_results}")
    ok &= same_metrics and same_results and single["images"] == distributed["images"]
comparison = json.loads((work / "single" / "comparison.json").read_text())["models"]["model.pt2"]
print(f"model.pt2 against eager: ΔAP {comparison['delta_AP']:+.5f}, matched {comparison['matched']}, "
      f"unmatched {comparison['unmatched']}, max |Δscore| {comparison['max_score_difference']}, "
      f"max |Δbox| {comparison['max_box_difference']} px")
print("OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
PY
stamp "done"
