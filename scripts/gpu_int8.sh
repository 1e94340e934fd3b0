#!/usr/bin/env bash
# INT8 on the reference model, on one GPU: COCO AP of FP32, FP16 and INT8 (ModelOpt calibration, the
# exported fake-quant ExportedProgram; the QDQ ONNX in ONNX Runtime on the CPU), then the per-group sensitivity table.
# Usage:  bash scripts/gpu_int8.sh CHECKPOINT DATA
#   CHECKPOINT  the reference Co-DINO checkpoint (official mmdet or codetr)
#   DATA        COCO-format dataset folder (annotations/instances_val2017.json + val2017/, or the generated layout)
# Environment: CONFIG (default codetr/configs/co_dino_5scale_r50_lsj_8xb2_1x_coco.toml), WORK (default out/gpu_int8),
#   IMAGES (val images for the AP table, default 500), SENS_IMAGES (val images per sensitivity row, default 100),
#   CALIB (calibration images: folder or COCO dataset, default DATA), CALIB_SPLIT (default train, val when DATA
#   has no train split), CALIB_IMAGES (default 256), ONNX_IMAGES (val images for the QDQ ONNX in ONNX Runtime on
#   the CPU, default 100; 0 skips it), PYTHON, STEPS (which of "table onnx sensitivity", default all three:
#   table = FP32/FP16/INT8 fake-quant AP on the GPU, onnx = the QDQ ONNX in ONNX Runtime, sensitivity).
# Offline machines install pycocotools and ModelOpt from ./.whl when it exists (nvidia-modelopt 0.47 and its
# dependencies except torch, for Python 3.12: pip download --no-deps --only-binary=:all: --python-version 3.12 ...).
# Prints: one AP line per precision, the sensitivity table (Markdown), and the files under WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKPOINT="${1:?usage: gpu_int8.sh CHECKPOINT DATA}"
DATA="${2:?usage: gpu_int8.sh CHECKPOINT DATA}"
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-codetr/configs/co_dino_5scale_r50_lsj_8xb2_1x_coco.toml}"
WORK="${WORK:-out/gpu_int8}"
IMAGES="${IMAGES:-500}"
SENS_IMAGES="${SENS_IMAGES:-100}"
CALIB="${CALIB:-$DATA}"
CALIB_IMAGES="${CALIB_IMAGES:-256}"
DEVICE="${DEVICE:-cuda}"
ONNX_IMAGES="${ONNX_IMAGES:-100}"
read -r -a EXPORT_ARGS <<< "${EXPORT_ARGS:-}"  # extra codetr export options, e.g. "--height 640 --width 640"
STEPS="${STEPS:-table onnx sensitivity}"
wants() { [[ " $STEPS " == *" $1 "* ]]; }
started=$(date +%s)
stamp() { echo "===== $* ($(( $(date +%s) - started )) s)"; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
if ! "$PYTHON" -c "import pycocotools" 2>/dev/null && [[ -d .whl ]]; then
  "$PYTHON" -m pip install -q --no-index --find-links .whl pycocotools || true
fi
if ! "$PYTHON" -c "import modelopt.torch.quantization" 2>/dev/null && [[ -d .whl ]]; then
  # --no-deps: the wheels folder holds ModelOpt's dependencies except torch (already installed).
  "$PYTHON" -m pip install -q --no-index --no-deps .whl/*.whl || true
fi
"$PYTHON" -c "import pycocotools, modelopt.torch.quantization" || { echo "error: needs pycocotools and nvidia-modelopt (pip install 'codetr[int8]')"; exit 2; }
if [[ "$DEVICE" == cuda ]] && ! "$PYTHON" -c "import torch, codetr.ops; assert torch.cuda.is_available(); torch.ops.codetr.msda" 2>/dev/null; then
  stamp "build the extension"
  arch="$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")"
  if [[ -x /usr/bin/g++ ]]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" "$PYTHON" -m pip install -q --no-build-isolation --no-deps -e .
fi

rm -rf "$WORK" && mkdir -p "$WORK"
# The first COUNT images of the val split as their own dataset, so every row scores the same images.
val_subset() {  # val_subset FOLDER COUNT
"$PYTHON" - "$DATA" "$1" "$2" <<'PY'
import json, sys
from pathlib import Path
from codetr.data.coco import resolve_dataset
annotation_file, image_dir = resolve_dataset(sys.argv[1], "val")
subset, count = Path(sys.argv[2]), int(sys.argv[3])
data = json.loads(annotation_file.read_text())
data["images"] = data["images"][:count]
kept = {image["id"] for image in data["images"]}
data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
(subset / "annotations").mkdir(parents=True)
(subset / "annotations" / "instances_val.json").write_text(json.dumps(data))
(subset / "val").symlink_to(image_dir.resolve())
print(f"val subset: {len(data['images'])} images, {len(data['annotations'])} annotations from {annotation_file}")
PY
}
val_subset "$WORK/val" "$IMAGES"
if [[ -z "${CALIB_SPLIT:-}" ]]; then
  CALIB_SPLIT=train
  if [[ -d "$CALIB/annotations" ]] && ! ls "$CALIB"/annotations/instances_train*.json >/dev/null 2>&1; then
    CALIB_SPLIT=val
    echo "note: $CALIB has no train split: calibrating on val images (the first $CALIB_IMAGES)"
  fi
fi

evaluate() {  # label, then codetr eval arguments
  local label="$1"; shift
  stamp "eval $label"
  "$PYTHON" -m codetr eval "$@" --data "$WORK/val" --device "$DEVICE" --workers 4 --output "$WORK/eval_$label"
}
if wants table; then
  evaluate fp32 --config "$CONFIG" --checkpoint "$CHECKPOINT" --dtype float32
  evaluate fp16 --config "$CONFIG" --checkpoint "$CHECKPOINT" --dtype float16
  stamp "export INT8 (ModelOpt calibration on $CALIB_IMAGES images, fake-quant ExportedProgram, float16)"
  "$PYTHON" -m codetr export --config "$CONFIG" --checkpoint "$CHECKPOINT" --output "$WORK/export_int8" --dtype float16 \
    --artifacts exported_program --device "$DEVICE" --int8 --calibration-data "$CALIB" --calibration-split "$CALIB_SPLIT" \
    --calibration-images "$CALIB_IMAGES" "${EXPORT_ARGS[@]}"
  evaluate int8 --model "$WORK/export_int8/model.pt2"
fi

onnx_eval=0
if wants onnx && (( ONNX_IMAGES > 0 )); then
  stamp "export the INT8 QDQ ONNX (float32, MSDA plugin node; ModelOpt calibration as above)"
  "$PYTHON" -m codetr export --config "$CONFIG" --checkpoint "$CHECKPOINT" --output "$WORK/export_int8_onnx" --dtype float32 \
    --artifacts onnx --device "$DEVICE" --int8 --calibration-data "$CALIB" --calibration-split "$CALIB_SPLIT" \
    --calibration-images "$CALIB_IMAGES" "${EXPORT_ARGS[@]}"
  val_subset "$WORK/val_onnx" "$ONNX_IMAGES"
  stamp "eval the QDQ ONNX in ONNX Runtime on the CPU, first $ONNX_IMAGES images, in the background (against eager float32 on the CPU)"
  "$PYTHON" -m codetr eval --config "$CONFIG" --checkpoint "$CHECKPOINT" --model "$WORK/export_int8_onnx/model.onnx" \
    --data "$WORK/val_onnx" --device cpu --workers 4 --output "$WORK/eval_int8_onnx" > "$WORK/eval_int8_onnx.log" 2>&1 &
  onnx_eval=$!
fi

if wants sensitivity; then
  stamp "sensitivity ($SENS_IMAGES images per row, float16)"
  "$PYTHON" -m codetr quantize-sensitivity --config "$CONFIG" --checkpoint "$CHECKPOINT" --data "$WORK/val" \
    --max-images "$SENS_IMAGES" --dtype float16 --device "$DEVICE" --workers 4 --calibration-data "$CALIB" \
    --calibration-split "$CALIB_SPLIT" --calibration-images "$CALIB_IMAGES" --output "$WORK/sensitivity.json"
fi

if (( onnx_eval )); then
  wait "$onnx_eval" || echo "the ONNX Runtime eval failed:"
  tail -25 "$WORK/eval_int8_onnx.log"
fi

stamp "summary"
"$PYTHON" - "$WORK" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
for label in ("fp32", "fp16", "int8", "int8_onnx"):
    for metrics in sorted((work / f"eval_{label}").rglob("metrics.json")):
        document = json.loads(metrics.read_text())
        print(f"{label}: AP {100 * document['bbox']['AP']:.2f}  AP50 {100 * document['bbox']['AP50']:.2f}  "
              f"images {document.get('images')}  ({metrics.relative_to(work)})")
for export in ("export_int8", "export_int8_onnx"):
    if not (work / export / "metadata.json").is_file():
        continue
    quantization = json.loads((work / export / "metadata.json").read_text())["quantization"]
    print(f"{export}: {len(quantization['quantized_modules'])} modules quantized, {len(quantization['excluded_modules'])} "
          f"excluded, {len(quantization['not_run_modules'])} not run as modules; calibration {quantization['calibration']}")
PY
if wants sensitivity; then cat "$WORK/sensitivity.md"; fi
find "$WORK" -maxdepth 2 -name '*.json' -o -maxdepth 2 -name '*.md' | sort
stamp "done"
