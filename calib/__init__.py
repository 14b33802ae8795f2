"""calib: INT8 calibration and precision tuning for NVIDIA TensorRT (and ONNX Runtime).

``calib.calibrate(model, data, ...)`` is the pipeline behind the ``calibrate`` command (see
:func:`calib.calibrate.calibrate`); the layers it uses are importable on their own
(``calib.datasets``, ``calib.collect``, ``calib.algorithms``, ``calib.cache``, ``calib.qdq``,
``calib.harness``, ``calib.backends``). TensorRT is imported only when asked for.
"""
from __future__ import annotations

from .version import __version__

from .errors import CalibError  # noqa: E402
from .calibrate import CalibrationResult, calibrate  # noqa: E402  (the function shadows the module name)

__all__ = ["__version__", "CalibError", "CalibrationResult", "calibrate"]
