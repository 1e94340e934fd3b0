"""GPU check of in-graph post-processing (``codetr export --postprocess nms``) that the CPU tests
cannot make (run from the repository root after the GPU build):
``python scripts/gpu_postprocess_check.py``. About a minute; prints one PASS/FAIL line per check
and exits 1 if any failed.

1. The tiny Co-DINO exported on cuda with ``--postprocess nms`` (float32 and float16): its
   model.pt2 runs on cuda (torchvision's CUDA NMS inside torch.ops.codetr.select_detections) and
   keeps exactly the detections torchvision's batched_nms keeps from the eager model's top-k on
   the same GPU, above the threshold.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from torchvision.ops import batched_nms

from codetr.cli import main
from codetr.config import load_config
from codetr.models import build_model
from codetr.runtime import load_runtime

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
THRESHOLD, IOU = 0.6, 0.8  # IoU: the tiny config's NMS iou_threshold
failures = []


def check(name: str, passed: bool, detail: str = "") -> None:
    print(f"{'PASS' if passed else 'FAIL'} {name} {detail}", flush=True)
    if not passed:
        failures.append(name)


def run(dtype: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "export"
        status = main(["export", "--config", str(TINY), "--output", str(output), "--dtype", dtype, "--height", "64",
                       "--width", "96", "--msda", "plugin", "--artifacts", "exported_program", "--device", "cuda",
                       "--postprocess", "nms", "--score-threshold", str(THRESHOLD)])
        check(f"{dtype} export --postprocess nms on cuda", status == 0)
        if status:
            return
        runtime = load_runtime(output / "model.pt2", device="cuda")
        model = build_model(load_config(TINY), seed=0).eval().to("cuda", getattr(torch, dtype))
        for seed in range(3):
            generator = torch.Generator().manual_seed(seed)
            images = torch.randint(0, 256, (1, 3, 64, 96), generator=generator).float().cuda()
            image_sizes = torch.tensor([[64, 96]], device="cuda")
            actual = runtime(images, image_sizes)
            with torch.no_grad():
                boxes, scores, labels = (tensor[0] for tensor in model(images, image_sizes))
            keep = batched_nms(boxes.float(), scores.float(), labels, IOU)
            keep = keep[scores[keep] > THRESHOLD]
            same = (actual.scores.shape == (1, len(keep))
                    and torch.allclose(actual.scores[0].float(), scores[keep].float(), atol=1e-3)
                    and torch.equal(actual.labels[0], labels[keep]))
            check(f"{dtype} seed {seed}: pt2 on cuda keeps batched_nms's detections", same,
                  f"({actual.scores.shape[1]} vs {len(keep)} kept)")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    for dtype in ("float32", "float16"):
        run(dtype)
    sys.exit(1 if failures else 0)
