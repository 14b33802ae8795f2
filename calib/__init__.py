"""calib: INT8 calibration and precision tuning for NVIDIA TensorRT (and ONNX Runtime).

``calib.calibrate(model, data, ...)`` is the pipeline behind the ``calibrate`` command, with its
options in a :class:`CalibrationConfig` (module :mod:`calib.pipeline`); ``calib.search(model,
data, budget=...)`` the mixed-precision search behind ``calib search`` (module :mod:`calib.mixed`,
the search itself in :mod:`calib.tuning`); the layers it uses are
importable on their own (``calib.datasets``, ``calib.collect``, ``calib.algorithms``,
``calib.cache``, ``calib.qdq``, ``calib.harness``, ``calib.backends``). TensorRT is imported only
when asked for.
"""
from __future__ import annotations

from .errors import CalibError
from .mixed import SearchResult, search
from .pipeline import CalibrationConfig, CalibrationResult, calibrate
from .version import __version__

__all__ = ["__version__", "CalibError", "CalibrationConfig", "CalibrationResult", "calibrate", "SearchResult",
           "search"]
