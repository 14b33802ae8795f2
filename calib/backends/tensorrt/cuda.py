"""Device memory with cuda-python: buffers allocated once and reused, host -> device feeders,
streams and events. No TensorRT here, so it can be tested on a GPU with cuda-python alone.

cuda-python moved its runtime module: ``cuda.bindings.runtime`` (cuda-bindings >= 12.6, the
only path in 13.x) and ``cuda.cudart`` (older releases). Both are accepted. Every call's
returned error code is checked; a failure raises :class:`CudaError` naming the call and CUDA's
error name. No pycuda.
"""
from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence

import numpy as np

from ...errors import BackendError, InputMismatchError, TensorRTUnavailableError

_cudart = None


class CudaError(BackendError):
    """A CUDA runtime call failed."""


def cudart():
    """The cuda-python runtime module (new path first, then the old one)."""
    global _cudart
    if _cudart is None:
        try:
            from cuda.bindings import runtime as rt  # cuda-bindings >= 12.6 / 13.x
        except ImportError:
            try:
                from cuda import cudart as rt  # older cuda-python
            except ImportError as exc:
                raise TensorRTUnavailableError(
                    f"cuda-python is needed to move data to the GPU ({exc}); "
                    f"install it with pip install 'calib[tensorrt]'") from None
        _cudart = rt
    return _cudart


def _error_name(rt, err) -> str:
    try:
        res = rt.cudaGetErrorName(err)
        name = res[1] if isinstance(res, tuple) else res
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # pragma: no cover - defensive
        return str(err)


