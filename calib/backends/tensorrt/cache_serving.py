"""Serving a GPU-free calibration cache to TensorRT, and saving the one TensorRT computes.

Pure Python (no TensorRT): the calibrator's ``read_calibration_cache`` /
``write_calibration_cache`` delegate here, so the logic is tested on any machine.

* :meth:`CacheServer.read` returns cache bytes only when a cache exists at the path AND its
  sidecar's provenance matches the model being built (:func:`calib.cache.check_provenance`);
  TensorRT then skips calibration. The header is rewritten to the running TensorRT's version
  and the calibrator's algorithm, because TensorRT ignores a cache whose header names another
  algorithm; the scales themselves are served unchanged.
* :meth:`CacheServer.write` saves TensorRT's cache atomically, with a sidecar.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CacheError, CacheMismatchError
from ...utils import sha256_bytes

#: our calibrator classes and the algorithm names TensorRT writes in cache headers
TRT_ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}


def sidecar_path(cache_path: Path) -> Path:
    from ...cache import sidecar_path as _sp
    return _sp(cache_path)


def calibrator_for_cache(algorithm_name: str | None) -> str:
    """Which calibrator ("entropy" | "minmax") should serve a cache whose header says *algorithm_name*.
    Caches computed by ``calib calibrate`` with max use MinMax; all others (entropy, percentile,
    mse) are served through EntropyCalibrator2 (the scales are used as given either way)."""
    return "minmax" if (algorithm_name or "").lower().startswith("minmax") else "entropy"


class CacheServer:
    """Reads/writes one calibration cache path for one model build."""

    def __init__(self, path, model, trt_cache_version: int, calibrator: str = "entropy",
                 overwrite: bool = False, data_description: dict | None = None, serve: bool = True):
        self.path = Path(path) if path is not None else None
        self.model = model
        self.trt_cache_version = int(trt_cache_version)
        self.algorithm = TRT_ALGORITHMS[calibrator]
        self.overwrite = overwrite
        self.data_description = data_description
        self.serve = serve
        self.served: bytes | None = None
        self.written: Path | None = None
        self.reads = 0

    # -- checks before the build ---------------------------------------------
    def load_checked(self):
        """Read and provenance-check the cache; return the CalibrationCache or None if absent."""
        from ... import cache as cache_mod

        if self.path is None or not self.path.exists():
            return None
        side = sidecar_path(self.path)
        if not side.exists():
            raise CacheMismatchError(
                f"{self.path}: no sidecar {side.name} beside it, so its provenance (which model it was "
                f"computed for) cannot be checked; recompute it with calib calibrate")
        cache = cache_mod.read_cache(self.path)
        try:   # the file itself is hashed: a cache of another run beside this sidecar is refused
            cache_mod.check_provenance(side, self.model, self.path)
        except CacheMismatchError as exc:
            raise CacheMismatchError(f"{self.path} does not belong to {getattr(self.model, 'name', 'this model')}: "
                                     f"{exc}") from None
        return cache

    def trt_bytes(self, cache) -> bytes:
        """*cache* formatted with the running TensorRT's header."""
        from ... import cache as cache_mod

        relabeled = cache_mod.CalibrationCache(scales=dict(cache.scales), algorithm=self.algorithm,
                                               version=self.trt_cache_version)
        data = cache_mod.format_cache(relabeled)
        return data.encode() if isinstance(data, str) else bytes(data)

    # -- the calibrator's callbacks ------------------------------------------
    def read(self) -> bytes | None:
        self.reads += 1
        if not self.serve:
            return None
        cache = self.load_checked()
        if cache is None:
            return None
        self.served = self.trt_bytes(cache)
        return self.served

    def write(self, data: bytes) -> Path | None:
        """Save TensorRT's cache (atomically, deterministic format) with a provenance sidecar."""
        from ... import cache as cache_mod

        if self.path is None:
            return None
        data = bytes(data)
        try:
            cache = cache_mod.parse_cache(data, source="TensorRT's calibration cache")
        except CacheError as exc:
            raise CacheError(f"TensorRT wrote a calibration cache calib cannot parse: {exc}") from None
        sidecar = dict(cache_mod.make_sidecar(model=self.model, cache=cache, data=self.data_description,
                                              algorithm=f"tensorrt:{cache.algorithm}"))
        sidecar["tensorrt_cache_sha256"] = sha256_bytes(data)
        cache_mod.write_cache_with_sidecar(self.path, cache, sidecar, overwrite=self.overwrite)
        self.written = self.path
        return self.path
