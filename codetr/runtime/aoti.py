"""Running an AOTInductor package (``model_aoti.pt2``, written by ``codetr export --artifacts aoti``).

The package is loaded with ``torch._inductor.aoti_load_package``; it calls
``torch.ops.codetr.msda`` through Inductor's proxy executor, so only codetr's op library must be
registered (``import codetr.ops``), not the exporter. A package runs on the device type it was
compiled for (read from the package before loading, so a CUDA package on a machine without a GPU
is reported as such) and takes exactly the input shapes it was exported for (checked against
``metadata.json`` when it lies beside the package).

With ``cuda_graph=True`` the first call at a given input shape runs the package once (warm-up:
lazy kernel loading and allocator growth happen outside capture), then captures one run into a
``torch.cuda.CUDAGraph`` reading static input buffers; later calls copy their inputs into those
buffers and replay the graph, which removes the per-kernel host launch cost. A new input shape
(dynamic-shape packages) recaptures; only the last graph is kept.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import torch
import torch._inductor

import codetr.ops  # noqa: F401  registers torch.ops.codetr.msda, which the package calls
from codetr.contract.metadata import ExportMetadata
from codetr.models import Detections
from codetr.runtime.base import Runtime, check_inputs, resolve_device
from codetr.runtime.cuda_graph import CudaGraphReplay

logger = logging.getLogger(__name__)

DEVICE_KEY = "AOTI_DEVICE_KEY"
"""Key of the compiled-for device type in the package's ``*_metadata.json`` (written by Inductor)."""


def package_device_type(path: Path) -> str | None:
    """The device type ("cpu", "cuda") an AOTInductor package at ``path`` was compiled for, read
    from the archive's Inductor metadata; None when the archive does not say. Raises ValueError
    naming ``path`` when it is not a zip archive (truncated or damaged)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if "/aotinductor/" in f"/{name}" and name.endswith("_metadata.json"):
                    device_type = json.loads(archive.read(name)).get(DEVICE_KEY)
                    if device_type:
                        return str(device_type)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: not an AOTInductor package (not a zip archive); was it fully written?") from error
    return None


class AOTIRuntime(Runtime):
    """An AOTInductor package, loaded and ready to run.

    ``path``: the package (``.pt2`` with an ``aotinductor`` folder). ``metadata``: the export's
    metadata (inputs are checked against it). ``device``: where to run; a package runs only on
    the device type it was compiled for, so this only picks the GPU of a CUDA package (default:
    the current one). ``cuda_graph``: replay a captured CUDA graph (CUDA packages only; see the
    module docstring). Raises FileNotFoundError for a missing file and ValueError for a file
    that is not a package, a device of another type than the package's, or ``cuda_graph`` on CPU.
    Outputs stay on the package's device: boxes float32, scores float32, labels int64.
    """

    def __init__(
        self,
        path: str | Path,
        metadata: ExportMetadata | None = None,
        *,
        device: str | torch.device | None = None,
        cuda_graph: bool = False,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no AOTInductor package at {path}")
        compiled_for = package_device_type(path)
        if compiled_for is None:
            raise ValueError(f"{path}: not an AOTInductor package (no aotinductor metadata inside)")
        self.metadata = metadata
        self.device = self._device(path, compiled_for, device)
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA package; {path} runs on {self.device}")
        self.cuda_graph = cuda_graph
        self._warn_on_torch_mismatch(path)
        # Single-threaded runs skip the package's own stream/thread bookkeeping, which must not
        # happen inside a CUDA-graph capture (torch._inductor.aoti_load_package's docstring).
        self.model = torch._inductor.aoti_load_package(
            str(path),
            run_single_threaded=cuda_graph,
            device_index=self.device.index if self.device.index is not None else -1,
        )
        # (input shapes, graph, static inputs, static outputs) of the last capture.
        self._replay = CudaGraphReplay(self.device)

    @staticmethod
    def _device(path: Path, compiled_for: str, requested: str | torch.device | None) -> torch.device:
        device = resolve_device(requested if requested is not None else compiled_for)
        if device.type != compiled_for:
            raise ValueError(
                f"{path} was compiled for {compiled_for} and runs only there, not on {device}; "
                f"re-export with --device {device.type} --artifacts aoti to run on {device.type}"
            )
        return device

    def _warn_on_torch_mismatch(self, path: Path) -> None:
        compiled_with = (self.metadata.versions.get("torch") if self.metadata else None) or ""
        if compiled_with and compiled_with.split("+")[0] != torch.__version__.split("+")[0]:
            logger.warning(
                "%s was compiled with torch %s but torch %s is running; if loading or running fails, "
                "re-export the package with this torch", path, compiled_with, torch.__version__,
            )

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> Detections:
        check_inputs(images, image_sizes, self.metadata)
        inputs = [
            images.to(self.device, torch.float32).contiguous(),
            image_sizes.to(self.device, torch.int64).contiguous(),
        ]
        with torch.no_grad():
            if self.cuda_graph:
                with torch.cuda.device(self.device):
                    boxes, scores, labels = self._replay(lambda static_inputs, stream: self.model(*static_inputs), inputs)
            else:
                boxes, scores, labels = self.model(*inputs)
        return Detections(boxes.float(), scores.float(), labels.long())
