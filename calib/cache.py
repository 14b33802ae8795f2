"""TensorRT calibration caches (the text format TensorRT reads and writes) and their provenance.

Format, as TensorRT writes it (``IInt8Calibrator::writeCalibrationCache``)::

    TRT-100900-EntropyCalibration2
    input: 3c010a14
    (Unnamed Layer* 64) [Shuffle]_output: 3d1e2a6b

* line 1: ``TRT-<version>-<algorithm>``; ``<version>`` is TensorRT's version number
  (major*10000 + minor*100 + patch for 10.x, e.g. ``100900``; 8.x wrote ``8601``). TensorRT
  ignores a cache whose algorithm does not match the calibrator it is given, so the header must
  name the calibrator class used to load it (``EntropyCalibration2`` for IInt8EntropyCalibrator2,
  ``MinMaxCalibration`` for IInt8MinMaxCalibrator, ``EntropyCalibration``, ``LegacyCalibration``).
* one line per tensor: ``<name>: <hex>``, where ``<hex>`` is the big-endian IEEE-754 float32 bit
  pattern of ``scale = amax / 127``.

What we write: version ``DEFAULT_TRT_VERSION`` (100900, TensorRT 10.9) unless told otherwise;
lowercase 8-digit hex; tensors sorted by name (Unicode code points), so the bytes depend only
on the scales; LF line ends, a final newline. The same scales always give the same bytes.

What we read (``parse_cache``): any version number and algorithm name; hex of 1..8 digits in
either case (TensorRT prints ``0`` for a zero scale); names with spaces, brackets and colons
(the line is split at its *last* ``": "``); CRLF; blank lines. Anything else raises
:class:`~calib.errors.CacheError` naming the line; no other exception escapes.

The sidecar ``<cache>.json`` (``make_sidecar`` / ``write_sidecar`` / ``read_sidecar``) records
where a cache came from: model hash and tensor list, data description, preprocessing and its
digest, sample count and seed, algorithm and parameters, the calib version and the creation
time (the only field that changes between identical runs), and the sha256 of the cache file
itself. ``check_provenance`` compares it with a model and with the cache, and raises
:class:`~calib.errors.CacheMismatchError` saying what changed (a cache that is not the one its
sidecar describes, for example one of another run beside this run's sidecar, is refused by name).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import CacheError, CacheMismatchError
from .utils import atomic_write_all, atomic_write_bytes, sha256_bytes

DEFAULT_TRT_VERSION = 100900
SIDECAR_FORMAT = "calib-cache-sidecar"
SIDECAR_VERSION = 1

# our algorithm name -> calibrator name TensorRT puts in the header
TRT_ALGORITHMS = {
    "entropy": "EntropyCalibration2",
    "max": "MinMaxCalibration",
    "percentile": "EntropyCalibration2",
    "mse": "EntropyCalibration2",
}

_HEADER = re.compile(r"TRT-(\d{1,18})-(\S+)")
_HEX = re.compile(r"[0-9a-fA-F]{1,8}")


def trt_algorithm_name(algorithm: str) -> str:
    """Header name for one of our algorithms (percentile/mse load through IInt8EntropyCalibrator2)."""
    return TRT_ALGORITHMS.get(algorithm, algorithm)


def scale_to_hex(scale: float) -> str:
    """8 lowercase hex digits of the big-endian float32 bits of *scale*."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", int(text, 16).to_bytes(4, "big"))[0]


@dataclass
class CalibrationCache:
    """Per-tensor scales (``amax / 127``, float32 values) plus the header fields."""

    scales: dict[str, float] = field(default_factory=dict)
    algorithm: str = "EntropyCalibration2"
    version: int = DEFAULT_TRT_VERSION

    def __post_init__(self):
        self.scales = dict(self.scales)
        self.version = int(self.version)

    @classmethod
    def from_amax(cls, amax: Mapping[str, float], algorithm: str = "EntropyCalibration2",
                  version: int = DEFAULT_TRT_VERSION) -> "CalibrationCache":
        return cls({k: float(v) / 127.0 for k, v in amax.items()}, algorithm, version)

    @property
    def amax(self) -> dict[str, float]:
        """``{tensor: scale * 127}`` with the scale rounded to float32 as stored."""
        return {k: _f32(v) * 127.0 for k, v in self.scales.items()}

    @property
    def header(self) -> str:
        return f"TRT-{self.version}-{self.algorithm}"

    def __len__(self) -> int:
        return len(self.scales)

    def to_bytes(self) -> bytes:
        return format_cache(self)


