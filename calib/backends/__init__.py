"""Backends run models. Each is a loader plus a runner behind :class:`calib.backends.base.Engine`.

ONNX Runtime (CPU) is the default and always available. TensorRT lives in
:mod:`calib.backends.tensorrt` and is imported only when asked for.
"""
from .base import Engine, EngineInfo

__all__ = ["Engine", "EngineInfo"]
