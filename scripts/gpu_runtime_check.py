"""GPU checks of codetr.runtime that the CPU test suite cannot make (run from the repository root
after the GPU build): ``python scripts/gpu_runtime_check.py``. About a minute; prints one
PASS/FAIL line per check and exits 1 if any failed.

1. A model.pt2 exported on the CPU runs on cuda (ExportedProgramRuntime moves it) and matches
   the CPU run.
2. EagerRuntime float32 on cuda (TF32 off, the default) matches the CPU; the TF32 switches are off
   inside the model unless allow_tf32=True.
3. ``codetr infer --model model.pt2 --device cuda`` and ``codetr infer --config ... --device cuda
   --dtype float16`` finish with exit status 0 and write results.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from codetr.cli import main
from codetr.config import load_config
from codetr.models import build_model
from codetr.runtime.eager import EagerRuntime
from codetr.runtime.exported_program import ExportedProgramRuntime

TINY = Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml"
failures = []


def check(name: str, passed: bool, detail: str = "") -> None:
    print(f"{'PASS' if passed else 'FAIL'} {name} {detail}", flush=True)
    if not passed:
        failures.append(name)


def top_scores_close(a, b, count: int = 5, atol: float = 1e-3) -> tuple[bool, str]:
    difference = (a.scores[:, :count].float().cpu() - b.scores[:, :count].float().cpu()).abs().max().item()
    return difference <= atol, f"(top-{count} score difference {difference:.2e}, tolerance {atol})"


def main_checks(folder: Path) -> None:
    assert torch.cuda.is_available(), "this script needs a CUDA GPU"
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 64, 64, generator=generator) * 255
    image_sizes = torch.tensor([[64, 48]])

    export = folder / "export"
    code = main(["export", "--config", str(TINY), "--output", str(export), "--dtype", "float32", "--height", "64",
                 "--width", "64", "--artifacts", "exported_program", "--device", "cpu"])
    check("export tiny float32 on cpu", code == 0)
    on_cpu = ExportedProgramRuntime(export / "model.pt2")(images, image_sizes)
    on_cuda_runtime = ExportedProgramRuntime(export / "model.pt2", device="cuda")
    on_cuda = on_cuda_runtime(images, image_sizes)
    check("model.pt2 moved to cuda runs there", on_cuda.boxes.device.type == "cuda", f"(outputs on {on_cuda.boxes.device})")
    check("model.pt2 on cuda matches cpu", *top_scores_close(on_cuda, on_cpu))

    eager_cpu = EagerRuntime(build_model(load_config(TINY)), device="cpu")(images, image_sizes)
    runtime = EagerRuntime(build_model(load_config(TINY)), device="cuda")
    seen = []
    runtime.model.backbone.register_forward_pre_hook(
        lambda module, inputs: seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
    eager_cuda = runtime(images, image_sizes)
    check("eager float32 on cuda matches cpu (TF32 off)", *top_scores_close(eager_cuda, eager_cpu))
    check("TF32 off inside the eager model by default", seen == [(False, False)], f"(seen {seen})")

    inputs = folder / "images"
    inputs.mkdir()
    for index, (height, width) in enumerate([(48, 80), (70, 50), (64, 64)]):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(inputs / f"{index}.png")
    for name, arguments in {
        "infer --model model.pt2 --device cuda": ["--model", str(export / "model.pt2")],
        "infer --config --device cuda --dtype float16": ["--config", str(TINY), "--dtype", "float16"],
    }.items():
        output = folder / name.replace(" ", "_").replace("-", "")
        code = main(["infer", *arguments, "--input", str(inputs), "--output", str(output), "--device", "cuda",
                     "--batch-size", "2", "--score-threshold", "0.1"])
        written = (output / "results.json").is_file() and len(json.loads((output / "images.json").read_text())) == 3
        check(name, code == 0 and written, f"(exit {code})")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as temporary:
        main_checks(Path(temporary))
    print("all passed" if not failures else f"{len(failures)} failed: {', '.join(failures)}")
    sys.exit(1 if failures else 0)
