"""Serving a GPU-free cache to TensorRT's calibrator: bytes only when provenance matches (no TensorRT)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fake_tensorrt
from calib.backends.tensorrt.cache_serving import CacheServer, calibrator_for_cache
from calib.backends.tensorrt.calibrator import CalibratorCore, make_calibrator
from calib.backends.tensorrt.cuda import InputSpec
from calib.cache import CalibrationCache, make_sidecar, parse_cache, read_sidecar, write_cache_with_sidecar
from calib.errors import CacheMismatchError, InputMismatchError, OutputExistsError
from calib.model import Model
from conftest import SHARED

MODELS = SHARED / "models"


@pytest.fixture(scope="module")
def mnist():
    p = MODELS / "mnist_cntk.onnx"
    if not p.exists():
        pytest.skip("shared models not present")
    return Model.load(p)


@pytest.fixture(scope="module")
def squeezenet():
    return Model.load(MODELS / "squeezenet1_1_fp32.onnx")


def _write_cache(tmp_path, model, algorithm="EntropyCalibration2"):
    tensors = [t.name for t in model.inputs] + model.activation_tensors()
    cache = CalibrationCache({t: (i + 1) / 1000 for i, t in enumerate(tensors)}, algorithm=algorithm, version=100900)
    path = tmp_path / "m.cache"
    write_cache_with_sidecar(path, cache, make_sidecar(model=model, cache=cache))
    return path, cache


def test_serves_bytes_when_provenance_matches(tmp_path, mnist):
    path, cache = _write_cache(tmp_path, mnist)
    server = CacheServer(path, mnist, trt_cache_version=8601, calibrator="entropy")
    data = server.read()
    assert data is not None and data.startswith(b"TRT-8601-EntropyCalibration2\n")
    served = parse_cache(data)
    assert served.scales == pytest.approx(cache.scales)   # scales unchanged, header relabelled


def test_minmax_cache_served_through_minmax(tmp_path, mnist):
    path, _ = _write_cache(tmp_path, mnist, algorithm="MinMaxCalibration")
    assert calibrator_for_cache("MinMaxCalibration") == "minmax"
    assert calibrator_for_cache("EntropyCalibration2") == "entropy"
    server = CacheServer(path, mnist, trt_cache_version=101601, calibrator="minmax")
    assert server.read().startswith(b"TRT-101601-MinMaxCalibration\n")


def test_refuses_cache_of_another_model(tmp_path, mnist, squeezenet):
    path, _ = _write_cache(tmp_path, mnist)
    server = CacheServer(path, squeezenet, trt_cache_version=100900)
    with pytest.raises(CacheMismatchError, match="model hash differs"):
        server.read()


def test_refuses_cache_without_sidecar(tmp_path, mnist):
    path, _ = _write_cache(tmp_path, mnist)
    Path(str(path) + ".json").unlink()
    with pytest.raises(CacheMismatchError, match="no sidecar"):
        CacheServer(path, mnist, 100900).read()


def test_absent_cache_or_calibrating_means_none(tmp_path, mnist):
    assert CacheServer(tmp_path / "none.cache", mnist, 100900).read() is None
    path, _ = _write_cache(tmp_path, mnist)
    assert CacheServer(path, mnist, 100900, serve=False).read() is None
    assert CacheServer(None, mnist, 100900).read() is None


def test_write_is_atomic_with_sidecar_and_respects_overwrite(tmp_path, mnist):
    trt_bytes = b"TRT-8601-EntropyCalibration2\nInput3: 3c010a14\nPlus214_Output_0: 3d4ccccd\n"
    out = tmp_path / "trt.cache"
    server = CacheServer(out, mnist, 8601, data_description={"source": "imgs/"})
    assert server.write(trt_bytes) == out
    assert parse_cache(out.read_bytes()).scales.keys() == {"Input3", "Plus214_Output_0"}
    side = read_sidecar(out)
    assert side["model"]["sha256"] == mnist.sha256 and side["data"] == {"source": "imgs/"}
    with pytest.raises(OutputExistsError):
        CacheServer(out, mnist, 8601).write(trt_bytes)
    CacheServer(out, mnist, 8601, overwrite=True).write(trt_bytes)
    assert not list(tmp_path.glob("*.tmp"))


def test_calibrator_keeps_callback_errors_instead_of_losing_them(tmp_path, mnist, squeezenet):
    path, _ = _write_cache(tmp_path, mnist)
    core = CalibratorCore([], None, 1, CacheServer(path, squeezenet, 100900))
    assert core.read_calibration_cache() is None
    assert isinstance(core.error, CacheMismatchError)


def test_factory_subclasses_the_tensorrt_base_class_and_calls_its_init(tmp_path, mnist):
    """Uses the MOCK tensorrt module (tests/fake_tensorrt.py): TensorRT cannot exist here."""
    trt = fake_tensorrt.make("8.6.1")
    path, _ = _write_cache(tmp_path, mnist)
    server = CacheServer(path, mnist, 8601)
    for algo, base in (("entropy", trt.IInt8EntropyCalibrator2), ("minmax", trt.IInt8MinMaxCalibrator)):
        cal = make_calibrator(trt, algo, [InputSpec("Input3", (1, 1, 28, 28), np.float32)], None, 1, server)
        assert isinstance(cal, base) and cal.base_init_called
        assert type(cal).__mro__[1] is base                         # single inheritance
        assert cal.get_batch_size() == 1                            # TensorRT 8.6 asks for it
        assert cal.read_calibration_cache().startswith(b"TRT-8601-")
        assert cal.get_batch(["Input3"]) is None                    # serving a cache: no data


def test_calibrator_checks_input_names_before_touching_the_gpu(mnist):
    batches = iter([{"wrong": np.zeros((1, 1, 28, 28), np.float32)}])

    class NoGpuFeeder:  # stands in for HostToDevice: only its name check runs
        def __init__(self, specs, pinned=False):
            from calib.backends.tensorrt.cuda import HostToDevice
            self.check = HostToDevice.check_names.__get__(self)
            self.specs = {s.name: s for s in specs}

        def feed(self, feed):
            self.check(feed)

        def close(self):
            pass

    core = CalibratorCore([InputSpec("Input3", (1, 1, 28, 28), np.float32)], batches, 1, None,
                          feeder_factory=NoGpuFeeder)
    assert core.get_batch(["Input3"]) is None
    assert isinstance(core.error, InputMismatchError) and "Input3" in str(core.error)
    core2 = CalibratorCore([InputSpec("Input3", (1, 1, 28, 28), np.float32)], iter([]), 1, None)
    assert core2.get_batch(["bogus"]) is None and "unknown input" in str(core2.error)


def test_input_spec_checks_shape_and_dtype():
    s = InputSpec("x", (-1, 3, 4), np.float32, max_shape=(8, 3, 4))
    assert s.check(np.zeros((2, 3, 4), np.float64)).dtype == np.float32
    with pytest.raises(InputMismatchError, match="does not fit"):
        s.check(np.zeros((9, 3, 4), np.float32))
    with pytest.raises(InputMismatchError, match="rank"):
        s.check(np.zeros((3, 4), np.float32))
    with pytest.raises(InputMismatchError, match="dtype"):
        s.check(np.zeros((2, 3, 4), np.int32))
    with pytest.raises(InputMismatchError, match="no maximum shape"):
        InputSpec("y", (-1, 3), np.float32)
