"""INT8 calibrators for TensorRT's implicit quantization (8.6-10.x).

:func:`make_calibrator` creates, at run time, a class subclassing the TensorRT base class
(``trt.IInt8EntropyCalibrator2`` or ``trt.IInt8MinMaxCalibrator``) and calling its
``__init__``. Batches come from any calib Dataset, are checked against the network's input
names/shapes/dtypes and copied into device buffers allocated once and reused
(:class:`calib.backends.tensorrt.cuda.HostToDevice`). The cache callbacks delegate to
:class:`calib.backends.tensorrt.cache_serving.CacheServer`.

Exceptions raised inside TensorRT's callbacks would be swallowed by TensorRT, so they are kept
in ``.error`` and re-raised by the builder after the build.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .cache_serving import CacheServer
from .cuda import HostToDevice, InputSpec


class CalibratorCore:
    """The calibrator's logic, independent of TensorRT (tested with a stand-in base class)."""

    def __init__(self, specs: Sequence[InputSpec], batches: Iterable[Mapping[str, np.ndarray]] | None,
                 batch_size: int, server: CacheServer | None, pinned: bool = True,
                 feeder_factory: Callable[..., HostToDevice] | None = None, on_batch=None):
        self.specs = list(specs)
        self.batch_size = int(batch_size)
        self.server = server
        self.pinned = pinned
        self._batches: Iterator | None = iter(batches) if batches is not None else None
        self._feeder_factory = feeder_factory or HostToDevice
        self.feeder: HostToDevice | None = None  # allocated at the first batch (not when a cache is served)
        self.error: BaseException | None = None
        self.batches_fed = 0
        self.skipped = 0
        self.on_batch = on_batch

    # TensorRT calls these ----------------------------------------------------
    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names, *args):
        if self.error is not None or self._batches is None:
            return None
        try:
            unknown = [n for n in names if n not in {s.name for s in self.specs}]
            if unknown:
                raise ValueError(f"TensorRT asked for unknown input(s) {unknown}")
            while True:
                try:
                    batch = next(self._batches)
                except StopIteration:
                    return None
                feed = getattr(batch, "feed", batch)
                n = next(iter(feed.values())).shape[0] if feed else 0
                if n != self.batch_size:
                    self.skipped += 1        # a last, partial batch cannot fill the fixed calibration shape
                    continue
                break
            if self.feeder is None:
                self.feeder = self._feeder_factory(self.specs, pinned=self.pinned)
            ptrs = self.feeder.feed(feed)
            self.batches_fed += 1
            if self.on_batch:
                self.on_batch(self.batches_fed)
            return [int(ptrs[n]) for n in names]
        except BaseException as exc:  # keep it; TensorRT would swallow it
            self.error = exc
            return None

    def read_calibration_cache(self, *args):
        if self.server is None:
            return None
        try:
            return self.server.read()
        except BaseException as exc:
            self.error = exc
            return None

    def write_calibration_cache(self, cache, *args):
        if self.server is None:
            return None
        try:
            self.server.write(bytes(memoryview(cache)))
        except BaseException as exc:
            self.error = exc
        return None

    def close(self) -> None:
        if self.feeder is not None:
            self.feeder.close()
            self.feeder = None


def calibrator_base(trt, algorithm: str):
    """The TensorRT base class for *algorithm* ("entropy" | "minmax")."""
    if algorithm == "entropy":
        return trt.IInt8EntropyCalibrator2
    if algorithm == "minmax":
        return trt.IInt8MinMaxCalibrator
    raise ValueError(f"unknown calibrator algorithm {algorithm!r} (entropy or minmax)")


def make_calibrator(trt, algorithm: str, specs: Sequence[InputSpec], batches, batch_size: int,
                    server: CacheServer | None, pinned: bool = True, feeder_factory=None, on_batch=None):
    """An instance of a class created here that subclasses the TensorRT calibrator base class."""
    base = calibrator_base(trt, algorithm)

    def __init__(self):
        base.__init__(self)  # pybind11 trampolines need the base constructor called
        CalibratorCore.__init__(self, specs, batches, batch_size, server, pinned, feeder_factory, on_batch)

    namespace = {k: v for k, v in vars(CalibratorCore).items()
                 if callable(v) and not k.startswith("__")}
    namespace["__init__"] = __init__
    namespace["__doc__"] = f"calib calibrator over trt.{base.__name__} (see CalibratorCore)"
    # single inheritance from the pybind11 class; the logic is copied in, not mixed in
    cls = type(f"Calib{base.__name__[1:]}", (base,), namespace)
    return cls()
