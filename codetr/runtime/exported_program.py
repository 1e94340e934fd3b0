"""Running a saved torch.export program (``model.pt2``)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the Q/DQ ops that INT8 programs call
from torch.export import ExportedProgram

import codetr.ops  # noqa: F401  registers torch.ops.codetr.msda, which plugin-mode programs call
from codetr.models import Detections
from codetr.runtime.base import Runtime, check_inputs


class ExportedProgramRuntime(Runtime):
    """Runs an ExportedProgram on the device it was exported on (its graph is specialised to it)."""

    def __init__(self, program: str | Path | ExportedProgram) -> None:
        if not isinstance(program, ExportedProgram):
            program = torch.export.load(Path(program))
        self.program = program
        self.module = program.module()
        tensors = [*program.state_dict.values(), *program.constants.values()]
        devices = {tensor.device for tensor in tensors if isinstance(tensor, torch.Tensor)}
        self.device = devices.pop() if len(devices) == 1 else torch.device("cpu")

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes)
        with torch.no_grad():
            boxes, scores, labels = self.module(
                images.to(self.device, torch.float32), image_sizes.to(self.device, torch.int64)
            )
        return Detections(boxes, scores, labels)
