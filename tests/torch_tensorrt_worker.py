"""Runs codetr.tensorrt.torch_tensorrt on a machine without a GPU, in its own process, and
prints a JSON report on stdout.

torch-tensorrt-rtx imports ``tensorrt_rtx`` (we have TensorRT-RTX's ``tensorrt_rtx_bindings``)
and asks CUDA for the device's capability, current device and free memory while importing and
partitioning. ``install_cpu_shims`` answers those questions as an H100 would and routes
submodules to the CPU; nothing else is faked, so partitioning, converter lookup and the
converter itself run as they would on a GPU machine, up to the engine build.

Usage: python torch_tensorrt_worker.py [PLUGIN_LIBRARY]
Prints {scenario: report} for the scenarios (one process, in this order); without
PLUGIN_LIBRARY (no TensorRT headers to build it) only the hybrid ones, which keep MSDA in PyTorch:
  convert-full                     : real FULL compile; report the converter's outcome
  partition-hybrid, partition-full : dry-run compile of a small model; report the partition
  tiny-hybrid, tiny-full           : the same for the tiny Co-DINO exported at 64x96
"""

from __future__ import annotations

import json
import sys

import torch


def install_cpu_shims() -> None:
    import tensorrt_rtx_bindings

    sys.modules.setdefault("tensorrt_rtx", tensorrt_rtx_bindings)
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    torch.cuda.current_device = lambda: 0
    torch.cuda.mem_get_info = lambda device=None: (64 << 30, 80 << 30)
    import torch_tensorrt.dynamo._compiler as compiler

    compiler.to_torch_device = lambda device: torch.device("cpu")


class MsdaBlock(torch.nn.Module):
    """Linear -> msda -> Linear: MSDA in the middle of TensorRT-convertible ops."""

    def __init__(self) -> None:
        super().__init__()
        self.value_proj = torch.nn.Linear(8, 8)
        self.output_proj = torch.nn.Linear(16, 16)
        self.register_buffer("spatial_shapes", torch.tensor([[4, 6], [2, 3]]))
        self.register_buffer("level_start_index", torch.tensor([0, 24]))

    def forward(self, value, sampling_locations, attention_weights):
        value = self.value_proj(value).relu()
        sampled = torch.ops.codetr.msda(
            value, self.spatial_shapes, self.level_start_index, sampling_locations, attention_weights, 64
        )
        return self.output_proj(sampled) + 1


def tiny_co_dino_program() -> tuple[torch.export.ExportedProgram, tuple[torch.Tensor, ...]]:
    from pathlib import Path

    from codetr.config import load_config
    from codetr.export import ExportOptions, MsdaMode
    from codetr.export.program import example_inputs, export_program, prepare_model
    from codetr.models import build_model

    config = load_config(Path(__file__).resolve().parents[1] / "codetr" / "configs" / "tiny.toml")
    options = ExportOptions(dtype=torch.float32, height=64, width=96, msda=MsdaMode.PLUGIN)
    program = export_program(prepare_model(build_model(config), options), options, config.preprocess.size_divisor)
    return program, example_inputs(options)


def run(scenario: str, plugin_library: str) -> dict:
    from codetr.contract.artifacts import CompileMode
    from codetr.tensorrt.torch_tensorrt import compile_program, partition_of

    if scenario.startswith("tiny-"):
        program, inputs = tiny_co_dino_program()
    else:
        inputs = (torch.randn(2, 30, 2, 8), torch.rand(2, 5, 2, 2, 3, 2), torch.rand(2, 5, 2, 2, 3))
        program = torch.export.export(MsdaBlock().eval(), inputs)
    if scenario.startswith(("partition-", "tiny-")):
        mode = CompileMode(scenario.split("-")[1])
        compiled = compile_program(program, inputs, mode, plugin_library=plugin_library, dryrun=True)
        partition = partition_of(compiled)
        return {"tensorrt_segments": partition.tensorrt_segments, "pytorch_segments": partition.pytorch_segments,
                "pytorch_ops": list(partition.pytorch_ops), "text": str(partition)}
    if scenario == "convert-full":
        from torch_tensorrt.dynamo.conversion._ConverterRegistry import DYNAMO_CONVERTERS

        registered_before = torch.ops.codetr.msda.default in DYNAMO_CONVERTERS
        try:
            compile_program(program, inputs, CompileMode.FULL, plugin_library=plugin_library)
            outcome = "compiled"
        except Exception as error:  # report whatever stopped it
            outcome = f"{type(error).__name__}: {error}"
        return {"registered_before": registered_before,
                "registered_after": torch.ops.codetr.msda.default in DYNAMO_CONVERTERS,
                "outcome": outcome}
    raise ValueError(f"unknown scenario {scenario!r}")


# convert-full first: it reports whether the converter was registered before codetr registered it.
SCENARIOS = ("convert-full", "partition-hybrid", "partition-full", "tiny-hybrid", "tiny-full")
WITHOUT_PLUGIN = ("partition-hybrid", "tiny-hybrid")

if __name__ == "__main__":
    install_cpu_shims()
    library = sys.argv[1] if len(sys.argv) > 1 else None
    scenarios = SCENARIOS if library else WITHOUT_PLUGIN
    print(json.dumps({scenario: run(scenario, library) for scenario in scenarios}))
