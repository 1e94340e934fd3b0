"""MSDA launches for Nsight Compute: each case's forward runs twice, float16, at the shapes of
``bench_msda.py`` (Co-DINO 768x1152), so that ncu can profile the second, warm launch.

    ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \\
        --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \\
        --launch-skip 1 --launch-count 1 -k regex:forward_fast python benchmarks/ncu_msda.py enc_b1

Cases: enc_b1, enc_b1_local, dec_b1 (``torch.ops.codetr.msda``; the decoder's launch is the
general kernel, ``-k regex:forward_kernel``) and fused (``torch.ops.codetr.msda_from_offsets``
on ``bench_msda_from_offsets.py``'s batch-1 inputs). Needs CUDA and a built codetr.
"""

from __future__ import annotations

import argparse

import torch

from bench_msda import CASES, make_inputs
from bench_msda_from_offsets import make_inputs as offsets_inputs
from codetr.ops import msda, msda_from_offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=[*CASES, "fused"])
    case = parser.parse_args().case
    device = torch.device("cuda")
    if case == "fused":
        inputs = offsets_inputs(1, torch.float16, device)
        for _ in range(2):
            msda_from_offsets(**inputs)
    else:
        inputs = make_inputs(CASES[case], device, seed=0)
        value, locations, weights = inputs.value.half(), inputs.locations.half(), inputs.weights.half()
        for _ in range(2):
            msda(value, inputs.spatial_shapes, inputs.level_start_index, locations, weights)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
