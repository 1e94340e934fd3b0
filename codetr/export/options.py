"""What an export produces and how: one validated, immutable description of an export run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from codetr.contract.artifacts import Artifact, CompileMode, MsdaMode
from codetr.models import DTYPES

@dataclasses.dataclass(frozen=True)
class DimRange:
    """Inclusive range of a dynamic image dimension, in pixels."""

    min: int
    max: int

    @classmethod
    def parse(cls, text: str, name: str) -> DimRange:
        """Parse ``"MIN:MAX"``; ``name`` is the option named in errors."""
        parts = text.split(":")
        try:
            low, high = (int(part) for part in parts)
        except ValueError:
            raise ValueError(f"{name} must be MIN:MAX in pixels (e.g. 512:1344), got {text!r}") from None
        return cls(low, high)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """Everything that decides what an export writes.

    ``height``/``width`` are the traced input size: the only size of a static export and the
    optimisation ("opt") size of a dynamic one, whose extent is ``dynamic_height``/``dynamic_width``.
    ``torch_tensorrt`` (None: off) also compiles the ExportedProgram with Torch-TensorRT in that mode.
    """

    dtype: torch.dtype = torch.float16
    height: int = 768
    width: int = 1152
    dynamic_height: DimRange | None = None
    dynamic_width: DimRange | None = None
    batch_size: int = 1
    artifacts: tuple[Artifact, ...] = (Artifact.EXPORTED_PROGRAM, Artifact.ONNX, Artifact.ENGINE)
    msda: MsdaMode = MsdaMode.PLUGIN
    optimization_level: int = 3
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    opset: int = 18
    plugin_library: Path | None = None
    timing_cache: Path | None = None
    torch_tensorrt: CompileMode | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype}")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level must be in 0..5, got {self.optimization_level}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.artifacts:
            raise ValueError("artifacts must name at least one of " + ", ".join(a.value for a in Artifact))
        if Artifact.ENGINE in self.artifacts and Artifact.ONNX not in self.artifacts:
            raise ValueError("artifacts: the engine is built from the ONNX model; add 'onnx'")
        if self.msda is MsdaMode.NVIDIA and self.dtype == torch.bfloat16:
            raise ValueError(
                "msda 'nvidia': MultiscaleDeformableAttnPlugin_TRT supports float32 and float16 only, "
                "not bfloat16"
            )
        if self.torch_tensorrt is not None:
            if not isinstance(self.torch_tensorrt, CompileMode):
                raise ValueError(
                    "torch_tensorrt must be None or a CompileMode ("
                    + ", ".join(mode.value for mode in CompileMode) + f"), got {self.torch_tensorrt!r}"
                )
            if self.msda is MsdaMode.DECOMPOSED:
                raise ValueError(
                    f"torch_tensorrt {self.torch_tensorrt.value}: compiles the torch.ops.codetr.msda op "
                    "(hybrid keeps it in PyTorch, full maps it to the plugin); msda 'decomposed' has none, "
                    "use msda 'plugin'"
                )
        if self.opset < 16:
            raise ValueError(f"opset must be >= 16 (GridSample), got {self.opset}")
        for name, size, extent in (
            ("height", self.height, self.dynamic_height),
            ("width", self.width, self.dynamic_width),
        ):
            if size < 1:
                raise ValueError(f"{name} must be positive, got {size}")
            if extent is not None and not 1 <= extent.min <= size <= extent.max:
                raise ValueError(
                    f"dynamic_{name} {extent.min}:{extent.max} must satisfy 1 <= MIN <= {name} "
                    f"({size}) <= MAX"
                )
        if self.plugin_library is not None and not self.plugin_library.is_file():
            raise FileNotFoundError(f"plugin_library: no such file {self.plugin_library}")

    @property
    def is_dynamic(self) -> bool:
        return self.dynamic_height is not None or self.dynamic_width is not None

    def check_sizes(self, size_divisor: int, largest_stride: int) -> None:
        """Raise ValueError unless the model can take every image size this export accepts.

        Sizes must be multiples of ``size_divisor`` (the host pre-processing pads to it and the
        feature pyramid halves the input repeatedly). The smallest size of a dynamic range must
        be at least twice the coarsest feature stride: a feature map 1 pixel tall or wide makes
        torch.export specialise that dimension to a constant.
        """
        for name, value in (
            ("height", self.height),
            ("width", self.width),
            *self._range_bounds("dynamic_height", self.dynamic_height),
            *self._range_bounds("dynamic_width", self.dynamic_width),
        ):
            if value % size_divisor:
                raise ValueError(
                    f"{name} must be a multiple of {size_divisor} (the model's size divisor), got {value}; "
                    f"nearest valid: {max(size_divisor, value // size_divisor * size_divisor)} or "
                    f"{-(-value // size_divisor) * size_divisor}"
                )
        smallest = 2 * largest_stride
        for name, extent in (("dynamic_height", self.dynamic_height), ("dynamic_width", self.dynamic_width)):
            if extent is not None and extent.min < smallest:
                raise ValueError(
                    f"{name} MIN must be at least {smallest} (twice the model's coarsest feature stride "
                    f"{largest_stride}), got {extent.min}"
                )

    @staticmethod
    def _range_bounds(name: str, extent: DimRange | None) -> list[tuple[str, int]]:
        if extent is None:
            return []
        return [(f"{name} MIN", extent.min), (f"{name} MAX", extent.max)]

    def to_json(self) -> dict[str, object]:
        """The options as plain JSON values, for the metadata file."""
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "height": self.height,
            "width": self.width,
            "dynamic_height": dataclasses.asdict(self.dynamic_height) if self.dynamic_height else None,
            "dynamic_width": dataclasses.asdict(self.dynamic_width) if self.dynamic_width else None,
            "batch_size": self.batch_size,
            "artifacts": [artifact.value for artifact in self.artifacts],
            "msda": self.msda.value,
            "optimization_level": self.optimization_level,
            "device": str(self.device),
            "opset": self.opset,
            "plugin_library": str(self.plugin_library) if self.plugin_library else None,
            "torch_tensorrt": self.torch_tensorrt.value if self.torch_tensorrt else None,
        }
