"""GPU check: the TensorRT plugin's enqueue gives the same output as torch.ops.codetr.msda.

Needs a CUDA GPU, torch with codetr._C built for CUDA, nvcc, g++ and TensorRT *headers* (no
TensorRT runtime): it builds libcodetr_msda_trt.so from this checkout, then drives the plugin
through csrc/tensorrt/harness (setLoggerFinder, getCreators, createPlugin, onShapeChange,
enqueue) on torch-allocated device buffers and a side CUDA stream, for every supported dtype
pair and a few shapes (including Co-DINO's), and compares with the torch op (same kernels:
expected bit-identical) and with the float64 PyTorch reference.

    TensorRT_INCLUDE_DIR=third_party/TensorRT/include python scripts/check_plugin_enqueue.py

Prints one line per case and exits non-zero if any case fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # codetr_build is not an installed package
sys.path.insert(0, str(ROOT / "tests"))  # the plugin harness is test code of the checkout

from codetr.ops import msda_reference  # noqa: E402
from plugin_harness import (  # noqa: E402
    PluginFieldType,
    PluginHarness,
    TrtDataType,
    compile_harness,
)
from codetr_build.cuda_toolkit import find_cuda_home  # noqa: E402
from codetr_build.tensorrt_plugin import (  # noqa: E402
    build_tensorrt_plugin,
    find_tensorrt_include_dir,
)

TRT_TYPES = {torch.float32: TrtDataType.FLOAT, torch.float16: TrtDataType.HALF, torch.bfloat16: TrtDataType.BF16}
DTYPE_PAIRS = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
]
# Relative L2 error against the float64 reference allowed per value dtype.
REFERENCE_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
# (batch, queries, heads, channels, level shapes, points)
CASES = [
    (2, 5, 2, 4, [(4, 6), (2, 3)], 3),
    (1, 37, 3, 16, [(7, 5), (3, 9), (1, 1)], 2),
    (2, 900, 8, 32, [(96, 144), (48, 72), (24, 36), (12, 18), (6, 9)], 4),  # Co-DINO 5-scale, 768x1152
    (1, 0, 8, 32, [(8, 8)], 4),  # no queries: nothing to write
]


def make_inputs(batch, queries, heads, channels, shapes, points, seed=0):
    generator = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
    num_values = int(spatial_shapes.prod(1).sum())
    value = torch.randn(batch, num_values, heads, channels, generator=generator, dtype=torch.float64)
    locations = -0.1 + 1.2 * torch.rand(batch, queries, heads, levels, points, 2, generator=generator, dtype=torch.float64)
    weights = torch.randn(batch, queries, heads, levels * points, generator=generator, dtype=torch.float64)
    weights = weights.softmax(-1).reshape(batch, queries, heads, levels, points)
    return value, spatial_shapes, level_start_index, locations, weights


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double().cpu(), expected.double().cpu()
    if expected.numel() == 0:
        return 0.0
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def run_case(harness: PluginHarness, plugin: int, case, value_dtype, location_dtype, stream) -> bool:
    batch, queries, heads, channels, shapes, points = case
    value64, spatial_shapes, level_start_index, locations64, weights64 = make_inputs(*case)
    device = torch.device("cuda")
    value = value64.to(device, value_dtype)
    locations = locations64.to(device, location_dtype)
    weights = weights64.to(device, location_dtype)
    spatial_shapes, level_start_index = spatial_shapes.to(device), level_start_index.to(device)
    # Poison the output so a plugin that writes nothing cannot pass.
    output = torch.full((batch, queries, heads * channels), float("nan"), device=device, dtype=value_dtype)

    tensors = [value, spatial_shapes, level_start_index, locations, weights, output]
    types = [TRT_TYPES[value_dtype], TrtDataType.INT64, TrtDataType.INT64,
             TRT_TYPES[location_dtype], TRT_TYPES[location_dtype], TRT_TYPES[value_dtype]]
    stream.wait_stream(torch.cuda.current_stream())
    status = harness.enqueue(
        plugin, types, [tuple(t.shape) for t in tensors], [t.data_ptr() for t in tensors], stream.cuda_stream
    )
    stream.synchronize()
    if status != 0:
        print(f"FAIL enqueue status {status}: {harness.messages()}")
        return False

    expected = torch.ops.codetr.msda(value, spatial_shapes, level_start_index, locations, weights, 64)
    # The float64 oracle sees exactly the rounded inputs the kernels saw.
    reference = msda_reference(value.double().cpu(), spatial_shapes.cpu(), locations.double().cpu(), weights.double().cpu())
    bitwise = torch.equal(output, expected)
    error_vs_op = relative_error(output, expected)
    error_vs_reference = relative_error(output, reference)
    ok = (
        not output.isnan().any().item()
        and error_vs_op <= 1e-6
        and error_vs_reference <= REFERENCE_TOLERANCE[value_dtype]
    )
    name = f"B={batch} Q={queries} M={heads} D={channels} L={len(shapes)} P={points}"
    print(
        f"{'ok  ' if ok else 'FAIL'} {str(value_dtype)[6:]:>8}/{str(location_dtype)[6:]:<8} {name:<34} "
        f"bitwise={bitwise!s:<5} rel_err_vs_op={error_vs_op:.2e} rel_err_vs_float64={error_vs_reference:.2e}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "trt_plugin_check")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("check_plugin_enqueue: needs a CUDA GPU")
    include_dir = find_tensorrt_include_dir()
    if include_dir is None and (ROOT / "third_party" / "TensorRT" / "include").is_dir():
        os.environ["TensorRT_INCLUDE_DIR"] = str(ROOT / "third_party" / "TensorRT" / "include")
        include_dir = find_tensorrt_include_dir()
    cuda_home = find_cuda_home()
    if include_dir is None or cuda_home is None:
        sys.exit("check_plugin_enqueue: needs TensorRT headers (TensorRT_INCLUDE_DIR) and a CUDA toolkit")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"

    library = build_tensorrt_plugin(args.build_dir, args.build_dir / "libcodetr_msda_trt.so")
    harness = PluginHarness(compile_harness(include_dir, args.build_dir, cuda_home / "include"), library)
    plugin = harness.create([("im2col_step", PluginFieldType.INT32, 64)])
    # Run the plugin as TensorRT runs a deserialized engine: recreated from its serialized fields.
    runtime_plugin = harness.roundtrip(plugin)
    print(f"plugin {harness.identity(runtime_plugin)} from {library}; GPU {torch.cuda.get_device_name()}")

    stream = torch.cuda.Stream()
    results = [
        run_case(harness, runtime_plugin, case, value_dtype, location_dtype, stream)
        for case in CASES
        for value_dtype, location_dtype in DTYPE_PAIRS
    ]

    # A shape mismatch must be refused before any kernel runs.
    shapes = [(2, 30, 2, 4), (2, 2), (2,), (2, 5, 3, 2, 3, 2), (2, 5, 2, 2, 3), (2, 5, 8)]
    types = [TrtDataType.FLOAT, TrtDataType.INT64, TrtDataType.INT64, TrtDataType.FLOAT, TrtDataType.FLOAT, TrtDataType.FLOAT]
    refused = harness.enqueue(runtime_plugin, types, shapes, [0] * 6, stream.cuda_stream) != 0
    print(f"{'ok  ' if refused else 'FAIL'} mismatched heads refused: {harness.messages().strip()}")
    results.append(refused)

    for handle in (plugin, runtime_plugin):
        harness.destroy(handle)
    print(f"{sum(results)}/{len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
