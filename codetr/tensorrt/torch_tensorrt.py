"""Torch-TensorRT compilation of an exported codetr model (an ``ExportedProgram``), two modes:

HYBRID  ``torch.ops.codetr.msda`` stays in PyTorch (``torch_executed_ops``); Torch-TensorRT
        partitions the graph around it into TensorRT segments and PyTorch segments.
FULL    a converter maps ``torch.ops.codetr.msda`` to our IPluginV3 layer
        (libcodetr_msda_trt.so, via the plugin creator and ``add_plugin_v3``), so the op no
        longer splits the graph and the model can become a single TensorRT engine.

:func:`partition_of` reports the result (TensorRT vs PyTorch segments); :func:`save_compiled`
stores a compiled program, which :class:`codetr.runtime.torch_tensorrt.TorchTensorRTRuntime`
runs. Needs ``torch-tensorrt`` (optional extra); nothing here imports it before it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import codetr.ops  # noqa: F401  registers torch.ops.codetr.msda
from codetr.atomic import atomic_path
from codetr.contract.artifacts import CompileMode
from codetr.contract.plugin import CODETR_OP_TYPE, CODETR_PLUGIN_NAMESPACE, CODETR_PLUGIN_VERSION, DEFAULT_IM2COL_STEP
from codetr.tensorrt.plugin import register_plugin_library

MSDA_OP = torch.ops.codetr.msda.default


def torch_tensorrt_unavailable_reason() -> str | None:
    """Why ``torch_tensorrt`` cannot be used here, or None when it imports.

    Catches every exception: besides ImportError/OSError, Torch-TensorRT-RTX raises a plain
    ``Exception`` ("Could not find libtensorrt_rtx.so.1") when TensorRT-RTX's libraries are not
    on the library path.
    """
    try:
        # Torch-TensorRT prints its own import failures; the reason returned here replaces them.
        with contextlib.redirect_stdout(io.StringIO()):
            import torch_tensorrt  # noqa: F401
    except Exception as error:
        first_line = next(iter(str(error).splitlines()), "")
        return (
            f"torch_tensorrt cannot be imported ({type(error).__name__}: {first_line}); install "
            "torch-tensorrt matching this torch (it needs TensorRT 10.x/11.x and a CUDA GPU)"
        )
    return None
_PLUGIN_VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class Partition:
    """How a compiled graph is split: segment counts and the ops left to PyTorch."""

    tensorrt_segments: int
    pytorch_segments: int
    pytorch_ops: tuple[str, ...]

    def __str__(self) -> str:
        ops = ", ".join(self.pytorch_ops) or "none"
        return (
            f"{self.tensorrt_segments} TensorRT segment(s), {self.pytorch_segments} PyTorch "
            f"segment(s); ops in PyTorch: {ops}"
        )


def partition_of(module: torch.fx.GraphModule) -> Partition:
    """Count the segments of a Torch-TensorRT compiled module.

    Torch-TensorRT names its submodules ``_run_on_acc_<i>`` (TensorRT) and ``_run_on_gpu_<i>``
    (PyTorch); after a real (not dry-run) compile the TensorRT ones are engine modules.
    """
    tensorrt, pytorch, ops = 0, 0, []
    for name, child in module.named_children():
        if name.startswith("_run_on_acc"):
            tensorrt += 1
        elif name.startswith("_run_on_gpu"):
            pytorch += 1
            ops += [
                str(node.target) for node in child.graph.nodes
                if node.op == "call_function" and "getitem" not in str(node.target)
            ]
    return Partition(tensorrt, pytorch, tuple(sorted(set(ops))))


def _msda_is_convertible(node: torch.fx.Node, settings=None) -> bool:
    """The plugin's formats: value float32/float16/bfloat16; locations and weights the same
    dtype or float32. Other calls stay in PyTorch."""
    value, locations = (node.args[index].meta["val"] for index in (0, 3))
    weights = node.args[4].meta["val"]
    return (
        value.dtype in _PLUGIN_VALUE_DTYPES
        and locations.dtype in (value.dtype, torch.float32)
        and weights.dtype == locations.dtype
    )


def _convert_msda(ctx, target, args, kwargs, name):
    """Torch-TensorRT converter: one ``CodetrMSDA`` plugin layer for one msda call."""
    import tensorrt as trt
    from torch_tensorrt.dynamo.conversion.converter_utils import (
        cast_trt_tensor,
        get_trt_tensor,
        set_layer_name,
    )

    im2col_step = args[5] if len(args) > 5 else kwargs.get("im2col_step", DEFAULT_IM2COL_STEP)
    creator = trt.get_plugin_registry().get_creator(CODETR_OP_TYPE, CODETR_PLUGIN_VERSION, CODETR_PLUGIN_NAMESPACE)
    if creator is None:
        raise RuntimeError("the codetr MSDA plugin is not registered; call register_plugin_library first")
    fields = trt.PluginFieldCollection(
        [trt.PluginField("im2col_step", np.array([im2col_step], dtype=np.int32), trt.PluginFieldType.INT32)]
    )
    plugin = creator.create_plugin(name, fields, trt.TensorRTPhase.BUILD)
    if plugin is None:
        raise RuntimeError(f"{name}: the CodetrMSDA plugin refused im2col_step={im2col_step} (see the TensorRT log)")
    inputs = []
    for index, argument in enumerate(args[:5]):
        tensor = get_trt_tensor(ctx, argument, f"{name}_input{index}")
        # Torch-TensorRT may narrow int64 constants to int32; the plugin reads int64 indices.
        if index in (1, 2) and tensor.dtype != trt.int64:
            tensor = cast_trt_tensor(ctx, tensor, trt.int64, f"{name}_input{index}_int64", target)
        inputs.append(tensor)
    if not hasattr(ctx.net, "add_plugin_v3"):
        raise RuntimeError(
            f"{name}: this TensorRT Python API has no INetworkDefinition.add_plugin_v3 "
            "(TensorRT-RTX); full conversion needs TensorRT 10.x/11.x"
        )
    layer = ctx.net.add_plugin_v3(inputs, [], plugin)
    set_layer_name(layer, target, name)
    return layer.get_output(0)


_converter_registered = False


def register_msda_converter() -> None:
    """Register :func:`_convert_msda` for ``torch.ops.codetr.msda`` with Torch-TensorRT (once)."""
    global _converter_registered
    if _converter_registered:
        return
    from torch_tensorrt.dynamo.conversion import dynamo_tensorrt_converter

    dynamo_tensorrt_converter(
        MSDA_OP, capability_validator=_msda_is_convertible, supports_dynamic_shapes=True
    )(_convert_msda)
    _converter_registered = True


def compile_program(
    program: torch.export.ExportedProgram,
    example_inputs: Sequence[torch.Tensor],
    mode: CompileMode,
    *,
    optimization_level: int = 3,
    min_block_size: int = 1,
    plugin_library: Path | None = None,
    allow_tf32: bool = False,
    dryrun: bool = False,
) -> torch.fx.GraphModule:
    """Compile ``program`` with Torch-TensorRT in ``mode`` (see the module docstring).

    ``example_inputs`` are tensors (or ``torch_tensorrt.Input`` ranges) for the program's
    positional inputs. The network keeps the program's dtypes (explicit typing). FULL mode
    registers the plugin library (default: the package's copy) and the converter, and fails
    loudly instead of silently falling back to PyTorch when a conversion fails. ``dryrun``
    partitions without building engines (see :func:`partition_of`). ``allow_tf32`` False
    (default) keeps float32 layers IEEE float32 (Torch-TensorRT's ``disable_tf32``).
    """
    import torch_tensorrt

    mode = CompileMode(mode)
    options = {
        "arg_inputs": list(example_inputs),
        "min_block_size": min_block_size,
        "optimization_level": optimization_level,
        "dryrun": dryrun,
        "disable_tf32": not allow_tf32,
    }
    if mode is CompileMode.HYBRID:
        options["torch_executed_ops"] = {MSDA_OP}
    else:
        import tensorrt

        register_plugin_library(tensorrt, plugin_library)
        register_msda_converter()
        options["pass_through_build_failures"] = True
    # Torch-TensorRT before 2.12 builds weakly typed networks unless asked; later versions
    # are explicitly typed always and dropped the flag.
    if "use_explicit_typing" in inspect.signature(torch_tensorrt.dynamo.compile).parameters:
        options["use_explicit_typing"] = True
    return torch_tensorrt.dynamo.compile(program, **options)


def save_compiled(
    module: torch.fx.GraphModule, path: str | Path, example_inputs: Sequence[torch.Tensor]
) -> Path:
    """Save a compiled module as an ExportedProgram file (atomically)."""
    import torch_tensorrt

    path = Path(path)
    with atomic_path(path) as temporary:
        torch_tensorrt.save(module, str(temporary), output_format="exported_program", arg_inputs=list(example_inputs))
    return path
