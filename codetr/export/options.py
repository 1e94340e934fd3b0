"""What an export produces and how: one validated, immutable description of an export run.

Everything that can be checked without the model is checked when :class:`ExportOptions` is built,
so a mistake is reported before any file is written. Checks that need the model's configuration
(input sizes) are in :func:`codetr.export.program.check_input_sizes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch

from codetr.contract.artifacts import Artifact, CompileMode, MsdaMode
from codetr.contract.plugin import ONNX_IR_VERSION
from codetr.contract.postprocess import PostprocessMode
from codetr.models import DTYPES

BUILT_ARTIFACTS = (Artifact.EXPORTED_PROGRAM, Artifact.ONNX, Artifact.ENGINE, Artifact.AOTI)
"""Artifacts ``--artifacts`` can name; the Torch-TensorRT program has its own option
(``torch_tensorrt``)."""
DEFAULT_ARTIFACTS = (Artifact.EXPORTED_PROGRAM, Artifact.ONNX, Artifact.ENGINE)
"""What an export builds unless told otherwise: the AOTInductor package only on request (its C++
compilation takes minutes)."""

MIN_OPSET = 18
"""torch.onnx's exporter writes opset 18 at least: a lower requested opset would silently come out as 18."""
MAX_OPSET = max(opset for _, ir_version, opset, *_ in onnx.helper.VERSION_TABLE if ir_version <= ONNX_IR_VERSION)
"""The newest opset of the ONNX IR version codetr writes (IR 10: opset 22, onnx.helper.VERSION_TABLE)."""
MIN_OPSET_FOR_DTYPE = {torch.float32: MIN_OPSET, torch.float16: MIN_OPSET, torch.bfloat16: 22}
"""ONNX's Conv, Gemm-like and normalisation ops accept tensor(bfloat16) from opset 22 on (ONNX
Changelog, opset 22); at 18 ``onnx.checker`` refuses ``Conv`` in bfloat16."""


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
    ``opset`` None: the lowest opset ``dtype`` can be written in (:data:`MIN_OPSET_FOR_DTYPE`).
    ``allow_tf32``: let float32 layers use TF32 on the GPU (tracing and engine); off, float32 is
    IEEE float32. ``embed_plugin``: serialize the MSDA plugin library into the engine.
    ``torch_tensorrt`` (None: off) also compiles the ExportedProgram with Torch-TensorRT in that
    mode. ``skipped``: artifacts deliberately not built, with the reason (recorded in metadata).
    ``postprocess``: post-processing traced into the graph (:mod:`codetr.contract.postprocess`),
    keeping scores > ``score_threshold``. ``msda_choice``: why ``msda`` was chosen (``--msda auto``).
    ``aoti_configs``: ``torch._inductor.config`` settings for the AOTInductor compile only (e.g.
    ``{"freezing": True}``); keys must be Inductor's, values of the setting's type.
    """

    dtype: torch.dtype = torch.float16
    height: int = 768
    width: int = 1152
    dynamic_height: DimRange | None = None
    dynamic_width: DimRange | None = None
    batch_size: int = 1
    artifacts: tuple[Artifact, ...] = DEFAULT_ARTIFACTS
    msda: MsdaMode = MsdaMode.PLUGIN
    optimization_level: int = 3
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    opset: int | None = None
    allow_tf32: bool = False
    plugin_library: Path | None = None
    embed_plugin: bool = False
    timing_cache: Path | None = None
    torch_tensorrt: CompileMode | None = None
    skipped: Mapping[Artifact, str] = dataclasses.field(default_factory=dict)
    postprocess: PostprocessMode = PostprocessMode.NONE
    score_threshold: float = 0.0
    msda_choice: str = "requested"
    aoti_configs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype}")
        if not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level must be in 0..5, got {self.optimization_level}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.artifacts:
            raise ValueError("artifacts must name at least one of " + ", ".join(a.value for a in BUILT_ARTIFACTS))
        not_built = [artifact.value for artifact in self.artifacts if artifact not in BUILT_ARTIFACTS]
        if not_built:
            raise ValueError(
                f"artifacts: {', '.join(not_built)} cannot be requested here; choose from "
                + ", ".join(a.value for a in BUILT_ARTIFACTS) + " (a Torch-TensorRT program: torch_tensorrt)"
            )
        if Artifact.ENGINE in self.artifacts and Artifact.ONNX not in self.artifacts:
            raise ValueError("artifacts: the engine is built from the ONNX model; add 'onnx'")
        if self.embed_plugin and (Artifact.ENGINE not in self.artifacts or self.msda is not MsdaMode.PLUGIN):
            raise ValueError("embed_plugin: only an engine with msda 'plugin' holds our plugin; add 'engine' or drop it")
        if self.msda is MsdaMode.NVIDIA and Artifact.ONNX not in self.artifacts:
            raise ValueError(
                "msda 'nvidia': NVIDIA's MultiscaleDeformableAttnPlugin_TRT is a node of the ONNX model (and of the "
                "engine built from it), and no ONNX model is requested; the PyTorch programs call codetr's "
                "ops as with 'plugin'. Add 'onnx' to the artifacts, or leave msda at its default"
            )
        if self.msda is MsdaMode.NVIDIA and self.dtype == torch.bfloat16:
            raise ValueError(
                "msda 'nvidia': MultiscaleDeformableAttnPlugin_TRT supports float32 and float16 only, "
                "not bfloat16"
            )
        self._check_opset()
        self._check_torch_tensorrt()
        self._check_aoti_configs()
        _check_postprocess(self)
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
        if self.timing_cache is not None and self.timing_cache.is_dir():  # rewritten after the engine build
            raise IsADirectoryError(f"timing_cache {self.timing_cache} is a folder; give the cache file's path")

    def _check_opset(self) -> None:
        if self.opset is None:
            return
        needed = MIN_OPSET_FOR_DTYPE[self.dtype]
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ValueError(
                f"opset {self.opset} cannot be honoured: torch.onnx writes opset {MIN_OPSET} at least, and "
                f"ONNX IR version {ONNX_IR_VERSION} (what TensorRT's parser reads) goes up to opset {MAX_OPSET}; "
                f"choose --opset {needed}..{MAX_OPSET}"
            )
        if self.opset < needed:
            raise ValueError(
                f"opset {self.opset}: {_dtype_name(self.dtype)} ONNX needs opset >= {needed} (ONNX's Conv "
                f"accepts bfloat16 from opset 22); use --opset {needed} or leave --opset unset"
            )

    def _check_torch_tensorrt(self) -> None:
        if self.torch_tensorrt is None:
            return
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

    def _check_aoti_configs(self) -> None:
        if not self.aoti_configs:
            return
        if Artifact.AOTI not in self.artifacts:
            raise ValueError("aoti_configs: only the AOTInductor package is compiled by Inductor; add 'aoti' to the artifacts")
        import torch._inductor.config

        defaults = torch._inductor.config.get_config_copy()
        for key, value in self.aoti_configs.items():
            if key not in defaults:
                raise ValueError(f"aoti_configs (--aoti-config): {key!r} is not a setting of torch._inductor.config (torch {torch.__version__})")
            expected = type(defaults[key])
            if defaults[key] is not None and not isinstance(value, expected):
                raise ValueError(
                    f"aoti_configs (--aoti-config): {key} takes {expected.__name__} values (default {defaults[key]!r}), got {value!r}"
                )

    @property
    def onnx_opset(self) -> int:
        """The opset the ONNX file is written in: ``opset``, else the lowest ``dtype`` allows."""
        return self.opset if self.opset is not None else MIN_OPSET_FOR_DTYPE[self.dtype]

    @property
    def is_dynamic(self) -> bool:
        return self.dynamic_height is not None or self.dynamic_width is not None

    @property
    def height_range(self) -> DimRange:
        """Heights the export accepts (one value for a static height)."""
        return self.dynamic_height or DimRange(self.height, self.height)

    @property
    def width_range(self) -> DimRange:
        """Widths the export accepts (one value for a static width)."""
        return self.dynamic_width or DimRange(self.width, self.width)

    def to_json(self) -> dict[str, object]:
        """The options as plain JSON values, for the metadata file."""
        return {
            "dtype": _dtype_name(self.dtype),
            "height": self.height,
            "width": self.width,
            "dynamic_height": dataclasses.asdict(self.dynamic_height) if self.dynamic_height else None,
            "dynamic_width": dataclasses.asdict(self.dynamic_width) if self.dynamic_width else None,
            "batch_size": self.batch_size,
            "artifacts": [artifact.value for artifact in self.artifacts],
            "msda": self.msda.value,
            "msda_choice": self.msda_choice,
            "optimization_level": self.optimization_level,
            "device": str(self.device),
            "opset": self.opset,
            "allow_tf32": self.allow_tf32,
            "plugin_library": str(self.plugin_library) if self.plugin_library else None,
            "embed_plugin": self.embed_plugin,
            "torch_tensorrt": self.torch_tensorrt.value if self.torch_tensorrt else None,
            "postprocess": self.postprocess.value,
            "score_threshold": self.score_threshold,
            "aoti_configs": dict(self.aoti_configs),
        }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_postprocess(options: ExportOptions) -> None:
    """ValueError for in-graph post-processing the export cannot produce: a data-dependent
    detection count needs batch size 1 (one image's detections per run), and a Torch-TensorRT
    compile of it has never been verified."""
    mode = options.postprocess
    if not isinstance(mode, PostprocessMode):
        raise ValueError(f"postprocess must be one of {', '.join(m.value for m in PostprocessMode)}, got {mode!r}")
    if not 0.0 <= options.score_threshold < 1.0:
        raise ValueError(f"score_threshold must be in [0, 1) (a sigmoid score), got {options.score_threshold}")
    if not mode.is_data_dependent:
        return
    if options.batch_size != 1:
        raise ValueError(
            f"postprocess {mode.value}: the number of detections is data-dependent, so the export takes one "
            f"image per run; use --batch-size 1 (got {options.batch_size}) or --postprocess none"
        )
    if options.torch_tensorrt is not None:
        raise ValueError(f"postprocess {mode.value}: not available with torch_tensorrt; use --postprocess none")
