"""TensorRT DataType -> NumPy dtype of engine inputs/outputs, on the MOCK tensorrt module
(tests/fake_tensorrt.py) given the DataType members each release documents. That the members exist
in the real wheels was checked against the binding wheels of tests/trt_api/wheels.json."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import fake_tensorrt
from calib.backends.tensorrt import cuda
from calib.backends.tensorrt.builder import numpy_dtype
from calib.errors import BackendError, CalibError

# DataType members as documented (and present in the wheels) per release
MEMBERS_86 = ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8")
MEMBERS_100 = MEMBERS_86 + ("BF16", "INT64", "INT4")
MEMBERS = {"8.6.1": MEMBERS_86, "10.0.1": MEMBERS_100,
           "10.16.1.11": MEMBERS_100 + ("FP4", "E8M0"), "11.4.0.106": MEMBERS_100 + ("FP4", "E8M0")}
NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
         "BOOL": np.bool_, "UINT8": np.uint8}


class _Member:
    """An enum member as pybind11 makes them: hashable, with ``.name``."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


class _DataType:
    pass


def _trt(version: str, members=None):
    trt = fake_tensorrt.make(version)
    trt.DataType = _DataType()
    for name in members or MEMBERS[version]:
        setattr(trt.DataType, name, _Member(name))
    return trt


@pytest.mark.parametrize("version", sorted(MEMBERS))
def test_every_numpy_representable_member_maps_to_its_dtype(version):
    trt = _trt(version)
    mapped = {n: numpy_dtype(trt, getattr(trt.DataType, n), "x") for n in MEMBERS[version] if n in NUMPY}
    assert mapped == {n: np.dtype(NUMPY[n]) for n in MEMBERS[version] if n in NUMPY}
    assert ("INT64" in mapped) == (version != "8.6.1")


def test_8_6_without_int64_or_bf16_still_works():
    trt = _trt("8.6.1")
    assert not hasattr(trt.DataType, "INT64") and not hasattr(trt.DataType, "BF16")
    assert numpy_dtype(trt, trt.DataType.UINT8, "x") == np.uint8


def test_bf16_is_ml_dtypes_bfloat16_and_refused_by_name_without_it(monkeypatch):
    ml_dtypes = pytest.importorskip("ml_dtypes")       # installed with onnx
    trt = _trt("10.16.1.11")
    assert numpy_dtype(trt, trt.DataType.BF16, "y") == np.dtype(ml_dtypes.bfloat16)
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)     # import fails
    with pytest.raises(BackendError,
                       match="tensor 'y' has TensorRT type BF16 \\(bfloat16, and ml_dtypes is missing\\)"):
        numpy_dtype(trt, trt.DataType.BF16, "y")


@pytest.mark.parametrize("member,what", [("FP8", "E4M3"), ("INT4", "packed 4-bit"),
                                         ("FP4", "packed 4-bit"), ("E8M0", "8-bit")])
def test_types_without_a_numpy_dtype_are_refused_by_name(member, what):
    trt = _trt("11.4.0.106")
    with pytest.raises(BackendError) as exc:
        numpy_dtype(trt, getattr(trt.DataType, member), "logits")
    msg = str(exc.value)
    assert isinstance(exc.value, CalibError) and "\n" not in msg
    assert f"tensor 'logits' has TensorRT type {member} (" in msg and what in msg and "no NumPy dtype" in msg


def test_an_unknown_type_is_refused_not_read_as_float32():
    trt = _trt("11.4.0.106", MEMBERS["11.4.0.106"] + ("FP6",))
    with pytest.raises(BackendError, match="type FP6 \\(a type calib does not know\\)"):
        numpy_dtype(trt, trt.DataType.FP6, "x")


def test_engine_with_fp8_output_is_refused_at_load(tmp_path, monkeypatch):
    """TrtEngine asks for the NumPy dtype of every I/O tensor before allocating anything: an FP8
    output is a clear error instead of being read back as float32 (the old fallback)."""
    trt = _trt("10.16.1.11")
    io = {"x": ("INPUT", trt.DataType.FLOAT), "y": ("OUTPUT", trt.DataType.FP8)}

    class Engine:
        num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return list(io)[i]

        def get_tensor_mode(self, name):
            return io[name][0]

        def get_tensor_dtype(self, name):
            return io[name][1]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine()

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.TensorIOMode = type("TensorIOMode", (), {"INPUT": "INPUT", "OUTPUT": "OUTPUT"})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda, "require_gpu", lambda: None)
    monkeypatch.setattr(cuda, "device_properties", lambda device=0: {"name": "mock GPU"})
    (tmp_path / "m.engine").write_bytes(b"engine")
    from calib.backends.tensorrt.runner import TrtEngine

    with pytest.raises(BackendError, match="tensor 'y' has TensorRT type FP8 \\(8-bit floats, E4M3\\)"):
        TrtEngine(tmp_path / "m.engine")