def _f32(v: float) -> float:
    return struct.unpack(">f", struct.pack(">f", v))[0]


# --- writing -----------------------------------------------------------------
def format_cache(cache: CalibrationCache) -> bytes:
    """The cache file's bytes (deterministic: depends only on version, algorithm and scales)."""
    if not re.fullmatch(r"\S+", cache.algorithm or ""):
        raise CacheError(f"calibration algorithm name must be one word, got {cache.algorithm!r}")
    if cache.version < 0:
        raise CacheError(f"TensorRT version must be a non-negative number, got {cache.version}")
    lines = [cache.header]
    for name in sorted(cache.scales):
        scale = cache.scales[name]
        if not name or "\n" in name or "\r" in name:
            raise CacheError(f"tensor name {name!r} cannot be written to a calibration cache")
        try:
            s = float(scale)
        except (TypeError, ValueError):
            raise CacheError(f"tensor '{name}': scale {scale!r} is not a number") from None
        if not math.isfinite(s) or s < 0:
            raise CacheError(f"tensor '{name}': scale {s} must be finite and >= 0")
        try:
            hx = scale_to_hex(s)
        except OverflowError:
            raise CacheError(f"tensor '{name}': scale {s} does not fit a float32") from None
        lines.append(f"{name}: {hx}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_cache(path: str | os.PathLike, cache: CalibrationCache, overwrite: bool = False) -> Path:
    """Write *cache* atomically; refuses to replace an existing file unless *overwrite*."""
    data = format_cache(cache)
    return atomic_write_bytes(path, data, overwrite=overwrite)


# --- reading -----------------------------------------------------------------
def parse_cache(data: bytes | bytearray | str, source: str = "calibration cache") -> CalibrationCache:
    """Parse TensorRT's cache text; raises :class:`CacheError` (with the line number) on bad input."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            line = bytes(data)[: exc.start].count(b"\n") + 1
            raise CacheError(f"{source}: line {line}: not UTF-8 text (a TensorRT cache is text)") from None
    elif isinstance(data, str):
        text = data
    else:
        raise CacheError(f"{source}: expected bytes or text, got {type(data).__name__}")
    if text.startswith("\ufeff"):
        text = text[1:]
    header = None
    scales: dict[str, float] = {}
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue
        if header is None:
            m = _HEADER.fullmatch(line.strip())
            if not m:
                shown = line.strip()[:60]
                raise CacheError(f"{source}: line {lineno}: expected a header like 'TRT-100900-EntropyCalibration2', "
                                 f"got {shown!r}")
            header = (int(m.group(1)), m.group(2))
            continue
        name, sep, hx = line.rpartition(": ")
        if not sep:
            name, sep, hx = line.rpartition(":")
        hx = hx.strip()
        if not sep or not name:
            raise CacheError(f"{source}: line {lineno}: expected '<tensor>: <hex scale>', got {line[:60]!r}")
        if not _HEX.fullmatch(hx):
            raise CacheError(f"{source}: line {lineno}: tensor '{name[:60]}': scale {hx[:20]!r} is not 1-8 hex digits")
        scale = hex_to_scale(hx)
        if not math.isfinite(scale) or scale < 0:
            raise CacheError(f"{source}: line {lineno}: tensor '{name[:60]}': scale {scale} must be finite and >= 0")
        if name in scales:
            raise CacheError(f"{source}: line {lineno}: tensor '{name[:60]}' appears twice")
        scales[name] = scale
    if header is None:
        raise CacheError(f"{source}: empty; expected a header like 'TRT-100900-EntropyCalibration2'")
    return CalibrationCache(scales, algorithm=header[1], version=header[0])


def read_cache(path: str | os.PathLike) -> CalibrationCache:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CacheError(f"calibration cache not found: {p}") from None
    except IsADirectoryError:
        raise CacheError(f"calibration cache path is a folder: {p}") from None
    except OSError as exc:
        raise CacheError(f"cannot read calibration cache {p}: {exc.strerror or exc}") from None
    return parse_cache(data, source=str(p))


def amax_from_cache(cache: "CalibrationCache | str | os.PathLike") -> dict[str, float]:
    """``{tensor: amax}`` (= scale * 127) from a cache object or file."""
    if not isinstance(cache, CalibrationCache):
        cache = read_cache(cache)
    return cache.amax


# --- provenance sidecar --------------------------------------------------------
def sidecar_path(cache_path: str | os.PathLike) -> Path:
    p = Path(cache_path)
    return p if p.suffix == ".json" else p.with_name(p.name + ".json")


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _canonical(obj: Any) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def model_tensors(model) -> list[str]:
    """Tensor names a cache may hold for *model*: its inputs and every activation tensor."""
    names = [t.name for t in model.inputs]
    seen = set(names)
    return names + [t for t in model.activation_tensors() if t not in seen]


def make_sidecar(*, model=None, cache: CalibrationCache | None = None, data=None, preprocess=None,
                 algorithm: str | None = None, params: Mapping | None = None, samples: int | None = None,
                 seed: int | None = None, created: str | None = None) -> dict:
    """The provenance record of a cache (a JSON-able dict)."""
    from .version import __version__

    if data is not None and hasattr(data, "describe"):
        data = data.describe()
    if preprocess is None and isinstance(data, Mapping) and isinstance(data.get("preprocess"), Mapping):
        preprocess = data["preprocess"]
    if preprocess is not None and hasattr(preprocess, "to_dict"):
        pre_dict = preprocess.to_dict()
        digest = preprocess.digest() if hasattr(preprocess, "digest") else None
    else:
        pre_dict = preprocess
        digest = None
    if pre_dict is not None and digest is None:
        digest = hashlib.sha256(_canonical(pre_dict).encode()).hexdigest()
    rec: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "calib_version": __version__,
        "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": None,
        "cache": None,
        "data": _jsonable(data),
        "preprocess": {"spec": _jsonable(pre_dict), "digest": digest} if pre_dict is not None else None,
        "samples": samples,
        "seed": seed,
        "algorithm": {"name": algorithm, "params": _jsonable(dict(params or {}))},
    }
    if model is not None:
        from .model import load_model

        m = load_model(model)
        rec["model"] = {"name": m.name, "sha256": m.sha256, "tensors": model_tensors(m)}
    if cache is not None:
        body = format_cache(cache)
        rec["cache"] = {"trt_version": cache.version, "trt_algorithm": cache.algorithm,
                        "sha256": sha256_bytes(body), "tensors": sorted(cache.scales)}
    return rec


def sidecar_bytes(sidecar: Mapping) -> bytes:
    """The sidecar as written to disk (sorted keys, indent 2, trailing newline)."""
    return (json.dumps(_jsonable(sidecar), indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_sidecar(cache_path: str | os.PathLike, sidecar: Mapping, overwrite: bool = False) -> Path:
    """Write *sidecar* (from :func:`make_sidecar`) beside *cache_path* as ``<cache>.json``."""
    return atomic_write_bytes(sidecar_path(cache_path), sidecar_bytes(sidecar), overwrite=overwrite)


def write_cache_with_sidecar(path: str | os.PathLike, cache: CalibrationCache, sidecar: Mapping,
                             overwrite: bool = False) -> tuple[Path, Path]:
    """Write both files as one set (:func:`calib.utils.atomic_write_all`): both or neither."""
    written = atomic_write_all([(path, format_cache(cache)), (sidecar_path(path), sidecar_bytes(sidecar))],
                               overwrite=overwrite)
    return written[0], written[1]


def read_sidecar(path: str | os.PathLike) -> dict:
    """Read ``<cache>.json`` (give the cache path or the .json path)."""
    p = sidecar_path(path)
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"provenance sidecar not found: {p}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CacheError(f"cannot read provenance sidecar {p}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if not isinstance(rec, dict) or rec.get("format") != SIDECAR_FORMAT:
        raise CacheError(f"{p} is not a calib cache sidecar (format is not '{SIDECAR_FORMAT}')")
    if not isinstance(rec.get("version"), int) or rec["version"] > SIDECAR_VERSION:
        raise CacheError(f"{p}: sidecar version {rec.get('version')!r} is newer than this calib understands "
                         f"({SIDECAR_VERSION}); upgrade calib")
    return rec


def _few(names: list[str], n: int = 3) -> str:
    shown = ", ".join(f"'{x}'" for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check_provenance(sidecar: "Mapping | str | os.PathLike", model,
                     cache: "CalibrationCache | str | os.PathLike | None" = None) -> None:
    """Raise :class:`CacheMismatchError` if the cache was made for another model (or tensor set), or
    is not the cache its sidecar describes.

    Compares the model hash and the model's tensor names with those recorded in the sidecar. The
    cache (*cache*: a :class:`CalibrationCache` or the cache file; by default the file beside a
    *sidecar* given as a path, ``m.cache`` for ``m.cache.json``, when it exists) must have the
    sha256 the sidecar records (a file is hashed as it is; a cache object as calib writes it) and
    the tensors it lists: a cache from another run beside this sidecar (an interrupted write, a
    file copied over) is refused, naming the file.
    """
    from .model import load_model

    side_file = None if isinstance(sidecar, Mapping) else sidecar_path(sidecar)
    rec = sidecar if side_file is None else read_sidecar(side_file)
    rec_model = rec.get("model") or {}
    if not isinstance(rec_model, Mapping) or "sha256" not in rec_model:
        raise CacheError("provenance sidecar records no model hash; cannot check it")
    cache_file = None
    if cache is None and side_file is not None and side_file.name.endswith(".json"):
        guess = side_file.with_name(side_file.name.removesuffix(".json"))
        cache_file = guess if guess.is_file() else None
    elif cache is not None and not isinstance(cache, CalibrationCache):
        cache_file = Path(cache)
    rec_cache = rec.get("cache") if isinstance(rec.get("cache"), Mapping) else None
    if cache_file is not None:
        try:
            data = cache_file.read_bytes()
        except OSError as exc:
            raise CacheError(f"cannot read calibration cache {cache_file}: {exc.strerror or exc}") from None
        cache = parse_cache(data, source=str(cache_file))
        digest, what = sha256_bytes(data), str(cache_file)
    elif cache is not None:
        digest, what = sha256_bytes(format_cache(cache)), "the calibration cache"
    problems = []
    if cache is not None and rec_cache is not None and rec_cache.get("sha256") and digest != rec_cache["sha256"]:
        where = f" {side_file}" if side_file is not None else ""
        problems.append(f"{what} does not match its sidecar{where}: its sha256 is {digest[:12]}..., the sidecar "
                        f"describes a cache with {str(rec_cache['sha256'])[:12]}... (not the same run's files; "
                        f"recompute them together)")
    m = load_model(model)
    if rec_model["sha256"] != m.sha256:
        problems.append(f"model hash differs (cache made for '{rec_model.get('name')}' "
                        f"sha256 {str(rec_model['sha256'])[:12]}..., this model '{m.name}' is {m.sha256[:12]}...)")
    old = list(rec_model.get("tensors") or [])
    new = model_tensors(m)
    missing = [t for t in old if t not in set(new)]
    added = [t for t in new if t not in set(old)]
    if missing:
        problems.append(f"{len(missing)} tensor(s) of the cache's model missing from this model: {_few(missing)}")
    if added:
        problems.append(f"{len(added)} tensor(s) of this model unknown to the cache's model: {_few(added)}")
    if cache is not None and rec_cache is not None:
        listed = set(rec_cache.get("tensors") or [])
        have = set(cache.scales)
        if listed != have:
            gone = sorted(listed - have)
            extra = sorted(have - listed)
            msg = "cache tensors differ from those its sidecar lists"
            if gone:
                msg += f"; missing {_few(gone)}"
            if extra:
                msg += f"; added {_few(extra)}"
            problems.append(msg)
    if problems:
        raise CacheMismatchError("; ".join(problems))
