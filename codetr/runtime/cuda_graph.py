"""Capturing a runtime's call as a CUDA graph and replaying it while the input shapes stay the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Run = Callable[[list[torch.Tensor], torch.cuda.Stream], Sequence[torch.Tensor]]
"""``run(inputs, stream)``: enqueue the model on ``stream`` (the current stream inside it) and
return its outputs."""


class CudaGraphReplay:
    """One captured graph, for the last input shapes seen (a shape change captures again: the
    runtimes reconfigure for new shapes, so a graph captured for earlier ones must not be replayed).

    Each capture first runs ``run`` once outside the capture, so that work done on a first call
    (TensorRT's shape-dependent setup, AOTInductor's lazy initialisation) stays out of the graph.
    Outputs are cloned: the next replay overwrites the graph's own buffers.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._captured: tuple[tuple, torch.cuda.CUDAGraph, list[torch.Tensor], list[torch.Tensor]] | None = None

    def __call__(self, run: Run, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        shapes = tuple(tuple(tensor.shape) for tensor in inputs)
        if self._captured is None or self._captured[0] != shapes:
            self._captured = None
            static_inputs = [tensor.clone() for tensor in inputs]
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                run(static_inputs, stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    static_outputs = list(run(static_inputs, stream))
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._captured = (shapes, graph, static_inputs, static_outputs)
        _, graph, static_inputs, static_outputs = self._captured
        for static, tensor in zip(static_inputs, inputs):
            static.copy_(tensor)
        graph.replay()
        return [output.clone() for output in static_outputs]
