"""Running a saved torch.export program (``model.pt2``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers the Q/DQ ops that INT8 programs call
from torch.export import ExportedProgram
from torch.export.passes import move_to_device_pass

import codetr.ops  # noqa: F401  registers torch.ops.codetr.msda, which plugin-mode programs call
from codetr.contract.metadata import ExportMetadata
from codetr.models import Detections
from codetr.models.precision import tf32
from codetr.runtime.base import InputSpec, Runtime, check_described_inputs, check_inputs, resolve_device, unreadable


class ExportedProgramRuntime(Runtime):
    """Runs an ExportedProgram.

    Raises FileNotFoundError for a missing file and ValueError for one that is not a readable
    ``torch.export`` archive (truncated or damaged) or whose inputs are not the ones ``metadata``
    describes (:func:`~codetr.runtime.base.check_described_inputs`).

    ``device``: where to run (default: the device it was exported on; another device moves the
    program's weights there with ``torch.export.passes.move_to_device_pass``). ``allow_tf32``
    (default: the metadata's ``precision.allow_tf32``, else False): whether float32 matmuls and
    convolutions may use TF32 on the GPU (see :mod:`codetr.models.precision`).
    """

    def __init__(
        self,
        program: str | Path | ExportedProgram,
        metadata: ExportMetadata | None = None,
        *,
        device: str | torch.device | None = None,
        allow_tf32: bool | None = None,
    ) -> None:
        self.metadata = metadata
        where = "the ExportedProgram" if isinstance(program, ExportedProgram) else str(program)
        if not isinstance(program, ExportedProgram):
            program = _load_program(Path(program))
        if metadata is not None:
            check_described_inputs(metadata, _program_inputs(program), where)
        tensors = [*program.state_dict.values(), *program.constants.values()]
        devices = {tensor.device for tensor in tensors if isinstance(tensor, torch.Tensor)}
        exported_on = devices.pop() if len(devices) == 1 else torch.device("cpu")
        # A program exported on a GPU refuses a GPU-less machine by name unless device= moves it.
        self.device = resolve_device(device if device is not None else exported_on)
        if self.device != exported_on:
            program = move_to_device_pass(program, self.device)
        self.program = program
        self.module = program.module()
        self.allow_tf32 = allow_tf32 if allow_tf32 is not None else bool(metadata and metadata.allow_tf32)

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes, self.metadata)
        with torch.no_grad(), tf32(self.allow_tf32):
            boxes, scores, labels = self.module(
                images.to(self.device, torch.float32), image_sizes.to(self.device, torch.int64)
            )
        return Detections(boxes, scores, labels)


def _load_program(path: Path) -> ExportedProgram:
    """``torch.export.load``, with a damaged archive reported as a ValueError naming the file
    (checked first: torch.export.load logs a traceback before it raises)."""
    if not path.is_file():
        raise FileNotFoundError(f"no ExportedProgram at {path}")
    if not zipfile.is_zipfile(path):
        raise unreadable(path, "ExportedProgram (torch.export archive)", "not a zip archive")
    try:
        return torch.export.load(path)
    except zipfile.BadZipFile as error:
        raise unreadable(path, "ExportedProgram (torch.export archive)", error) from None


def _program_inputs(program: ExportedProgram) -> list[InputSpec]:
    """The program's user inputs as (name, dtype name, shape); a symbolic dimension as its name."""
    user_inputs = program.graph_signature.user_inputs
    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    specs = []
    for name in user_inputs:
        value = nodes[name].meta.get("val") if name in nodes else None
        if not isinstance(value, torch.Tensor):
            continue
        shape = [size if isinstance(size, int) else str(size) for size in value.shape]
        specs.append((name, str(value.dtype).removeprefix("torch."), shape))
    return specs
