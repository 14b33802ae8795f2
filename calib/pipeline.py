"""The calibration pipeline: read -> collect statistics -> amax -> cache + Q/DQ model -> summary.

:func:`calibrate` is the Python API behind ``calibrate`` / ``calib calibrate``; its options are
a :class:`CalibrationConfig`, validated when it is made. Every artifact is computed in memory
first and written at the end as one set (:func:`calib.utils.atomic_write_all`: all of them or none,
also under SIGKILL or a concurrent run into the same folder), after checking before any work that
the folder can be written and that none of them would overwrite a file without ``force``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import sidecar_path
from .errors import CalibError, ConfigError, EmptyDatasetError
from .model import Model, load_model
from .smooth import DEFAULT_ALPHA
from .utils import atomic_write_all, check_outputs, sha256_bytes
from .version import __version__

ALGORITHMS = ("entropy", "max", "percentile", "mse", "auto")
TARGETS = ("tensorrt", "onnxruntime")
SMOOTH_PROBE_SAMPLES = 64     # samples whose per-channel ranges decide the smoothing factors
BIAS_PROBE_SAMPLES = 64       # samples whose mean INT8 error per channel corrects the biases
# --algorithm auto: the candidates, in the order that wins ties (TensorRT's default first), the
# calibration samples they are scored on, and the metric per task (else SQNR of the outputs)
AUTO_CANDIDATES = ("entropy", "percentile", "mse", "max")
AUTO_SAMPLES = 64
AUTO_METRICS = {"classification": "kl_divergence", "ctc": "ctc_agreement"}


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class CalibrationConfig:
    """The options of one calibration (what :func:`calibrate` computes, not where data or outputs are).

    Validated when made, in one place: a bad value raises :class:`calib.errors.ConfigError` (a
    :class:`CalibError`) with one line naming the field. ``config.replace(**options)`` gives a copy
    with some fields changed (validated again; an unknown name is an error listing the valid ones).

    - *algorithm*: ``entropy`` (TensorRT's default), ``max``, ``percentile``, ``mse``, or ``auto``
      (every one of those four from the same statistics, scored against FP32 on calibration samples
      set aside from the ones its ranges are fitted to, the best kept; see :func:`_select_algorithm`).
    - *percentile*: with ``percentile`` (and ``auto``), the percentile of |x| kept, in (0, 100].
    - *samples*: calibration samples drawn from the dataset's ``calib`` split (None: all of them);
      *eval_samples*: held-out samples from its ``eval`` split for the INT8 vs FP32 summary, when
      *evaluate*.
    - *batch_size*, *seed* (the seeded sample choice), *threads* (ONNX Runtime intra-op threads,
      None: all cores).
    - *target*: Q/DQ placement, ``tensorrt`` or ``onnxruntime``; *trt_version*: the cache header's
      version field (None: ``calib.cache.DEFAULT_TRT_VERSION``).
    - *plan*: a :class:`calib.plan.PrecisionPlan`, a path to one, or a dict; the layers it marks
      ``fp32`` / ``fp16`` stay out of INT8 in the Q/DQ model (and in the held-out comparison); the
      cache still covers every tensor, since TensorRT applies the plan itself at build time.
    - *smooth*: SmoothQuant's alpha in [0, 1] (None or False: off). It evens out the channels of the
      tensors :mod:`calib.smooth` can rescale exactly, in the Q/DQ model only: a short pass over up
      to ``SMOOTH_PROBE_SAMPLES`` calibration samples measures each such tensor's per-channel range,
      and the statistics pass then observes both the original tensors (for the cache, which
      describes the unmodified model TensorRT parses) and their smoothed values (for the Q/DQ
      model, whose constants carry the factors).
    - *bias_correction*: INT8's mean error on each output channel of every INT8 Conv, ConvTranspose
      and Gemm, measured layer by layer on up to ``BIAS_PROBE_SAMPLES`` calibration samples (see
      :mod:`calib.qdq`), is subtracted from its bias in the Q/DQ model. The cache is the same either
      way: TensorRT's implicit calibration takes scales only.
    """

    algorithm: str = "entropy"
    percentile: float = 99.99
    samples: int | None = 500
    batch_size: int = 16
    seed: int = 0
    target: str = "tensorrt"
    trt_version: int | None = None
    evaluate: bool = True
    eval_samples: int | None = 500
    threads: int | None = None
    plan: Any = None
    smooth: float | None = DEFAULT_ALPHA
    bias_correction: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ConfigError:
            return ConfigError(name, f"must be {want}, got {getattr(self, name)!r}")

        for name, known in (("algorithm", ALGORITHMS), ("target", TARGETS)):
            if getattr(self, name) not in known:
                raise ConfigError(name, f"{getattr(self, name)!r} is unknown; choose one of {', '.join(known)}")
        if not (_is_real(self.percentile) and 0.0 < self.percentile <= 100.0):
            raise bad("percentile", "a number in (0, 100]")
        for name in ("samples", "eval_samples", "threads"):
            v = getattr(self, name)
            if v is not None and not (_is_int(v) and v >= 1):
                raise bad(name, "an integer of at least 1 (or None)")
        if not (_is_int(self.batch_size) and self.batch_size >= 1):
            raise bad("batch_size", "an integer of at least 1")
        if not _is_int(self.seed):
            raise bad("seed", "an integer")
        if self.trt_version is not None and not (_is_int(self.trt_version) and self.trt_version >= 1):
            raise bad("trt_version", "a positive integer such as 100900 (or None)")
        for name in ("evaluate", "bias_correction"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "True or False")
        if self.smooth is False:
            object.__setattr__(self, "smooth", None)
        if self.smooth is not None and not (_is_real(self.smooth) and 0.0 <= self.smooth <= 1.0):
            raise bad("smooth", "a number in [0, 1] (or None for no smoothing)")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(cls, config: CalibrationConfig | Mapping | None = None, **options) -> CalibrationConfig:
        """*config* (None: the defaults; a dict: its fields) with *options* changed."""
        if config is None:
            config = cls()
        elif isinstance(config, Mapping):
            config = cls().replace(**config)
        elif not isinstance(config, cls):
            raise CalibError(f"config must be a CalibrationConfig or a dict of its fields, got {type(config).__name__}")
        return config.replace(**options)

    def replace(self, **options) -> CalibrationConfig:
        """A copy with *options* (field names) changed, validated again."""
        unknown = sorted(set(options) - set(self.names()))
        if unknown:
            raise CalibError(f"unknown calibration option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"valid: {', '.join(self.names())}")
        return dataclasses.replace(self, **options) if options else self


@dataclass
class CalibrationResult:
    """What :func:`calibrate` produced."""

    amax: dict[str, float]
    scales: dict[str, float]
    paths: dict[str, Path]
    summary: dict[str, Any]
    qdq_model: Model | None = None
    observers: dict = field(default_factory=dict, repr=False)
    smoothing: dict = field(default_factory=dict, repr=False)   # tensor -> per-channel factors
    # the Q/DQ model's ranges: amax with each smoothed tensor's range replaced by that of its
    # smoothed values (what quantize_model takes together with the smoothing factors)
    qdq_amax: dict = field(default_factory=dict, repr=False)
    # the bytes of the TensorRT cache and its sidecar (written or not)
    cache_files: dict = field(default_factory=dict, repr=False)

    def summary_lines(self) -> list[str]:
        return list(self.summary.get("lines", []))


STATISTICS_FORMAT = "calib-statistics-1"


@dataclass
class Statistics:
    """What :func:`calibrate`'s pass over the calibration samples gathers (:func:`gather_statistics`):
    the channel smoothing factors and the observers of every observed tensor, from which every
    algorithm's ranges follow. Collected once, they serve any number of calibrations of the same
    samples (``calibrate(..., statistics=)``), here or, through :meth:`to_bytes` /
    :meth:`from_bytes` (NumPy arrays, no pickle), in another process or a later run.

    - *parts*: ``(observers, smoothed twins' observers)`` per part of the samples: one part, or
      for ``--algorithm auto`` the samples its ranges are fitted to and the *auto_samples* it
      scores the candidates on (merged exactly for any other algorithm: :meth:`merged`);
    - *factors*: tensor -> per-channel smoothing factors; *smoothing*: the summary's smoothing
      entry (None: smoothing off);
    - *ids*: the calibration samples' ids; *histogram*: False when only ranges were observed
      (enough for ``max`` alone); *timing*: seconds of the smoothing probe and the collection.
    """

    parts: list
    factors: dict
    smoothing: dict | None
    ids: list
    auto_samples: int = 0
    histogram: bool = True
    timing: dict = field(default_factory=dict)

    def merged(self) -> tuple[dict, dict]:
        """``(observers, smoothed twins' observers)`` over all the samples."""
        return _merged(self.parts)

    def check(self, calib_ds, config: CalibrationConfig) -> None:
        """Raise :class:`CalibError` unless these statistics are what :func:`calibrate` would collect
        for *config* on *calib_ds*: the same samples, the same smoothing alpha, histograms unless
        the algorithm is ``max``, and ``auto``'s selection samples observed apart."""
        def refuse(why: str) -> CalibError:
            return CalibError(f"the statistics given do not fit this calibration: {why}; collect them again")

        if list(calib_ds.ids) != list(self.ids):
            raise refuse(f"they were collected on other samples ({len(self.ids)} vs {len(calib_ds)} calibration "
                         f"samples)")
        alpha = None if self.smoothing is None else self.smoothing.get("alpha")
        if (alpha is None) != (config.smooth is None) or (alpha is not None and float(alpha) != float(config.smooth)):
            raise refuse(f"smoothing alpha {alpha} vs {config.smooth}")
        if config.algorithm != "max" and not self.histogram:
            raise refuse(f"{config.algorithm} needs histograms, and they hold ranges only")
        if config.algorithm == "auto" and self.auto_samples != min(AUTO_SAMPLES, len(calib_ds) // 2):
            raise refuse("auto needs its selection samples observed apart")

    def to_bytes(self) -> bytes:
        """The statistics as the bytes of a ``.npz`` archive of NumPy arrays only (no pickle)."""
        import io

        import numpy as np

        from .stats import dump_observers

        meta = {"format": STATISTICS_FORMAT, "smoothing": self.smoothing, "ids": list(self.ids),
                "auto_samples": self.auto_samples, "histogram": self.histogram, "timing": self.timing,
                "parts": len(self.parts), "factors": list(self.factors)}
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}
        for i, (obs, twins) in enumerate(self.parts):
            arrays[f"observers.{i}"] = np.frombuffer(dump_observers(obs), np.uint8)
            arrays[f"twins.{i}"] = np.frombuffer(dump_observers(twins), np.uint8)
        for i, f in enumerate(self.factors.values()):
            arrays[f"factor.{i}"] = np.asarray(f)
        buf = io.BytesIO()
        np.savez(buf, **arrays)     # the observers' archives are compressed already
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Statistics:
        """The statistics :meth:`to_bytes` wrote; ValueError for anything else."""
        import io
        import zipfile

        import numpy as np

        from .stats import load_observers

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode("utf-8"))
                if meta.get("format") != STATISTICS_FORMAT:
                    raise ValueError(f"not a {STATISTICS_FORMAT} archive")
                parts = [(load_observers(z[f"observers.{i}"].tobytes()), load_observers(z[f"twins.{i}"].tobytes()))
                         for i in range(int(meta["parts"]))]
                factors = {name: z[f"factor.{i}"].copy() for i, name in enumerate(meta["factors"])}
        except (OSError, EOFError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a readable {STATISTICS_FORMAT} archive: {exc}") from None
        return cls(parts=parts, factors=factors, smoothing=meta["smoothing"], ids=list(meta["ids"]),
                   auto_samples=int(meta["auto_samples"]), histogram=bool(meta["histogram"]),
                   timing=dict(meta.get("timing") or {}))


def gather_statistics(model, calib_ds, config: CalibrationConfig | None = None, *, prepared: Model | None = None,
                      auto: bool | None = None, histogram: bool | None = None, progress: bool = True,
                      collect=None) -> Statistics:
    """The pass of :func:`calibrate` over the calibration samples *calib_ds* (a dataset), for
    *config*'s smoothing, seed, batch size and threads:

    0. channel smoothing factors (Q/DQ model only), from a short per-channel range pass;
    1. the statistics of every float activation tensor (TensorRT's cache covers all of them).

    *auto* (default: the algorithm is ``auto``) observes up to ``AUTO_SAMPLES`` samples apart
    from the others (merged afterwards, exactly: the statistics do not depend on how the data
    were split), so that ``auto`` scores each candidate on samples its ranges were not fitted to;
    *histogram* (default: unless the algorithm is ``max``) keeps histograms, which every algorithm
    but ``max`` needs. *prepared*: ``calib.qdq.prepare(model)`` if the caller has it.

    *collect*: ``collect(model, part, label, histogram) -> {tensor: TensorObserver}``, the statistics
    of *model* (the model to observe, smoothed twins included) over the dataset *part* (*label*:
    its progress bar's label, or False); default :func:`calib.collect.collect_statistics` over its
    batches in this process. Another collector (Ray tasks over shards of *part*) must return the
    same observers.
    """
    from .collect import collect_statistics
    from .qdq import prepare

    config = config or CalibrationConfig()
    m = load_model(model)
    prepared = prepared if prepared is not None else prepare(m)
    auto = config.algorithm == "auto" if auto is None else auto
    histogram = config.algorithm != "max" if histogram is None else histogram
    seed, batch_size, threads = config.seed, config.batch_size, config.threads
    t0 = time.perf_counter()
    factors, observed_names, smooth_info = {}, {}, None
    obs_model = m
    if config.smooth is not None:
        factors, obs_model, observed_names, smooth_info = _smoothing(
            m, prepared, calib_ds, float(config.smooth), seed, batch_size, threads, progress)
    t_smooth = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_sel = min(AUTO_SAMPLES, len(calib_ds) // 2) if auto else 0
    if n_sel >= 1:
        parts = [(calib_ds.rest(n_sel, seed), "calibrating"), (calib_ds.subset(n_sel, seed), "calibrating (selection)")]
    else:
        parts = [(calib_ds, "calibrating")]
    if collect is None:
        def collect(model, part, label, histogram):
            return collect_statistics(model, part.batches(batch_size=batch_size, progress=label), threads=threads,
                                      progress=False, histogram=histogram)

    part_obs = []   # per part: (observers, observers of the smoothed twins)
    for part, label in parts:
        obs = collect(obs_model, part, label if progress else False, histogram)
        smoothed = {x: obs.pop(name) for x, name in observed_names.items() if name in obs}
        part_obs.append((obs, smoothed))
    kept = set().union(*(twins for _, twins in part_obs))
    factors = {x: f for x, f in factors.items() if x in kept}
    return Statistics(parts=part_obs, factors=factors, smoothing=smooth_info, ids=list(calib_ds.ids),
                      auto_samples=n_sel, histogram=histogram,
                      timing={"smooth": round(t_smooth, 3), "collect": round(time.perf_counter() - t0, 3)})


QDQ_SUFFIX = ".int8.onnx"
SUMMARY_SUFFIX = ".summary.json"


def output_paths(model_path: Path | None, out: str | os.PathLike | None, stem: str) -> dict[str, Path]:
    """Where :func:`calibrate` writes: in the folder *out* (default: the model's folder, else the
    working directory) ``<stem>.cache``, its sidecar ``<stem>.cache.json``, ``<stem>.int8.onnx``
    and ``<stem>.summary.json`` (named after the model, so that models calibrated into one folder
    keep their own)."""
    base = Path(out) if out is not None else (model_path.parent if model_path else Path.cwd())
    return {
        "cache": base / f"{stem}.cache",
        "sidecar": sidecar_path(base / f"{stem}.cache"),
        "qdq": base / f"{stem}{QDQ_SUFFIX}",
        "summary": base / f"{stem}{SUMMARY_SUFFIX}",
    }


def calibration_ids(qdq_path: str | os.PathLike) -> list[str] | None:
    """The ids of the samples :func:`calibrate` calibrated the Q/DQ model *qdq_path* on, as its
    sidecar records them (``<stem>.cache.json`` beside ``<stem>.int8.onnx``). None when the file is
    not named so, there is no readable sidecar beside it, or the sidecar lists no ids (older ones)."""
    p = Path(qdq_path)
    if not p.name.endswith(QDQ_SUFFIX):
        return None
    side = output_paths(None, p.parent, p.name[:-len(QDQ_SUFFIX)])["sidecar"]
    try:
        ids = json.loads(side.read_text(encoding="utf-8"))["data"]["ids"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(i) for i in ids] if isinstance(ids, list) else None


def calibration_splits(ds, samples: int | None, seed: int):
    """``(calibration samples, eval split)`` of *ds* as :func:`calibrate` draws them: up to
    *samples* of its ``calib`` split by the seeded rule, and its disjoint ``eval`` split (None for
    a dataset of one sample, which is calibrated on whole)."""
    if not _more_than(ds, 1):
        return ds, None
    calib_ds = ds.split("calib")
    if samples is not None and _more_than(calib_ds, samples):
        calib_ds = calib_ds.subset(limit=samples, seed=seed)
    return calib_ds, ds.split("eval")


def calibrate(model, data=None, config: CalibrationConfig | Mapping | None = None, *, preprocess=None,
              classes=None, labels=None, strict: bool = False, batch_axes=None, constants=None, dataset=None,
              out=None, force: bool = False, write: bool = True, progress: bool = True,
              statistics: Statistics | None = None, ray: str | None = None,
              **options) -> CalibrationResult:
    """Calibrate *model* on *data* and write a TensorRT cache, its sidecar, a Q/DQ model and a summary.

    ``calibrate("m.onnx", "imgs/", preprocess="torchvision")`` is the whole call for the defaults.
    *data* is anything :func:`calib.datasets.open_dataset` accepts (a folder, HDF5/NumPy file, an
    iterable of feed dicts), opened with *preprocess*, *classes*, *labels*, *strict*, *batch_axes*
    (``{input: axis}`` for inputs whose samples are not on axis 0) and *constants* (``{input:
    value}`` for inputs that take one value for every sample, such as a sample rate); pass an
    already opened ``dataset`` instead to reuse one. Samples are drawn from the dataset's stable
    ``calib`` split and the summary is computed on its disjoint ``eval`` split, so the held-out
    numbers are honest; the sidecar lists the calibration sample ids.

    *config* (a :class:`CalibrationConfig` or a dict of its fields; default: the defaults) holds
    the options; keyword *options* override its fields (``algorithm="max"``, ``samples=64``, ...;
    an unknown name raises :class:`CalibError` listing the valid ones). The result's
    ``summary["algorithm"]`` is the algorithm used (``auto``'s choice).

    Outputs go to the folder *out* (default: the model's folder) unless ``write=False``; existing
    files are refused unless *force*. *progress* shows progress bars on stderr.

    *statistics*: what :func:`gather_statistics` collected before on the same calibration samples
    with the same smoothing (checked: :meth:`Statistics.check`), reused instead of a new pass over
    the data; the artifacts are the same as without it. A sweep calibrates every algorithm and
    precision plan of a (data, samples, seed) point of its grid from one such pass.

    *ray*: a Ray cluster's address, or ``"auto"`` (join the running one, else start a local one),
    to collect the statistics as Ray tasks over shards of the calibration samples
    (:mod:`calib.distributed`; ``pip install 'calib[ray]'``). The data must then come from a path
    every worker sees (not with *statistics*). The artifacts are byte-identical to a run without
    Ray; the smoothing pass, ``auto``'s scoring, the bias correction and the held-out check run in
    this process.
    """
    from .cache import (
        DEFAULT_TRT_VERSION,
        CalibrationCache,
        format_cache,
        make_sidecar,
        sidecar_bytes,
        trt_algorithm_name,
    )
    from .datasets import open_dataset
    from .plan import load_plan
    from .qdq import check_input, prepare

    config = CalibrationConfig.of(config, **options)
    algorithm, percentile, samples, batch_size = config.algorithm, config.percentile, config.samples, config.batch_size
    seed, target, threads, bias_correction = config.seed, config.target, config.threads, config.bias_correction
    if data is None and dataset is None:
        raise CalibError("no data: pass the calibration data (a folder, HDF5/NumPy file, iterable of feeds) "
                         "or an opened dataset=")
    if statistics is not None and ray is not None:
        raise CalibError("give statistics= (collected before) or ray= (collect them on Ray), not both")
    t_start = time.perf_counter()
    m = load_model(model)
    check_input(m, target)   # already quantized or float16: refused before any work
    check_control_flow(m)    # If / Loop / Scan: refused before any work
    plan = load_plan(config.plan)   # a bad plan fails here, before any work
    stem = m.name
    paths = output_paths(m.path, out, stem)
    if write:   # a folder that cannot be written, or outputs that exist, fail before any work
        check_outputs(paths.values(), force, option="force")

    ds = dataset if dataset is not None else open_dataset(
        data, m, preprocess, seed=seed, classes=classes, labels=labels, strict=strict, batch_axes=batch_axes,
        constants=constants)
    if not _more_than(ds, 0):
        raise EmptyDatasetError(f"no samples in {data}")
    calib_ds, eval_ds = calibration_splits(ds, samples, seed)
    if not _more_than(calib_ds, 0):
        raise EmptyDatasetError(f"no samples left for calibration in {data}")

    # 0-1. channel smoothing factors and the statistics of every float activation tensor (TensorRT's
    # cache covers all of them); or the statistics given, collected before on the same samples.
    # With ray (an address or "auto"), the statistics pass runs as Ray tasks over shards of the
    # samples (calib.distributed); the smoothing pass and everything after it run here.
    prepared = prepare(m)    # once, for the smoothing sites and the Q/DQ model
    ray_info = None
    if statistics is not None:
        statistics.check(calib_ds, config)
        t_smooth = t_collect = 0.0
    else:
        if ray is None:
            statistics = gather_statistics(m, calib_ds, config, prepared=prepared, progress=progress)
        else:
            from .distributed import RayStatistics, connect

            calib_ds.spec()      # data held in memory cannot go to Ray workers: refused before any work
            with connect(ray) as cluster:
                sharded = RayStatistics(cluster, batch_size=batch_size, threads=threads)
                statistics = gather_statistics(m, calib_ds, config, prepared=prepared, progress=progress,
                                               collect=sharded)
            ray_info = {"address": ray, "tasks": sharded.tasks_run}
        t_smooth, t_collect = statistics.timing["smooth"], statistics.timing["collect"]
    factors, smooth_info = statistics.factors, statistics.smoothing
    n_sel = statistics.auto_samples if algorithm == "auto" else 0
    if n_sel >= 1:
        fit_ds, sel_ds = calib_ds.rest(n_sel, seed), calib_ds.subset(n_sel, seed)
    else:
        fit_ds = sel_ds = calib_ds
    part_obs = statistics.parts
    observers, smoothed_obs = statistics.merged()

    # 1b. --algorithm auto: every algorithm's Q/DQ model against FP32 on the selection samples,
    # with ranges from the other calibration samples (or, with a single sample, in-sample)
    t0 = time.perf_counter()
    requested, selection, qdq, ranges = algorithm, None, None, None
    if algorithm == "auto":
        fit_obs, fit_smoothed = part_obs[0]
        probe_ds = bias_probe_samples(fit_ds, seed) if bias_correction else None
        algorithm, qdq, ranges, selection = _select_algorithm(m, prepared, fit_obs, fit_smoothed, factors, sel_ds,
                                                              percentile=percentile, target=target, plan=plan,
                                                              seed=seed, batch_size=batch_size, threads=threads,
                                                              progress=progress, probe_ds=probe_ds)
        selection["fitted_on"] = _used(fit_ds)
        if fit_ds is not calib_ds:   # the artifacts take their ranges from all the calibration samples
            qdq, ranges = None, None
    t_select = time.perf_counter() - t0

    # 2. amax per tensor
    t0 = time.perf_counter()
    params = {"percentile": percentile} if algorithm == "percentile" else {}
    # (auto computed the chosen algorithm's ranges already)
    amax, amax_q = ranges if ranges is not None else _amax(observers, smoothed_obs, algorithm, params)
    t_amax = time.perf_counter() - t0
    if selection is not None:
        params = dict(params, selection=selection)
    # A tensor that was all zeros over the data has no range: TensorRT rejects a zero dynamic
    # range, so it is left out of the cache (TensorRT keeps it in higher precision) and named
    # in the summary. The Q/DQ model quantizes it with scale 1 (zeros are exact).
    scales = {k: v / 127.0 for k, v in amax.items() if v > 0}
    unranged = sorted(k for k, v in amax.items() if not v > 0)
    unranged_inf = [k for k in unranged if k in observers and observers[k].inf_count]   # 0 and -inf: masks
    n_used = _used(calib_ds)

    # 3. artifacts in memory
    # The header must name the calibrator TensorRT loads it with (percentile/mse load through
    # IInt8EntropyCalibrator2); the sidecar records the algorithm actually used.
    cache = CalibrationCache(scales=scales, algorithm=trt_algorithm_name(algorithm),
                             version=config.trt_version or DEFAULT_TRT_VERSION)
    cache_bytes = format_cache(cache)
    sidecar = make_sidecar(model=m, cache=cache, data=dict(calib_ds.describe(), ids=_used_ids(calib_ds)),
                           algorithm=algorithm, params=params, samples=n_used, seed=seed)
    t0 = time.perf_counter()
    if qdq is None:
        qdq = build_qdq(prepared, amax_q, target=target, plan=plan, factors=factors,
                        probe_ds=bias_probe_samples(calib_ds, seed) if bias_correction else None,
                        threads=threads, progress=progress)
    t_bias = time.perf_counter() - t0
    qreport = qdq.quant_report
    qdq_bytes = qdq.serialize()

    # 4. held-out comparison INT8 vs FP32
    summary: dict[str, Any] = {
        "schema": "calib-calibrate-summary", "version": 1, "calib_version": __version__,
        "model": str(m.path) if m.path else m.name, "model_sha256": m.sha256,
        "algorithm": algorithm, "requested_algorithm": requested, "params": params, "target": target,
        "plan": plan.to_dict() if plan is not None else None,
        "smoothing": smooth_info,
        "bias_correction": getattr(qdq, "bias_correction", None),
        "quantization": {"summary": qreport.summary(), "int8_nodes": len(qreport.int8_nodes),
                         "fp16_nodes": qreport.fp16_nodes, "fp32_nodes": qreport.fp32_nodes,
                         "left_float": qreport.float_fallback, "missing_amax": qreport.missing_amax,
                         "unmatched_plan_entries": qreport.unmatched_plan_entries},
        "calibration_samples": n_used, "tensors": len(amax), "unranged_tensors": unranged,
        "unranged_with_inf": unranged_inf,
        "timing_s": {"smooth": round(t_smooth, 3), "collect": round(t_collect, 3), "select": round(t_select, 3),
                     "amax": round(t_amax, 3), "qdq": round(t_bias, 3)},
        "outputs": {k: str(v) for k, v in paths.items()} if write else {},
        # the set this summary belongs to: a cache or Q/DQ model of another run does not match
        "sha256": {"cache": sha256_bytes(cache_bytes), "qdq": sha256_bytes(qdq_bytes)},
    }
    if ray_info is not None:
        summary["ray"] = ray_info
    if config.evaluate and eval_ds is not None and _more_than(eval_ds, 0):
        summary["held_out"] = _held_out(m, qdq, eval_ds, config.eval_samples, seed, batch_size, threads, progress,
                                        auto=selection is not None)
    summary["timing_s"]["total"] = round(time.perf_counter() - t_start, 3)
    summary["lines"] = _summary_lines(summary)

    if write:   # one set, all or nothing; every target is checked again under the folder's lock
        atomic_write_all([(paths["cache"], cache_bytes),
                          (paths["sidecar"], sidecar_bytes(sidecar)),
                          (paths["qdq"], qdq_bytes),
                          (paths["summary"], (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8"))],
                         overwrite=force, option="force")
    return CalibrationResult(amax=amax, scales=scales, paths=paths if write else {}, summary=summary,
                             qdq_model=qdq, observers=observers, smoothing=factors, qdq_amax=amax_q,
                             cache_files={"cache": cache_bytes, "sidecar": sidecar_bytes(sidecar)})


def _more_than(ds, n: int) -> bool:
    """Whether *ds* holds more than *n* samples, without counting every sample of a large source."""
    return ds.longer_than(n) if hasattr(ds, "longer_than") else len(ds) > n


def _used_ids(ds) -> list:
    """The ids of *ds*'s samples that were used: those no pass skipped as corrupt."""
    return list(ds.used_ids) if hasattr(ds, "used_ids") else list(getattr(ds, "ids", []))


def _used(ds) -> int:
    """How many samples of *ds* were used (after a pass over them: corrupt ones skipped are not)."""
    return len(ds.used_ids) if hasattr(ds, "used_ids") else len(ds)


def check_control_flow(m: Model) -> None:
    """Refuse *m* (:class:`calib.errors.ModelError` naming the node) when a node holds subgraphs
    (If, Loop, Scan): the tensors inside a subgraph cannot be observed or given Q/DQ nodes, so
    the cache and the Q/DQ model would leave those layers out (or break the subgraphs' references
    to the main graph) without a word."""
    import onnx

    from .errors import ModelError

    def inner(node):
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                      list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
                for n in g.node:
                    yield n
                    yield from inner(n)

    for node in m.nodes:
        graphs = [a.name for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
        if graphs:
            ops = sorted({n.op_type for n in inner(node)})
            raise ModelError(f"{m.name}: node '{node.name or node.output[0]}' ({node.op_type}) holds subgraphs "
                             f"({', '.join(graphs)}; {', '.join(ops[:6]) or 'empty'}{' ...' if len(ops) > 6 else ''})"
                             f", which calib cannot calibrate: tensors inside a subgraph cannot be observed or "
                             f"quantized; export the model without control flow (fixed shapes, constant conditions "
                             f"folded) or quantize the subgraph as a model of its own")


def _merged(parts):
    """The ``(observers, smoothed twins' observers)`` of every part in *parts*, merged exactly into
    new observers (the parts' own are left as they are); a single part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    out = tuple({k: o.copy() for k, o in d.items()} for d in parts[0])
    for dicts in parts[1:]:
        for mine, theirs in zip(out, dicts):
            for k, o in theirs.items():
                mine[k].merge(o)
    return out


def _probe_samples(ds, limit: int, seed: int):
    """Up to *limit* samples of *ds* for a short measuring pass (channel ranges for smoothing, the
    bias correction), chosen by its seeded rule, so independent of order and batch size."""
    return ds.subset(limit=limit, seed=seed) if _more_than(ds, limit) else ds


def bias_probe_samples(ds, seed: int):
    """The calibration samples that measure the bias correction (``BIAS_PROBE_SAMPLES`` at most)."""
    return _probe_samples(ds, BIAS_PROBE_SAMPLES, seed)


def build_qdq(prepared: Model, amax_q, *, target: str = "tensorrt", plan=None, factors=None, probe_ds=None,
              threads=None, progress=False, label: str = "bias correction",
              fp16_fallback: bool | None = None) -> Model:
    """``quantize_model(prepared, amax_q, ...)``, and with *probe_ds* (a dataset, or anything with
    ``len()`` and ``batches(batch_size=, progress=)``) bias-corrected on its samples, which run one at
    a time so that the correction does not depend on batching (:func:`calib.collect.bias_shifts`).
    The model's ``bias_correction`` attribute says what was done (None without *probe_ds*), and its
    ``bias_shifts`` attribute holds the measured shifts (node key -> per-channel mean; empty without
    *probe_ds*), which ``quantize_model(..., bias_shift=)`` can reuse for another plan.

    *fp16_fallback*: as :func:`calib.qdq.quantize_model` (True to score a TensorRT plan's fp16
    nodes in ONNX Runtime on float16-rounded values).

    ``quantize_model`` logs its report's summary when tensors lack a range or stay float; here,
    where one model is quantized several times (the probe, every ``auto`` candidate), that line
    is not logged: the caller reports ``q.quant_report`` once (:func:`calibrate`'s summary does).
    """
    from .collect import bias_shifts
    from .qdq import quantize_model

    def quantize(**extra):
        with _muted("calib.qdq"):
            return quantize_model(prepared, amax_q, target=target, plan=plan, smooth=factors,
                                  fp16_fallback=fp16_fallback, **extra)

    if probe_ds is None or not _more_than(probe_ds, 0):
        q = quantize()
        q.bias_correction, q.bias_shifts = None, {}
        return q
    probe = quantize(bias_probe=True)
    outputs = probe.quant_report.bias_probes
    shifts = bias_shifts(probe, probe_ds.batches(batch_size=1, progress=label if progress else False), outputs,
                         threads=threads) if outputs else {}
    q = quantize(bias_shift=shifts)
    q.bias_correction = {"layers": len(q.quant_report.bias_corrected), "samples": _used(probe_ds)}
    q.bias_shifts = shifts
    return q


@contextlib.contextmanager
def _muted(logger: str):
    """No record of the logger *logger* is emitted inside the block."""
    log = logging.getLogger(logger)

    def drop(record) -> bool:
        return False

    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _amax(observers, smoothed_obs, algorithm: str, params: Mapping[str, Any]):
    """(amax for the cache, amax for the Q/DQ model: smoothed tensors' twins included)."""
    from .algorithms import compute_amax

    amax = {name: float(compute_amax(obs, algorithm, **params)) for name, obs in observers.items()}
    amax_q = dict(amax)
    amax_q.update({x: float(compute_amax(obs, algorithm, **params)) for x, obs in smoothed_obs.items()})
    return amax, amax_q


def _select_algorithm(m: Model, prepared: Model, observers, smoothed_obs, factors, sel_ds, *, percentile: float,
                      target: str, plan, seed: int, batch_size: int, threads, progress, probe_ds=None):
    """``--algorithm auto``: (chosen algorithm, its Q/DQ model, its ``(amax, amax_q)`` as :func:`_amax`
    gives them, a record of the choice).

    Every algorithm of ``AUTO_CANDIDATES`` gives ranges from the same statistics (*observers*,
    no extra pass over the data); each one's Q/DQ model runs against FP32 on the samples of
    *sel_ds*, and the best by the task's fidelity metric wins: KL(FP32 || INT8) of the class
    probabilities for classifiers, greedy-decode agreement for CTC models (SQNR breaks its
    ties), output SQNR otherwise. Scores are rounded to 4 significant digits before comparing,
    and ties go to the earlier candidate (entropy first), so the choice, hence the cache, is
    byte-stable. :func:`calibrate` passes statistics of calibration samples outside *sel_ds*
    (up to ``AUTO_SAMPLES`` of them, chosen by the seeded hash rule, so independent of order
    and batch size, make *sel_ds*): scored on the samples it was fitted to, max, which fits
    them exactly, had an edge. With *probe_ds* (samples outside *sel_ds*), every candidate's
    Q/DQ model is bias-corrected on them first, as the artifacts will be.
    """
    import math

    from .backends.onnxruntime import OrtEngine
    from .harness import compare

    models, ranges = {}, {}
    for alg in AUTO_CANDIDATES:
        params = {"percentile": percentile} if alg == "percentile" else {}
        ranges[alg] = _amax(observers, smoothed_obs, alg, params)
        models[alg] = build_qdq(prepared, ranges[alg][1], target=target, plan=plan, factors=factors,
                                probe_ds=probe_ds, threads=threads, progress=progress,
                                label=f"bias correction ({alg})")
    ref = OrtEngine(m, name="fp32", threads=threads)
    engines = [OrtEngine(q, name=alg, threads=threads, precision="int8") for alg, q in models.items()]
    report = compare(ref, engines, sel_ds.batches(batch_size=batch_size,
                                                  progress="choosing the algorithm" if progress else False),
                     resamples=1).to_dict()
    metric = AUTO_METRICS.get(report["task"], "sqnr")

    def value(cand, name):
        for mt in cand["metrics"]:
            if mt["name"] == name:
                v = (mt.get("candidate") or {}).get("estimate")
                v = float(v) if v is not None else math.nan    # "inf" (identical outputs) parses
                return v, mt["spec"].get("higher_is_better", True)
        return math.nan, True

    def rounded(v: float) -> float:
        return float(f"{v:.4g}") if math.isfinite(v) else v

    scores, keys = {}, {}
    for alg, cand in zip(models, report["candidates"]):
        key = []
        for name in dict.fromkeys((metric, "sqnr")):
            v, higher = value(cand, name)
            scores.setdefault(alg, {})[name] = v
            key.append(-math.inf if math.isnan(v) else rounded(v) if higher else -rounded(v))
        keys[alg] = tuple(key)
    best = max(AUTO_CANDIDATES, key=lambda a: (keys[a], -AUTO_CANDIDATES.index(a)))
    info = {"rule": "auto", "metric": metric, "samples": _used(sel_ds), "task": report["task"],
            "scores": {a: {k: (v if math.isfinite(v) else str(v)) for k, v in sc.items()} for a, sc in scores.items()},
            "chosen": best}
    return best, models[best], ranges[best], info


def _smoothing(m: Model, prepared: Model, calib_ds, alpha: float, seed: int, batch_size: int, threads, progress):
    """(factors, model to observe, {tensor: its smoothed twin}, summary entry) for :func:`calibrate`;
    *prepared* is ``calib.qdq.prepare(m)``, where the sites are found."""
    import numpy as np

    from .backends.onnxruntime import OrtEngine
    from .smooth import channel_absmax, find_sites, observed, range_probe
    from .smooth import factors as smooth_factors

    sites = find_sites(prepared)
    info = {"alpha": alpha, "sites": len(sites), "tensors": [], "probe_samples": 0}
    if not sites:
        return {}, m, {}, info
    probe_ds = _probe_samples(calib_ds, SMOOTH_PROBE_SAMPLES, seed)
    probe, names = range_probe(m, sites)
    engine = OrtEngine(probe, threads=threads)
    channels = {st.tensor: st.channels for st in sites}
    ranges: dict[str, np.ndarray] = {}
    for b in probe_ds.batches(batch_size=batch_size, progress="channel ranges" if progress else False):
        outs = engine.run(b.feed)
        for x, (lo, hi) in names.items():
            r = channel_absmax(outs[lo], outs[hi], channels[x])
            ranges[x] = np.maximum(ranges[x], r) if x in ranges else r
    facs = smooth_factors(sites, ranges, alpha)
    obs_model, twins = observed(m, sites, facs)
    info.update(tensors=sorted(facs), probe_samples=_used(probe_ds))
    return facs, obs_model, twins, info


def _held_out(fp32: Model, int8: Model, eval_ds, eval_samples, seed, batch_size, threads, progress,
              auto: bool = False) -> dict:
    from .backends.onnxruntime import OrtEngine
    from .harness import compare

    if eval_samples is not None and _more_than(eval_ds, eval_samples):
        eval_ds = eval_ds.subset(limit=eval_samples, seed=seed)
    ref = OrtEngine(fp32, name="fp32", threads=threads)
    cand = OrtEngine(int8, name="int8", threads=threads, precision="int8")
    report = compare(ref, [cand], eval_ds.batches(batch_size=batch_size,
                                                  progress="held-out check" if progress else False))
    out = {"samples": _used(eval_ds), "data": eval_ds.describe(), "report": report.to_dict(),
           "line": report.summary_line()}
    low = _low_fidelity(out["report"], auto=auto)
    if low:
        out["warning"] = low
    return out


# Held-out fidelity below which the summary suggests another algorithm (agreement; cosine).
FIDELITY_FLOORS = {"top1_agreement": 0.85, "ctc_agreement": 0.85, "cosine": 0.98}


def _low_fidelity(report: Mapping[str, Any], auto: bool = False) -> str | None:
    """A one-line hint when INT8 follows FP32 poorly on the held-out split, else None. Judged
    on the first of ``FIDELITY_FLOORS``' metrics the report has."""
    if not report["candidates"]:
        return None
    by_name = {m["name"]: m for m in report["candidates"][0]["metrics"]}
    name = next((k for k in FIDELITY_FLOORS if k in by_name), None)
    if name is None:
        return None
    got, floor = (by_name[name].get("candidate") or {}).get("estimate"), FIDELITY_FLOORS[name]
    if got is None or got >= floor:
        return None
    if auto:
        return (f"INT8 follows FP32 poorly on the held-out split ({name} {got:.3g} < {floor:g}) with the best of "
                f"the algorithms: see `calib evaluate --attribute` for the layers that lose most, and keep them "
                f"out of INT8 with --plan")
    return (f"INT8 follows FP32 poorly on the held-out split ({name} {got:.3g} < {floor:g}): try "
            f"--algorithm auto, or compare max / percentile (entropy can clip rare large activations a "
            f"model depends on), and see `calib evaluate` for the layers that lose most")


def _summary_lines(s: Mapping[str, Any]) -> list[str]:
    alg = s["algorithm"] if s.get("requested_algorithm", s["algorithm"]) == s["algorithm"] \
        else f"{s['requested_algorithm']}: {s['algorithm']}"
    lines = [f"calibrated {s['tensors']} tensors on {s['calibration_samples']} samples "
             f"({alg}) in {s['timing_s']['collect'] + s['timing_s'].get('select', 0) + s['timing_s']['amax']:.1f} s"
             + (f", statistics in {s['ray']['tasks']} Ray tasks" if s.get("ray") else "")]
    sel = (s.get("params") or {}).get("selection")
    if sel:
        def fmt(v):
            return f"{v:.4g}" if isinstance(v, float) else str(v)
        scores = ", ".join(f"{a} {fmt(v[sel['metric']])}" for a, v in sel["scores"].items())
        fit = sel.get("fitted_on")
        where = f"{sel['samples']} calibration samples" + \
            (f" (ranges from the other {fit})" if fit and fit != s.get("calibration_samples") else "")
        lines.append(f"auto chose {sel['chosen']} by {sel['metric']} against FP32 on {where}: {scores}")
    q = s.get("quantization")
    bc = s.get("bias_correction")
    if bc and bc["layers"]:
        lines.append(f"Q/DQ model: biases of {bc['layers']} layers corrected for INT8's mean error, measured on "
                     f"{bc['samples']} calibration samples")
    sm = s.get("smoothing")
    if sm and sm["tensors"]:
        lines.append(f"Q/DQ model: channels of {len(sm['tensors'])} tensors smoothed (alpha {sm['alpha']:g}; "
                     f"the cache describes the unmodified model)")
    if q and (s.get("plan") or q["left_float"] or q.get("missing_amax")):
        lines.append(f"Q/DQ model: {q['summary']}")
    if q and q["unmatched_plan_entries"]:
        names = q["unmatched_plan_entries"]
        lines.append(f"warning: {len(names)} plan entries match no node: {', '.join(names[:3])}"
                     + (" ..." if len(names) > 3 else ""))
    masks = set(s.get("unranged_with_inf") or ())
    for names, why in (([n for n in s.get("unranged_tensors") or () if n not in masks], "all zeros over the data"),
                       (sorted(masks), ("only 0 and infinities over the data, as attention masks hold: no finite "
                                        "range"))):
        if names:
            lines.append(f"left out of the cache ({why}): {', '.join(names[:3])}"
                         + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
    ho = s.get("held_out")
    if ho:
        lines.append(f"held-out ({ho['samples']} samples): {ho['line']}")
        if ho.get("warning"):
            lines.append(f"warning: {ho['warning']}")
    for v in s.get("outputs", {}).values():
        lines.append(f"wrote {v}")
    return lines