def check(result, call: str):
    """Check a cuda-python result ``(err, *values)``; return the values (one or a tuple)."""
    rt = cudart()
    if isinstance(result, tuple):
        err, rest = result[0], result[1:]
    else:
        err, rest = result, ()
    if int(err) != int(rt.cudaError_t.cudaSuccess):
        raise CudaError(f"CUDA call {call} failed: {_error_name(rt, err)}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def device_count() -> int:
    rt = cudart()
    res = rt.cudaGetDeviceCount()
    if int(res[0]) != int(rt.cudaError_t.cudaSuccess):
        return 0
    return int(res[1])


def require_gpu() -> None:
    if device_count() < 1:
        raise TensorRTUnavailableError(
            "no NVIDIA GPU is visible to CUDA (cudaGetDeviceCount found none); TensorRT needs one")


def device_properties(device: int = 0) -> dict:
    """Name and compute capability of *device* (for engine sidecars)."""
    rt = cudart()
    props = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return {"name": str(name).strip(), "compute_capability": f"{props.major}.{props.minor}"}


class Stream:
    def __init__(self):
        rt = cudart()
        self._rt = rt
        self.stream = check(rt.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        """The raw cudaStream_t as an int (what TensorRT's execute_async_v3 takes)."""
        return int(self.stream)

    def synchronize(self) -> None:
        check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.stream is not None:
            check(self._rt.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


class Event:
    def __init__(self):
        self._rt = cudart()
        self.event = check(self._rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        check(self._rt.cudaEventRecord(self.event, stream.stream), "cudaEventRecord")

    def synchronize(self) -> None:
        check(self._rt.cudaEventSynchronize(self.event), "cudaEventSynchronize")

    def elapsed_ms(self, start: Event) -> float:
        return float(check(self._rt.cudaEventElapsedTime(start.event, self.event), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self.event is not None:
            check(self._rt.cudaEventDestroy(self.event), "cudaEventDestroy")
            self.event = None


class DeviceBuffer:
    """``nbytes`` of device memory from cudaMalloc, freed by :meth:`free` (idempotent)."""

    def __init__(self, nbytes: int):
        self._rt = cudart()
        self.nbytes = int(max(1, nbytes))
        self.ptr: int | None = int(check(self._rt.cudaMalloc(self.nbytes), "cudaMalloc"))

    def _alive(self) -> int:
        if self.ptr is None:
            raise CudaError("device buffer used after it was freed")
        return self.ptr

    def copy_from_host(self, array: np.ndarray, stream: Stream) -> None:
        a = np.ascontiguousarray(array)
        if a.nbytes > self.nbytes:
            raise CudaError(f"copy of {a.nbytes} bytes into a device buffer of {self.nbytes}")
        check(self._rt.cudaMemcpyAsync(self._alive(), a.ctypes.data, a.nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.stream),
              "cudaMemcpyAsync(HostToDevice)")

    def copy_to_host(self, array: np.ndarray, stream: Stream) -> None:
        if not array.flags.c_contiguous:
            raise CudaError("destination of a device-to-host copy must be C-contiguous")
        if array.nbytes > self.nbytes:
            raise CudaError(f"copy of {array.nbytes} bytes out of a device buffer of {self.nbytes}")
        check(self._rt.cudaMemcpyAsync(array.ctypes.data, self._alive(), array.nbytes,
                                       self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.stream),
              "cudaMemcpyAsync(DeviceToHost)")

    def free(self) -> None:
        if self.ptr is not None:
            check(self._rt.cudaFree(self.ptr), "cudaFree")
            self.ptr = None

    def __del__(self):  # best effort; explicit free() is the contract
        try:
            self.free()
        except Exception:
            pass


class PinnedBuffer:
    """Page-locked host memory (cudaMallocHost) viewed as a NumPy array."""

    def __init__(self, nbytes: int):
        self._rt = cudart()
        self.nbytes = int(max(1, nbytes))
        self.ptr: int | None = int(check(self._rt.cudaMallocHost(self.nbytes), "cudaMallocHost"))
        self._raw = (ctypes.c_uint8 * self.nbytes).from_address(self.ptr)

    def view(self, shape: Sequence[int], dtype) -> np.ndarray:
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if n > self.nbytes:
            raise CudaError(f"view of {n} bytes on a pinned buffer of {self.nbytes}")
        return np.frombuffer(self._raw, dtype=np.uint8, count=n).view(dt).reshape(tuple(shape))

    def free(self) -> None:
        if self.ptr is not None:
            self._raw = None
            check(self._rt.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = None

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class InputSpec:
    """What an input must look like: name, shape (ints; -1 where dynamic), dtype, and the
    largest shape it may take (used to size the buffer)."""

    def __init__(self, name: str, shape: Sequence[int], dtype, max_shape: Sequence[int] | None = None):
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.max_shape = tuple(int(d) for d in (max_shape if max_shape is not None else shape))
        if any(d < 0 for d in self.max_shape):
            raise InputMismatchError(f"input '{name}': no maximum shape known for dynamic shape {self.shape}")

    @property
    def max_nbytes(self) -> int:
        return int(np.prod(self.max_shape, dtype=np.int64)) * self.dtype.itemsize

    def check(self, array: np.ndarray) -> np.ndarray:
        a = np.asarray(array)
        if a.ndim != len(self.shape):
            raise InputMismatchError(f"input '{self.name}': data shape {a.shape} has rank {a.ndim}, "
                                     f"network expects {self.shape}")
        for have, want, hi in zip(a.shape, self.shape, self.max_shape):
            if (want >= 0 and have != want) or have > hi:
                raise InputMismatchError(f"input '{self.name}': data shape {a.shape} does not fit network "
                                         f"shape {self.shape} (max {self.max_shape})")
        if a.dtype != self.dtype:
            if a.dtype.kind == "f" and self.dtype.kind == "f":
                a = a.astype(self.dtype)
            else:
                raise InputMismatchError(f"input '{self.name}': data dtype {a.dtype} does not match network "
                                         f"dtype {self.dtype.name}")
        return np.ascontiguousarray(a)


class HostToDevice:
    """Feeds host batches into device buffers allocated ONCE (sized for the largest shape) and
    reused for every batch: ``feed({name: array}) -> {name: device pointer}``.

    Inputs are checked against the expected names, shapes and dtypes; with ``pinned=True``
    batches are staged through page-locked host memory so the copies are truly asynchronous.
    """

    def __init__(self, specs: Sequence[InputSpec], stream: Stream | None = None, pinned: bool = False):
        self.specs = {s.name: s for s in specs}
        self.stream = stream or Stream()
        self._own_stream = stream is None
        self.buffers: dict[str, DeviceBuffer] = {}
        self.staging: dict[str, PinnedBuffer] = {}
        try:
            for s in specs:
                self.buffers[s.name] = DeviceBuffer(s.max_nbytes)
                if pinned:
                    self.staging[s.name] = PinnedBuffer(s.max_nbytes)
        except Exception:
            self.close()
            raise
        self.batches = 0

    @property
    def pointers(self) -> dict[str, int]:
        return {n: b.ptr for n, b in self.buffers.items()}

    def check_names(self, feed: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.specs if n not in feed]
        if missing:
            raise InputMismatchError(f"batch lacks network input(s) {', '.join(missing)} "
                                     f"(batch has: {', '.join(feed) or 'nothing'})")

    def feed(self, feed: Mapping[str, np.ndarray], synchronize: bool = True) -> dict[str, int]:
        self.check_names(feed)
        for name, spec in self.specs.items():
            a = spec.check(feed[name])
            if name in self.staging:
                host = self.staging[name].view(a.shape, a.dtype)
                host[...] = a
                a = host
            self.buffers[name].copy_from_host(a, self.stream)
        if synchronize:
            self.stream.synchronize()
        self.batches += 1
        return self.pointers

    def read_back(self, name: str, shape: Sequence[int], dtype=None) -> np.ndarray:
        """Copy the current contents of input *name* back to a new host array (for tests)."""
        spec = self.specs[name]
        out = np.empty(tuple(shape), dtype=dtype or spec.dtype)
        self.buffers[name].copy_to_host(out, self.stream)
        self.stream.synchronize()
        return out

    def close(self) -> None:
        for b in list(self.buffers.values()) + list(self.staging.values()):
            b.free()
        if self._own_stream and self.stream is not None:
            self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
