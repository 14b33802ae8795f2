"""Device buffers of the TensorRT calibrator on a real GPU (cuda-python only, no TensorRT).

Skipped, with the reason, where cuda-python or a CUDA GPU is missing (CI has neither).
Run on a GPU machine: ``python -m pytest -m gpu tests/test_tensorrt_cuda_gpu.py``.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _gpu_or_skip():
    try:
        from calib.backends.tensorrt import cuda
        cuda.cudart()
    except Exception as exc:
        pytest.skip(f"cuda-python is not installed: {exc}")
    if cuda.device_count() < 1:
        pytest.skip("no CUDA GPU visible (cudaGetDeviceCount found none)")
    return cuda


@pytest.fixture()
def cuda():
    return _gpu_or_skip()


def _bits_batches(n_batches, shapes, seed=0):
    """Batches whose float inputs hold arbitrary bit patterns (NaN payloads, denormals, -0.0)."""
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        x = rng.integers(0, 2**32, size=shapes["x"], dtype=np.uint64).astype(np.uint32).view(np.float32)
        ids = rng.integers(-2**62, 2**62, size=shapes["ids"], dtype=np.int64)
        yield {"x": x, "ids": ids}


def _specs(cuda):
    return [cuda.InputSpec("x", (-1, 3, 8, 8), np.float32, max_shape=(4, 3, 8, 8)),
            cuda.InputSpec("ids", (-1, 5), np.int64, max_shape=(4, 5))]


def _mem_free(cuda):
    rt = cuda.cudart()
    free, _total = cuda.check(rt.cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free)


@pytest.mark.parametrize("pinned", [False, True], ids=["pageable", "pinned"])
def test_feed_copy_back_bit_exact_and_buffers_reused(cuda, pinned):
    feeder = cuda.HostToDevice(_specs(cuda), pinned=pinned)
    first = dict(feeder.pointers)
    assert all(isinstance(p, int) and p != 0 for p in first.values())
    shapes = [{"x": (4, 3, 8, 8), "ids": (4, 5)}, {"x": (2, 3, 8, 8), "ids": (2, 5)}]
    n = 0
    for shp in shapes:
        for batch in _bits_batches(3, shp, seed=n):
            ptrs = feeder.feed(batch)
            assert ptrs == first, "device buffers must be allocated once and reused"
            for name, a in batch.items():
                back = feeder.read_back(name, a.shape)
                assert back.tobytes() == np.ascontiguousarray(a).tobytes(), f"{name}: bytes differ after round trip"
            n += 1
    assert feeder.batches == n == 6
    feeder.close()
    assert all(b.ptr is None for b in feeder.buffers.values())
    feeder.close()  # idempotent


def test_calibrator_core_serves_device_pointers_then_none(cuda):
    from calib.backends.tensorrt.calibrator import CalibratorCore

    batches = list(_bits_batches(3, {"x": (4, 3, 8, 8), "ids": (4, 5)}, seed=7))
    batches.append({"x": batches[0]["x"][:1], "ids": batches[0]["ids"][:1]})  # partial: skipped
    core = CalibratorCore(_specs(cuda), iter(batches), batch_size=4, server=None, pinned=True)
    seen = []
    for b in batches[:3]:
        ptrs = core.get_batch(["ids", "x"])
        assert core.error is None, core.error
        assert ptrs == [core.feeder.pointers["ids"], core.feeder.pointers["x"]]
        seen.append(tuple(ptrs))
        for name in ("x", "ids"):
            assert core.feeder.read_back(name, b[name].shape).tobytes() == b[name].tobytes()
    assert len(set(seen)) == 1
    assert core.get_batch(["ids", "x"]) is None      # end of data (partial batch skipped)
    assert core.skipped == 1 and core.batches_fed == 3
    core.close()
    assert core.feeder is None


def test_calibrator_core_rejects_wrong_input(cuda):
    from calib.backends.tensorrt.calibrator import CalibratorCore
    from calib.errors import InputMismatchError

    bad = [{"x": np.zeros((4, 3, 9, 9), np.float32), "ids": np.zeros((4, 5), np.int64)}]
    core = CalibratorCore(_specs(cuda), iter(bad), batch_size=4, server=None)
    assert core.get_batch(["x", "ids"]) is None
    assert isinstance(core.error, InputMismatchError) and "'x'" in str(core.error)
    core.close()


def test_buffers_are_freed(cuda):
    big = 256 << 20
    base = _mem_free(cuda)
    bufs = [cuda.DeviceBuffer(big) for _ in range(4)]
    during = _mem_free(cuda)
    assert base - during >= 4 * big * 0.99
    for b in bufs:
        b.free()
    after = _mem_free(cuda)
    assert abs(after - base) < big // 4, (base, during, after)


def test_errors_are_checked_and_named(cuda):
    with pytest.raises(cuda.CudaError, match=r"cudaMalloc.*cudaErrorMemoryAllocation"):
        cuda.DeviceBuffer(1 << 50)


def test_events_time_a_copy(cuda):
    s = cuda.Stream()
    a, b = cuda.Event(), cuda.Event()
    buf = cuda.DeviceBuffer(64 << 20)
    host = np.ones(16 << 20, np.float32)
    a.record(s)
    buf.copy_from_host(host, s)
    b.record(s)
    b.synchronize()
    assert b.elapsed_ms(a) > 0
    buf.free()
    a.close()
    b.close()
    s.close()


def test_device_properties(cuda):
    p = cuda.device_properties()
    assert p["name"] and "." in p["compute_capability"]
    print(f"GPU: {p['name']} sm {p['compute_capability']}")


def test_legacy_cuda_cudart_import_path(cuda, monkeypatch):
    try:
        import cuda.cudart  # noqa: F401  (cuda-python < 13 ships it)
    except ImportError:
        pytest.skip("this cuda-python has no legacy cuda.cudart module")
    import cuda.bindings as new_pkg

    from calib.backends.tensorrt import cuda as C

    monkeypatch.setattr(C, "_cudart", None)
    # make the new path fail: no cached submodule, no attribute on the package
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.delattr(new_pkg, "runtime", raising=False)
    with pytest.raises(ImportError):
        from cuda.bindings import runtime  # noqa: F401
    rt = C.cudart()
    from cuda import cudart as legacy  # what the fallback imports (a shim over cuda.bindings in 12.x)
    assert rt is legacy
    buf = C.DeviceBuffer(1024)
    s = C.Stream()
    x = np.arange(256, dtype=np.float32)
    buf.copy_from_host(x, s)
    y = np.empty_like(x)
    buf.copy_to_host(y, s)
    s.synchronize()
    assert y.tobytes() == x.tobytes()
    buf.free()
    s.close()
    monkeypatch.setattr(C, "_cudart", None)
