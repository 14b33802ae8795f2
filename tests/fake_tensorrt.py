"""A MOCK of the ``tensorrt`` module, for control-flow tests only.

TensorRT cannot be installed on the machines that run these tests (its -libs wheels download
from a host they cannot reach, and there is no GPU), so a few tests need a stand-in. This mock
holds only what those tests touch: a version string and the two calibrator base classes,
recording that their ``__init__`` ran (pybind11 trampolines require it). It says nothing about
the real API; the real names are checked against the real wheels by
``tests/test_tensorrt_conformance.py``.
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

    mod.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
    mod.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
    return mod
