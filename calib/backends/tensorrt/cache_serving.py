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

import json
from pathlib import Path

from ...errors import CacheError, CacheMismatchError
from ...utils import atomic_write_bytes, atomic_write_text, sha256_bytes

#: our calibrator classes and the algorithm names TensorRT writes in cache headers
TRT_ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}


def sidecar_path(cache_path: Path) -> Path:
    return Path(str(cache_path) + ".json")


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
        sidecar = cache_mod.read_sidecar(side)
        cache_mod.check_provenance(sidecar, self.model)
        return cache_mod.read_cache(self.path)

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
        """Save TensorRT's cache (atomically) with a sidecar; returns the path (None: no path set)."""
        from ... import cache as cache_mod

        if self.path is None:
            return None
        data = bytes(data)
        try:
            cache = cache_mod.parse_cache(data)
        except CacheError as exc:
            raise CacheError(f"TensorRT wrote a calibration cache calib cannot parse: {exc}") from None
        sidecar = cache_mod.make_sidecar(model=self.model, cache=cache, data=self.data_description)
        sidecar = dict(sidecar)
        sidecar.setdefault("written_by", "tensorrt calibrator")
        sidecar["tensorrt_cache_sha256"] = sha256_bytes(data)
        # check both targets before writing either
        from ...utils import check_writable
        check_writable(self.path, self.overwrite)
        check_writable(sidecar_path(self.path), self.overwrite)
        atomic_write_bytes(self.path, data, overwrite=self.overwrite)
        atomic_write_text(sidecar_path(self.path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n",
                          overwrite=self.overwrite)
        self.written = self.path
        return self.path
