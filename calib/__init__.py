"""calib: INT8 calibration and precision tuning for NVIDIA TensorRT (and ONNX Runtime)."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import CalibError  # noqa: E402

__all__ = ["__version__", "CalibError"]
