"""INT8 post-training quantization (NVIDIA ModelOpt calibration, Q/DQ modules for export)."""

from codetr.quantization.calibration import DEFAULT_CALIBRATION_IMAGES, CalibrationSet, calibration_set
from codetr.quantization.int8 import (
    AMAX_FILE_NAME,
    DEFAULT_EXCLUDE,
    ModelOptUnavailableError,
    QuantizationReport,
    QuantizationResult,
    quantize_int8,
    write_amax,
)

__all__ = [
    "AMAX_FILE_NAME", "DEFAULT_CALIBRATION_IMAGES", "DEFAULT_EXCLUDE", "CalibrationSet", "ModelOptUnavailableError",
    "QuantizationReport", "QuantizationResult", "calibration_set", "quantize_int8", "write_amax",
]
