"""Run and time a serialized TensorRT engine: :class:`TrtEngine` implements
:class:`calib.backends.base.Engine`, so the harness scores it like any other backend.

I/O goes through cuda-python device buffers allocated once per execution context at the
profile's maximum shapes; ``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3``
on the context's own stream. Several contexts on one engine (each with its own stream, buffers
and optimization profile) measure concurrent throughput. Latency is timed with CUDA events.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ...errors import BackendError, InputMismatchError, ModelLoadError
from ...model import TensorInfo
from ..base import Engine, EngineInfo
from .builder import check_engine_sidecar, numpy_dtype, read_engine_sidecar
from .versions import Capabilities, TrtVersion


@dataclass
class _Slot:
    """One execution context with its own stream, buffers and profile."""

    context: object
    stream: object
    buffers: dict
    profile: int
    shapes: dict


def percentiles(samples_ms: Sequence[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"median_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "n": 0}
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": int(a.size)}


class TrtEngine(Engine):
    """A deserialized TensorRT engine with ``contexts`` execution contexts."""

    def __init__(self, path, *, contexts: int = 1, name: str | None = None, check: bool = True,
                 log=None):
        from . import import_tensorrt
        from .cuda import DeviceBuffer, Stream, device_properties, require_gpu

        trt = import_tensorrt()
        self._trt = trt
        self.caps = Capabilities(TrtVersion.parse(trt.__version__))
        require_gpu()
        self.path = Path(path)
        if not self.path.exists():
            raise ModelLoadError(f"engine file not found: {self.path}")
        self.sidecar = read_engine_sidecar(self.path)
        self.gpu = device_properties()
        if self.sidecar is not None and check:
            check_engine_sidecar(self.sidecar, self.path, str(trt.__version__), self.gpu)
        elif self.sidecar is None and log:
            log(f"warning: {self.path} has no calib sidecar; its TensorRT version and GPU cannot be checked")
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise _load_error(self.path)
        self._runtime = runtime
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._in = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._np = {n: numpy_dtype(trt, engine.get_tensor_dtype(n), n) for n in names}
        self._shape = {n: tuple(engine.get_tensor_shape(n)) for n in names}
        self.num_profiles = max(1, int(engine.num_optimization_profiles))
        self.dynamic = any(d < 0 for n in self._in for d in self._shape[n])
        if contexts < 1:
            raise BackendError("--contexts must be at least 1")
        if self.dynamic and contexts > self.num_profiles:
            raise BackendError(
                f"{contexts} concurrent contexts need {contexts} optimization profiles on an engine with dynamic "
                f"shapes, but {self.path.name} has {self.num_profiles}; rebuild with calib build --profiles {contexts}")
        self._DeviceBuffer, self._Stream = DeviceBuffer, Stream
        self.slots: list[_Slot] = []
        try:
            for i in range(contexts):
                self.slots.append(self._make_slot(i % self.num_profiles if self.dynamic else 0))
        except Exception:
            self.close()
            raise
        prec = (self.sidecar or {}).get("precision", "unknown")
        self.info = EngineInfo(name=name or f"trt-{prec}", backend="tensorrt", precision=prec,
                               extra={"tensorrt": str(trt.__version__), "gpu": self.gpu["name"],
                                      "engine": str(self.path), "contexts": contexts})

    # -- profiles / buffers ---------------------------------------------------
    def profile_shapes(self, name: str, profile: int = 0) -> tuple[tuple, tuple, tuple]:
        engine = self._engine
        if not self.dynamic or all(d >= 0 for d in self._shape[name]):
            s = self._shape[name]
            return s, s, s
        mn, opt, mx = engine.get_tensor_profile_shape(name, profile)
        return tuple(mn), tuple(opt), tuple(mx)

    @property
    def max_batch(self) -> int:
        return int(self.profile_shapes(self._in[0])[2][0]) if self._in else 1

    @property
    def min_batch(self) -> int:
        return int(self.profile_shapes(self._in[0])[0][0]) if self._in else 1

    def _make_slot(self, profile: int) -> _Slot:
        engine = self._engine
        context = engine.create_execution_context()
        if context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        stream = self._Stream()
        if self.dynamic:
            context.set_optimization_profile_async(profile, stream.handle)
        # size every buffer for the profile's maximum input shapes
        for n in self._in:
            context.set_input_shape(n, self.profile_shapes(n, profile)[2])
        buffers = {}
        for n in self._in + self._out:
            shp = tuple(context.get_tensor_shape(n))
            if any(d < 0 for d in shp):
                raise BackendError(f"output '{n}' has a data-dependent shape {shp}; not supported by calib run")
            nbytes = int(np.prod(shp, dtype=np.int64)) * self._np[n].itemsize
            buffers[n] = self._DeviceBuffer(nbytes)
            context.set_tensor_address(n, buffers[n].ptr)
        return _Slot(context, stream, buffers, profile, {})

    def _set_shapes(self, slot: _Slot, shapes: Mapping[str, tuple]) -> dict[str, tuple]:
        context = slot.context
        if slot.shapes != dict(shapes):
            for n in self._in:
                context.set_input_shape(n, tuple(shapes[n]))
            slot.shapes = dict(shapes)
        return {n: tuple(context.get_tensor_shape(n)) for n in self._out}

    # -- Engine interface ---------------------------------------------------------
    @property
    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(n, tuple(d if d >= 0 else "?" for d in self._shape[n]), self._np[n]) for n in self._in]

    @property
    def output_names(self) -> list[str]:
        return list(self._out)

    def _check(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for n in self._in:
            if n not in feed:
                raise InputMismatchError(f"batch lacks engine input '{n}' (has: {', '.join(feed)})")
            a = np.asarray(feed[n])
            want = self._shape[n]
            if a.ndim != len(want) or any(w >= 0 and i > 0 and h != w for i, (h, w) in enumerate(zip(a.shape, want))):
                raise InputMismatchError(f"input '{n}': data shape {a.shape} does not fit engine shape {want}")
            mn, _, mx = self.profile_shapes(n)
            if any(i > 0 and not (lo <= h <= hi) for i, (h, lo, hi) in enumerate(zip(a.shape, mn, mx))):
                raise InputMismatchError(f"input '{n}': data shape {a.shape} is outside the engine's profile "
                                         f"{mn}..{mx}; rebuild with wider --min/--max")
            if a.dtype != self._np[n]:
                if a.dtype.kind == "f" and self._np[n].kind == "f":
                    a = a.astype(self._np[n])
                else:
                    raise InputMismatchError(f"input '{n}': data dtype {a.dtype} does not match engine dtype {self._np[n]}")
            out[n] = np.ascontiguousarray(a)
        return out

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self._check(feed)
        n = next(iter(feed.values())).shape[0] if feed else 1
        step = self.max_batch
        if n <= step:
            if n < self.min_batch:
                raise InputMismatchError(f"batch of {n} is below the engine's minimum batch {self.min_batch}")
            return self._run_once(self.slots[0], feed)
        if self.min_batch == step and n % step:
            raise InputMismatchError(f"batch of {n} cannot be split into the engine's fixed batch of {step}")
        parts = [self._run_once(self.slots[0], {k: v[i:i + step] for k, v in feed.items()}) for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def _run_once(self, slot: _Slot, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out_shapes = self._set_shapes(slot, {k: v.shape for k, v in feed.items()})
        for n in self._in:
            slot.buffers[n].copy_from_host(feed[n], slot.stream)
        self._execute(slot)
        outs = {n: np.empty(out_shapes[n], dtype=self._np[n]) for n in self._out}
        for n in self._out:
            slot.buffers[n].copy_to_host(outs[n], slot.stream)
        slot.stream.synchronize()
        return outs

    def _execute(self, slot: _Slot) -> None:
        context = slot.context
        if not context.execute_async_v3(slot.stream.handle):
            raise BackendError(f"TensorRT failed to run {self.path.name} (execute_async_v3 returned false)")

    # -- timing ---------------------------------------------------------------------
    def benchmark(self, batch_sizes: Sequence[int] | None = None, iterations: int = 200, warmup: int = 20,
                  feed: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> list[dict]:
        """Latency (CUDA events: median/p90/p99) and throughput for each batch size, using every
        context concurrently. Inputs are the given feed (repeated/truncated) or random data."""
        from .cuda import Event

        rng = np.random.default_rng(seed)
        sizes = list(batch_sizes or [self.max_batch])
        results = []
        for bs in sizes:
            if not (self.min_batch <= bs <= self.max_batch):
                raise InputMismatchError(f"batch size {bs} is outside the engine's profile "
                                         f"{self.min_batch}..{self.max_batch}")
            host = self._host_inputs(bs, feed, rng)
            for slot in self.slots:
                self._load(slot, host)
            for _ in range(warmup):
                for slot in self.slots:
                    self._execute(slot)
            for slot in self.slots:
                slot.stream.synchronize()
            events = [[(Event(), Event()) for _ in range(iterations)] for _ in self.slots]
            t0 = time.perf_counter()
            for it in range(iterations):
                for s, slot in enumerate(self.slots):
                    start, end = events[s][it]
                    start.record(slot.stream)
                    self._execute(slot)
                    end.record(slot.stream)
            for slot in self.slots:
                slot.stream.synchronize()
            wall = time.perf_counter() - t0
            lat = [end.elapsed_ms(start) for per in events for (start, end) in per]
            for per in events:
                for a, b in per:
                    a.close()
                    b.close()
            row = {"batch_size": bs, "contexts": len(self.slots), "iterations": iterations, "warmup": warmup,
                   **percentiles(lat),
                   "throughput_per_s": bs * iterations * len(self.slots) / wall if wall > 0 else None,
                   "wall_s": wall}
            results.append(row)
        return results

    def _host_inputs(self, bs: int, feed, rng) -> dict[str, np.ndarray]:
        """Inputs of batch *bs*: *feed* repeated / truncated, else random (floats) or zeros."""
        host = {}
        for n in self._in:
            _, opt, _ = self.profile_shapes(n)
            shp = (bs, *opt[1:]) if self.dynamic else self._shape[n]
            if feed is not None and n in feed:
                src = np.asarray(feed[n])
                reps = -(-bs // src.shape[0])
                host[n] = np.ascontiguousarray(np.concatenate([src] * reps)[:bs].astype(self._np[n]))
            elif self._np[n].kind == "f":
                host[n] = rng.standard_normal(shp).astype(self._np[n])
            else:
                host[n] = np.zeros(shp, dtype=self._np[n])
        return host

    def _load(self, slot: _Slot, host: Mapping[str, np.ndarray]) -> None:
        self._set_shapes(slot, {k: v.shape for k, v in host.items()})
        for n in self._in:
            slot.buffers[n].copy_from_host(host[n], slot.stream)

    def layer_times(self, feed: Mapping[str, np.ndarray] | None = None, batch_size: int = 1,
                    iterations: int = 20, warmup: int = 5, seed: int = 0) -> dict[str, list[float]]:
        """Layer name -> milliseconds per run, from TensorRT's profiler
        (:func:`.profiling.collect_layer_times`) on the first context, at *batch_size* with
        *feed* (repeated / truncated) or random inputs. The profiler stays on that context."""
        from .profiling import collect_layer_times

        slot = self.slots[0]
        self._load(slot, self._host_inputs(batch_size, feed, np.random.default_rng(seed)))

        def run() -> None:
            self._execute(slot)
            slot.stream.synchronize()

        return collect_layer_times(self._trt, slot.context, run, iterations, warmup)

    def close(self) -> None:
        for slot in getattr(self, "slots", []):
            for b in slot.buffers.values():
                b.free()
            slot.stream.close()
        self.slots = []


def _load_error(path):
    from ...errors import EngineMismatchError
    return EngineMismatchError(f"TensorRT could not deserialize {path} (built by another TensorRT version, "
                               f"for another GPU, or not an engine); rebuild it with calib build")


def benchmark(path, batch_sizes=None, contexts: int = 1, iterations: int = 200, warmup: int = 20, feed=None,
              log=None) -> tuple[dict, list[dict]]:
    with TrtEngine(path, contexts=contexts, log=log) as eng:
        rows = eng.benchmark(batch_sizes, iterations=iterations, warmup=warmup, feed=feed)
        return dict(eng.info.extra, precision=eng.info.precision), rows
