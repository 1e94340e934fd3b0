#!/usr/bin/env bash
# The reference model's AP through every path that runs on one CUDA GPU and on the CPU, after
# scripts/train_reference.sh (same WORK folder). Prints one table per `codetr eval` run (ΔAP
# against its first row) and copies the metrics to $OUT when set.
#   GPU, all 500 val images: eager float32 (IEEE) first, then eager float32 with TF32, float16 and
#     bfloat16; ExportedProgram and AOTInductor package, float32 and float16 (static 512x512).
#   CPU, the first SUBSET val images (ONNX Runtime is slow): eager float32, ONNX Runtime with the
#     plugin node (float32) and decomposed into standard ops (float32).
# Environment: WORK (out/reference), CONFIG (codetr/configs/synthetic_r50.toml), SUBSET (100), PYTHON,
#   STEPS (which of "gpu onnxruntime", default both; ONNX Runtime wants the CPU to itself).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WORK="${WORK:-out/reference}"
CONFIG="${CONFIG:-codetr/configs/synthetic_r50.toml}"
SUBSET="${SUBSET:-100}"
CHECKPOINT="$WORK/train/latest.pth"
DATA="$WORK/data"
TABLE="$WORK/table"
if [[ -x /usr/bin/g++ ]]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
[[ -f "$CHECKPOINT" ]] || { echo "error: no $CHECKPOINT; run scripts/train_reference.sh first"; exit 2; }
STEPS="${STEPS:-gpu onnxruntime}"
wants() { [[ " $STEPS " == *" $1 "* ]]; }
rm -rf "$TABLE" && mkdir -p "$TABLE"
started=$SECONDS
stamp() { echo "===== $* ($((SECONDS - started)) s)"; }
codetr() { "$PYTHON" -m codetr "$@"; }
export_args=(--config "$CONFIG" --checkpoint "$CHECKPOINT" --height 512 --width 512)

stamp "export ($STEPS)"
if wants gpu; then
  codetr export "${export_args[@]}" --dtype float32 --device cuda --artifacts exported_program,onnx,aoti --output "$TABLE/fp32" &
  codetr export "${export_args[@]}" --dtype float16 --device cuda --artifacts exported_program,aoti --output "$TABLE/fp16" &
else
  codetr export "${export_args[@]}" --dtype float32 --device cuda --artifacts onnx --output "$TABLE/fp32" &
fi
wants onnxruntime && codetr export "${export_args[@]}" --dtype float32 --device cpu --msda decomposed --artifacts onnx --output "$TABLE/decomposed" &
wait

if wants gpu; then
stamp "eager variants on the GPU"
eval_args=(--data "$DATA" --split val --batch-size 16 --workers 8)
codetr eval --config "$CONFIG" --checkpoint "$CHECKPOINT" --device cuda "${eval_args[@]}" --output "$TABLE/eager_fp32"
codetr eval --config "$CONFIG" --checkpoint "$CHECKPOINT" --device cuda --allow-tf32 "${eval_args[@]}" --output "$TABLE/eager_tf32"
for dtype in float16 bfloat16; do
  codetr eval --config "$CONFIG" --checkpoint "$CHECKPOINT" --device cuda --dtype "$dtype" "${eval_args[@]}" --output "$TABLE/eager_$dtype"
done

stamp "exported artifacts on the GPU (against eager float32)"
codetr eval --config "$CONFIG" --checkpoint "$CHECKPOINT" --device cuda \
  --model "$TABLE/fp32/model.pt2" --model "$TABLE/fp32/model_aoti.pt2" \
  --model "$TABLE/fp16/model.pt2" --model "$TABLE/fp16/model_aoti.pt2" "${eval_args[@]}" --output "$TABLE/artifacts"
fi

if wants onnxruntime; then
stamp "ONNX Runtime on the CPU, first $SUBSET val images (against eager float32 on the CPU)"
"$PYTHON" - "$DATA/annotations/instances_val.json" "$TABLE/val_subset.json" "$SUBSET" <<'PY'
import json, sys
document = json.load(open(sys.argv[1]))
images = sorted(document["images"], key=lambda image: image["id"])[: int(sys.argv[3])]
ids = {image["id"] for image in images}
document["images"] = images
document["annotations"] = [a for a in document["annotations"] if a["image_id"] in ids]
json.dump(document, open(sys.argv[2], "w"))
PY
codetr eval --config "$CONFIG" --checkpoint "$CHECKPOINT" --device cpu \
  --model "$TABLE/fp32/model.onnx" --model "$TABLE/decomposed/model.onnx" \
  --annotations "$TABLE/val_subset.json" --images "$DATA/val" --batch-size 4 --workers 4 --output "$TABLE/onnxruntime"
fi
stamp "done"

if [[ -n "${OUT:-}" ]]; then
  # One file back (the device returns few): every metrics.json and comparison.json of the table.
  "$PYTHON" - "$TABLE" "$OUT/reference_table.json" <<'PY'
import json, pathlib, sys
table = pathlib.Path(sys.argv[1])
collected = {str(path.relative_to(table)): json.loads(path.read_text())
             for pattern in ("*/metrics.json", "*/*/metrics.json", "*/comparison.json", "*/metadata.json")
             for path in sorted(table.glob(pattern))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(collected, indent=1))
PY
fi
