"""A MOCK of the ``tensorrt`` module, for control-flow tests only.

TensorRT cannot be installed on the machines that run these tests (its -libs wheels download
from a host they cannot reach, and there is no GPU), so a few tests need a stand-in. This mock
holds only what those tests touch: a version string, the two calibrator base classes and the
profiler base class ``IProfiler``, recording that their ``__init__`` ran (pybind11 trampolines
require it), and :class:`FakeExecutionContext`, which reports given layer times to the profiler
set on it as TensorRT's contexts do. It says nothing about the real API; the real names are
checked against the real wheels by ``tests/test_tensorrt_conformance.py``.
"""
from __future__ import annotations

import types


def make(version: str = "10.16.1.11") -> types.ModuleType:
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.__is_mock__ = True

    class _CalibratorBase:
        def __init__(self):
            self.base_init_called = True

    class IInt8EntropyCalibrator2(_CalibratorBase):
        pass

    class IInt8MinMaxCalibrator(_CalibratorBase):
        pass

    class IProfiler(_CalibratorBase):
        pass

    mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    mod.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
    mod.IProfiler = IProfiler
    return mod


class FakeExecutionContext:
    """MOCK of an execution context: :meth:`execute` reports each ``(layer name, ms)`` of
    *layers* to ``profiler.report_layer_time`` when a profiler is set (runs without one count in
    ``runs`` only)."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.profiler = None
        self.runs = 0

    def execute(self):
        self.runs += 1
        if self.profiler is not None:
            for name, ms in self.layers:
                self.profiler.report_layer_time(name, ms)
