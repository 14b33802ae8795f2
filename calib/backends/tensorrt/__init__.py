"""TensorRT backend (8.6, 10.x, 11.x): calibrators, engine builder, engine runner.

Importing this package never imports ``tensorrt``; :func:`import_tensorrt` does, and raises
:class:`calib.errors.TensorRTUnavailableError` with one line saying what to install when it
cannot. Version facts live in :mod:`.versions` (the one place), device memory in :mod:`.cuda`
(cuda-python only), plan-to-layer matching in :mod:`.matching`, cache serving in
:mod:`.cache_serving` (pure Python) and per-layer times in :mod:`.profiling`.
"""
from __future__ import annotations

import importlib
from typing import Any

from ...errors import TensorRTUnavailableError
from .versions import INSTALL_HINT, Capabilities, TrtVersion, check_supported

_LAZY = {
    "build_engine": ".builder", "BuildOptions": ".builder", "BuildResult": ".builder",
    "parse_shapes": ".builder", "read_engine_sidecar": ".builder", "check_engine_sidecar": ".builder",
    "TrtEngine": ".runner", "benchmark": ".runner",
    "make_calibrator": ".calibrator", "CalibratorCore": ".calibrator",
    "assign_precisions": ".matching", "assign_plan": ".matching",
    "CacheServer": ".cache_serving",
    "collect_layer_times": ".profiling",
}


def unavailable_message(command: str | None = None, reason: str | None = None) -> str:
    what = f"calib {command}" if command else "the TensorRT backend"
    why = f" ({reason})" if reason else ""
    return (f"{what} needs TensorRT and an NVIDIA GPU with its driver; install them with "
            f"{INSTALL_HINT} on the GPU machine{why}")


def import_tensorrt(command: str | None = None):
    """Import and return the ``tensorrt`` module, checking the version is supported."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or a broken install raising OSError/RuntimeError
        reason = f"import tensorrt failed: {exc}".splitlines()[0]
        raise TensorRTUnavailableError(unavailable_message(command, reason)) from None
    version = TrtVersion.parse(getattr(trt, "__version__", "0"))
    check_supported(version)
    return trt


def capabilities(trt=None) -> Capabilities:
    trt = trt or import_tensorrt()
    return Capabilities(TrtVersion.parse(trt.__version__))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = importlib.import_module(_LAZY[name], __name__)
        return getattr(mod, name)
    raise AttributeError(name)


__all__ = ["import_tensorrt", "capabilities", "unavailable_message", "TrtVersion", "Capabilities",
           *_LAZY]
