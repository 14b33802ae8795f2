"""One point of a sweep: calibrate, build for the plan and target, score against FP32, time, size.

:func:`run_point` is a pure function of its arguments and the files they name (the model, the
data, the statistics folder), so that it runs the same in this process, in a ``--jobs N``
process or in a Ray task; it returns the JSON-able result row and never raises for an error of
the point itself (the row says ``"status": "failed"`` with a one-line ``error``).

What a point does (:class:`PointConfig` says which algorithm, samples, seed, plan, batch size and
target):

1. **statistics**: loads the observers of its (data, samples, seed) group from the statistics
   folder (:func:`run_statistics` collected them there once, serialised without pickle:
   :meth:`calib.pipeline.Statistics.to_bytes`), or collects and stores them if they are missing;
2. **calibration**: :func:`calib.pipeline.calibrate` with a :class:`~calib.pipeline.CalibrationConfig`
   built from the point and those statistics, which writes the cache, its sidecar, the Q/DQ model
   and the summary into ``models/<model key>/`` (the same bytes as ``calibrate`` with the same
   options); points that differ only in batch size share that folder and calibrate once. A
   ``search:<budget>`` plan is first found by :func:`calib.mixed.search`;
3. **accuracy**: :func:`calib.harness.compare` of the Q/DQ model against the FP32 model on the eval
   split (the same samples for every point), every metric with its bootstrap interval, against
   the labels too when the data have them;
4. **speed**, measured on this CPU with ONNX Runtime, the Q/DQ model and the FP32 model run in turn
   (interleaved, alternating which goes first) so that a busy machine slows both alike and their
   ratio holds: latency median and p90 at batch 1, throughput at the point's batch size;
   **predicted** GPU latency from the latency model (``roofline:<gpu>``: a prediction from FLOPs,
   bytes and datasheet peaks, not a measurement; :mod:`calib.tuning.latency`); and TensorRT's own
   timings of an engine built from the Q/DQ model where TensorRT and a GPU exist (skipped, and
   said so, elsewhere);
5. **size**: the Q/DQ ONNX file's bytes, and the weights' bytes at the precision they are deployed
   in (int8 1, fp16 2, fp32 4 bytes per value; :func:`weight_bytes`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import CalibError
from ..smooth import DEFAULT_ALPHA
from ..utils import atomic_write_bytes, sha256_file

DEFAULT_LATENCY = "roofline:h100"
DEFAULT_TIMING_RUNS = 30
KEY_FORMAT = "calib-sweep-point-1"


@dataclass(frozen=True)
class PointConfig:
    """One point of the grid; every field JSON-able (see :mod:`calib.sweep.grid` for the values)."""

    algorithm: str = "entropy"
    samples: int = 500
    seed: int = 0
    plan: str = "int8"
    batch_size: int = 16
    target: str = "tensorrt"

    def to_dict(self) -> dict:
        return asdict(self)

    def _digest(self, fields: dict, model_sha256: str, data_digest: str, extra) -> str:
        plan = fields.get("plan")
        if plan is not None and plan not in ("int8", "fp16") and not plan.startswith("search:"):
            fields["plan_sha256"] = sha256_file(plan)     # a plan file counts by its content
        doc = {"format": KEY_FORMAT, "point": fields, "model_sha256": model_sha256, "data": data_digest,
               "settings": dict(extra or {})}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()

    def key(self, model_sha256: str, data_digest: str, extra=None) -> str:
        """sha256 of the canonical JSON of the point, the model's sha256, the data's digest and
        *extra* (the sweep settings that change results: :meth:`Settings.key_fields`)."""
        return self._digest(self.to_dict(), model_sha256, data_digest, extra)

    def model_key(self, model_sha256: str, data_digest: str, extra=None) -> str:
        """The key of the point's calibrated model: :meth:`key` without the batch size, which does
        not change the calibration."""
        fields = self.to_dict()
        del fields["batch_size"]
        return self._digest(fields, model_sha256, data_digest, extra)

    def label(self, axes=None) -> str:
        """A short label of the point (only *axes*, default all): ``entropy n64 s0 int8 trt b16``."""
        parts = {"algorithm": self.algorithm, "samples": f"n{self.samples}", "seed": f"s{self.seed}",
                 "plan": self.plan if len(self.plan) <= 24 and "/" not in self.plan else Path(self.plan).name,
                 "target": {"tensorrt": "trt", "onnxruntime": "ort"}.get(self.target, self.target),
                 "batch_size": f"b{self.batch_size}"}
        keys = [k for k in parts if axes is None or k in axes]
        return " ".join(parts[k] for k in keys) or self.algorithm

    @classmethod
    def from_dict(cls, d) -> PointConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Settings:
    """What is the same for every point of a sweep. The fields :meth:`key_fields` names change
    results and go into every point's key; the others do not (how long to time, threads, where
    files go) or are filled in by the driver (the model's and the data's digests)."""

    latency: str | None = DEFAULT_LATENCY
    eval_samples: int | None = 500
    timing_runs: int = DEFAULT_TIMING_RUNS
    smooth: float | None = DEFAULT_ALPHA
    bias_correction: bool = True
    trt_version: int | None = None
    threads: int | None = None
    model_sha256: str = ""
    data_digest: str = ""
    auto: bool = False           # statistics keep auto's selection samples apart
    histogram: bool = True       # statistics keep histograms (every algorithm but max)
    models_dir: str | None = None

    def key_fields(self) -> dict:
        return {"latency": self.latency, "eval_samples": self.eval_samples, "smooth": self.smooth,
                "bias_correction": self.bias_correction, "trt_version": self.trt_version}

    def calibration_config(self, cfg: PointConfig, plan=None):
        """The :class:`calib.pipeline.CalibrationConfig` of point *cfg* (no held-out check: the
        sweep scores every point itself)."""
        from ..pipeline import CalibrationConfig

        name, _, p = cfg.algorithm.partition(":")
        extra = {"percentile": float(p)} if p else {}
        return CalibrationConfig(algorithm=name, samples=cfg.samples, seed=cfg.seed, batch_size=cfg.batch_size,
                                 target=cfg.target, threads=self.threads, plan=plan, smooth=self.smooth,
                                 bias_correction=self.bias_correction, trt_version=self.trt_version,
                                 evaluate=False, **extra)

    def with_(self, **changes) -> Settings:
        return replace(self, **changes)


# --------------------------------------------------------------------------- data and digests
def data_digest(ds) -> str:
    """sha256 of what the samples are: the content of every file they are read from (the images of
    the dataset, or the data file, or the loader script), the classes / labels files, the
    preprocessing and the selection (``--limit``, ``--seed``) that chose them."""
    spec = ds.spec()
    h = hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k not in ("source", "classes", "labels")},
                                  sort_keys=True).encode("utf-8"))
    from ..datasets.sources import script_function

    src = spec["source"]
    script = script_function(src)
    path = Path(src if script is None else script[0])
    if path.is_dir():
        files = [path / i for i in ds.ids if (path / i).is_file()]
        if len(files) != len(ds):        # ids are not file names: every file of the folder counts
            files = sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            h.update(f"{f.relative_to(path)}\0{sha256_file(f)}\n".encode())
    elif path.is_file():
        h.update(sha256_file(path).encode())
    for k in ("classes", "labels"):
        if spec.get(k):
            h.update(f"{k}\0{sha256_file(spec[k])}\n".encode())
    return h.hexdigest()


def statistics_digest(settings: Settings, samples: int, seed: int) -> str:
    """The name of the statistics of a (data, samples, seed) group in the statistics folder."""
    doc = {"model": settings.model_sha256, "data": settings.data_digest, "samples": samples, "seed": seed,
           "smooth": settings.smooth, "auto": settings.auto, "histogram": settings.histogram}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def statistics_path(stats_dir, settings: Settings, samples: int, seed: int) -> Path:
    return Path(stats_dir) / f"{statistics_digest(settings, samples, seed)}.npz"


# --------------------------------------------------------------------------- per-process caches
@functools.lru_cache(maxsize=2)
def _model(path: str):
    from ..model import load_model

    return load_model(path)


@functools.lru_cache(maxsize=2)
def _dataset(spec_json: str, model_path: str):
    from ..datasets import open_spec

    return open_spec(json.loads(spec_json), _model(model_path))


def open_data(data_spec, model_path: str):
    """The dataset *data_spec* (:meth:`calib.datasets.Dataset.spec`) describes, for the model at
    *model_path* (opened once per process)."""
    return _dataset(json.dumps(data_spec, sort_keys=True), str(model_path))


def eval_split(ds, eval_samples: int | None):
    """The samples every point is scored on: up to *eval_samples* of the data's ``eval`` split (the
    calibration samples are never among them), chosen by the data's seed, whatever the point's."""
    from ..pipeline import calibration_splits

    _, ev = calibration_splits(ds, None, ds.seed)
    if ev is None:
        raise CalibError("a sweep needs at least 2 samples: a calibration split and an eval split")
    if eval_samples is not None and eval_samples < len(ev):
        ev = ev.subset(limit=eval_samples, seed=ds.seed)
    if len(ev) == 0:
        raise CalibError(f"none of the {len(ds)} samples falls in the eval split; use more data")
    return ev


_STATISTICS: dict[str, object] = {}     # path -> Statistics: the last groups this process used


def _remember(path: str, st):
    _STATISTICS.pop(path, None)
    _STATISTICS[path] = st
    while len(_STATISTICS) > 2:
        del _STATISTICS[next(iter(_STATISTICS))]
    return st


def _load_statistics(path: str):
    """The statistics stored at *path* (read once per process while they are among the last two used)."""
    from ..pipeline import Statistics

    if path in _STATISTICS:
        return _remember(path, _STATISTICS[path])
    try:
        return _remember(path, Statistics.from_bytes(Path(path).read_bytes()))
    except (OSError, ValueError) as exc:
        raise CalibError(f"cannot read the statistics {path}: {exc}") from None


@functools.lru_cache(maxsize=4)
def _fp32_engine(model_path: str, threads):
    from ..backends.onnxruntime import OrtEngine

    return OrtEngine(_model(model_path), name="fp32", threads=threads)


@functools.lru_cache(maxsize=2)
def _groups(model_path: str):
    from ..tuning.groups import find_groups

    return find_groups(_model(model_path))


@functools.lru_cache(maxsize=4)
def _latency_model(spec: str, model_path: str):
    from ..tuning.latency import latency_model

    return latency_model(spec, _model(model_path), _groups(model_path))


def check_latency_spec(spec: str | None) -> str | None:
    """*spec* if the sweep can predict with it (``roofline:<gpu>`` or None for no prediction)."""
    from ..tuning.latency import GPUS

    if spec is None or spec.lower() == "none":
        return None
    gpu = spec.lower().partition("roofline:")[2]
    if not spec.lower().startswith("roofline:") or gpu not in GPUS:
        raise CalibError(f"--latency {spec!r}: a sweep predicts GPU latency with roofline:<gpu> "
                         f"({', '.join('roofline:' + g for g in GPUS)}) or none; it measures ONNX Runtime "
                         f"on this CPU for every point, and TensorRT where it exists")
    return spec.lower()


# --------------------------------------------------------------------------- statistics
class _Phases:
    """Wall and CPU seconds (this process, every thread) of the phases of a task, into *timing*:
    ``name`` and ``name_cpu``."""

    def __init__(self, timing: dict):
        self.timing = timing
        self.t = (time.perf_counter(), time.process_time())

    def done(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.timing[name] = round(now[0] - self.t[0], 3)
        self.timing[f"{name}_cpu"] = round(now[1] - self.t[1], 3)
        self.t = now


def run_statistics(samples: int, seed: int, model_path: str, data_spec, stats_dir: str, *,
                   settings: Settings) -> dict:
    """Collect the statistics of the (data, *samples*, *seed*) group into the statistics folder,
    unless they are there already; returns ``{"path", "samples", "seconds", "seconds_cpu", "cached"}``. Raises
    :class:`CalibError` when they cannot be collected (the driver then fails the group's points)."""
    from ..pipeline import calibration_splits, gather_statistics

    timing: dict = {}
    clock = _Phases(timing)
    path = statistics_path(stats_dir, settings, samples, seed)
    if path.is_file():
        st = _load_statistics(str(path))
        clock.done("seconds")
        return {"path": str(path), "samples": len(st.ids), **timing, "cached": True}
    m = _model(str(model_path))
    ds = open_data(data_spec, model_path)
    calib_ds, _ = calibration_splits(ds, samples, seed)
    if len(calib_ds) == 0:
        raise CalibError(f"no samples left for calibration in {data_spec.get('source')}")
    cfg = settings.calibration_config(PointConfig(samples=samples, seed=seed))
    st = gather_statistics(m, calib_ds, cfg, auto=settings.auto, histogram=settings.histogram, progress=False)
    atomic_write_bytes(path, st.to_bytes(), overwrite=True)
    _remember(str(path), st)        # the group's points in this process need not read them back
    clock.done("seconds")
    return {"path": str(path), "samples": len(st.ids), **timing, "cached": False}


def _statistics(stats_dir, model_path, data_spec, settings: Settings, cfg: PointConfig):
    """(the group's statistics, whether they were read from the statistics folder)."""
    path = statistics_path(stats_dir, settings, cfg.samples, cfg.seed)
    cached = path.is_file()
    if not cached:
        run_statistics(cfg.samples, cfg.seed, model_path, data_spec, str(stats_dir), settings=settings)
    return _load_statistics(str(path)), cached


# --------------------------------------------------------------------------- plans and models
def _plan(cfg: PointConfig, m, ds, settings: Settings, folder: Path | None):
    """(the point's precision plan or None for all INT8, how it was made)."""
    from ..plan import PrecisionPlan, load_plan

    if cfg.plan == "int8":
        return None, None
    if cfg.plan == "fp16":
        return PrecisionPlan(default="fp16", comment="sweep: every layer fp16"), None
    if not cfg.plan.startswith("search:"):
        return load_plan(cfg.plan), None
    saved = folder / "plan.json" if folder is not None else None
    if saved is not None and saved.is_file():
        return load_plan(saved), {"budget": cfg.plan.split(":", 1)[1], "reused": True}
    from ..mixed import search

    latency = settings.latency or DEFAULT_LATENCY
    res = search(m, dataset=ds, budget=cfg.plan.split(":", 1)[1], config=settings.calibration_config(cfg),
                 latency=latency, progress=False)
    if saved is not None:
        atomic_write_bytes(saved, res.plan.dumps().encode("utf-8"), overwrite=True)
    return res.plan, {"budget": cfg.plan.split(":", 1)[1], "latency_model": latency, "reused": False}


def _calibrated(cfg: PointConfig, m, ds, stats, settings: Settings, folder: Path | None, plan):
    """(Q/DQ model, calibrate's summary, whether an earlier point's model was reused): the point's
    model from its folder when a point of another batch size made it, else calibrated now (and
    written there)."""
    from ..model import load_model
    from ..pipeline import calibrate, output_paths

    paths = output_paths(None, folder, m.name) if folder is not None else None
    if paths is not None and paths["qdq"].is_file() and paths["summary"].is_file():
        try:
            summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
            return load_model(paths["qdq"]), summary, True
        except (OSError, ValueError, CalibError):
            pass                                  # made again below
    res = calibrate(m, dataset=ds, config=settings.calibration_config(cfg, plan), statistics=stats,
                    write=folder is not None, out=folder, force=True, progress=False)
    return res.qdq_model, res.summary, False


def weight_bytes(model) -> int:
    """Bytes of the model's constant tensors at the precision they are deployed in: each
    initializer at its own element size (int8 weights 1 byte), except that a float32 initializer
    read only through Casts to float16 (the weights of a plan's fp16 layers) counts 2 bytes."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    g = model.proto.graph
    readers: dict[str, list] = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)

    def to_fp16(n) -> bool:
        return n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)

    total = 0
    for init in g.initializer:
        size = int(np.prod(init.dims, dtype=np.int64))
        item = np.dtype(tensor_dtype_to_np_dtype(init.data_type)).itemsize
        if init.data_type == onnx.TensorProto.FLOAT and readers.get(init.name) and all(
                to_fp16(n) for n in readers[init.name]):
            item = 2
        total += size * item
    return total


# --------------------------------------------------------------------------- accuracy
def _interval(d) -> dict | None:
    if not d:
        return None
    return {k: d.get(k) for k in ("estimate", "low", "high")}


def metric_summary(report: dict) -> tuple[dict, dict | None, dict]:
    """``(fidelity, accuracy, metrics)`` of a harness report's first candidate: the task's headline
    metric against FP32 (``top1_agreement``, ``cosine``, ...), its headline metric against the
    labels when there are labels (``top1``, ``cer``, ...; with FP32's value and the difference's
    interval), and every metric by name."""
    from ..harness.report import HEADLINES

    cand = report["candidates"][0]
    by_name = {}
    for mt in cand["metrics"]:
        spec = mt["spec"]
        by_name[mt["name"]] = {"candidate": _interval(mt.get("candidate")), "reference": _interval(mt.get("reference")),
                               "difference": _interval(mt.get("difference")),
                               "higher_is_better": bool(spec.get("higher_is_better", True)),
                               "percent": bool(spec.get("percent")), "unit": spec.get("unit") or "",
                               "labels": bool(spec.get("needs_labels")), "ideal": spec.get("ideal")}
    heads = [n for n in HEADLINES.get(report["task"], []) if n in by_name] or list(by_name)[:1]
    fid = next((n for n in heads if not by_name[n]["labels"]), None) or next(
        (n for n, v in by_name.items() if not v["labels"]), heads[0])
    acc = next((n for n in heads if by_name[n]["labels"]), None)

    def one(name):
        return dict(name=name, **by_name[name]) if name else None

    return one(fid), one(acc), by_name


# --------------------------------------------------------------------------- speed
def interleaved_times(engines, feed, runs: int, warmup: int = 2) -> list[list[float]]:
    """Seconds per run of each engine on *feed*, the engines run in turn (in alternating order) so
    that a machine busy with other work slows them alike."""
    for _ in range(warmup):
        for e in engines:
            e.run(feed)
    times: list[list[float]] = [[] for _ in engines]
    for r in range(runs):
        order = range(len(engines)) if r % 2 == 0 else reversed(range(len(engines)))
        for i in order:
            t = time.perf_counter()
            engines[i].run(feed)
            times[i].append(time.perf_counter() - t)
    return times


def _feed(ev, n: int) -> dict:
    """The first *n* samples of the eval split as one feed (repeated where it holds fewer)."""
    first = next(iter(ev.batches(batch_size=n)))
    out = {}
    for k, v in first.feed.items():
        reps = -(-n // v.shape[0])
        out[k] = np.concatenate([v] * reps, axis=0)[:n] if reps > 1 else v
    return out


def cpu_timing(cand, ref, ev, batch_size: int, runs: int) -> dict:
    """ONNX Runtime latency (ms, median and p90) at batch 1 and throughput (samples/s) at
    *batch_size*, of the candidate and the FP32 model, interleaved; their ratios."""
    one = interleaved_times([cand, ref], _feed(ev, 1), runs)
    q, f = (np.asarray(t) * 1e3 for t in one)
    out = {"runs": runs, "latency_ms": float(np.median(q)), "p90_ms": float(np.percentile(q, 90)),
           "fp32_latency_ms": float(np.median(f)), "fp32_p90_ms": float(np.percentile(f, 90))}
    out["speedup"] = out["fp32_latency_ms"] / out["latency_ms"]
    if batch_size > 1:
        big = interleaved_times([cand, ref], _feed(ev, batch_size), max(1, runs // 4), warmup=1)
        qb, fb = (float(np.median(t)) for t in big)
        out.update(throughput=batch_size / qb, fp32_throughput=batch_size / fb)
    else:
        out.update(throughput=1e3 / out["latency_ms"], fp32_throughput=1e3 / out["fp32_latency_ms"])
    out["batch"] = batch_size
    out["throughput_speedup"] = out["throughput"] / out["fp32_throughput"]
    return out


def predicted_latency(model_path: str, plan, spec: str) -> dict:
    """The latency model's prediction (ms per sample, batch 1) for the plan (None: all INT8) and for
    FP32; ``{"error": ...}`` when the model's groups cannot be costed (dynamic shapes)."""
    try:
        groups, lm = _groups(model_path), _latency_model(spec, model_path)
    except CalibError as exc:
        return {"model": spec, "error": str(exc).splitlines()[0]}
    precisions = {g.id: plan.precision_for(g.anchor) for g in groups} if plan is not None else {}
    q = lm.predict(groups, precisions) * 1e3
    f = lm.predict(groups, {}, default="fp32") * 1e3
    return {"model": spec, "description": lm.description, "latency_ms": q, "fp32_latency_ms": f, "speedup": f / q,
            "predicted": True}


def tensorrt_timing(qdq_path: Path | None, fp32_path: str, folder: Path | None, batch_size: int, runs: int,
                    fp16: bool) -> dict:
    """TensorRT's own timings (``calib.backends.tensorrt.benchmark``: latency median / p90 / p99 and
    throughput at batch 1 and *batch_size*) of an engine built from the Q/DQ model (explicit
    quantization; FP16 allowed where the plan has fp16 layers) into *folder*, beside those of an
    FP32 engine built once per sweep (in *folder*'s parent): ``{"candidate": rows, "fp32": rows}``;
    ``{"skipped": why}`` where TensorRT or a GPU is missing, ``{"error": why}`` when a build or run
    fails (the point keeps its other results)."""
    from ..backends import tensorrt as trt
    from ..errors import TensorRTUnavailableError

    try:
        trt.import_tensorrt()
        from ..backends.tensorrt.cuda import require_gpu

        require_gpu()
    except (TensorRTUnavailableError, CalibError) as exc:
        return {"skipped": str(exc).splitlines()[0]}
    if qdq_path is None or folder is None:
        return {"skipped": "no model folder to build the engine in"}
    out = {}
    try:
        for name, src, engine, opts in (
                ("candidate", qdq_path, folder / "model.engine", trt.BuildOptions(mode="explicit", fp16=fp16)),
                ("fp32", fp32_path, folder.parent / "fp32.engine", trt.BuildOptions())):
            if not engine.is_file():
                trt.build_engine(src, engine, options=opts, overwrite=True, log=lambda *_: None)
            _, out[name] = trt.benchmark(engine, batch_sizes=sorted({1, batch_size}), iterations=max(runs, 10),
                                         warmup=max(2, runs // 5))
    except CalibError as exc:
        return {"error": one_line(exc)}
    return out


# --------------------------------------------------------------------------- the point
def one_line(exc: BaseException) -> str:
    """The error's message, first line only; prefixed by its type unless it is a :class:`CalibError`."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, CalibError):
        return msg or type(exc).__name__
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def run_point(cfg: PointConfig, model_path: str, data_spec, stats_dir: str, *, latency: str | None = DEFAULT_LATENCY,
              threads: int | None = None, settings: Settings | None = None) -> dict:
    """Run point *cfg* (see the module docs) and return its result row (JSON-able): ``status``
    ``"ok"`` with ``fidelity``, ``accuracy``, ``metrics``, ``cpu``, ``predicted``, ``tensorrt``,
    ``size``, ``calibration``, ``reused`` and ``timing_s``; or ``"failed"`` with a one-line
    ``error``. *latency* and *threads* override those of *settings*."""
    settings = (settings or Settings()).with_(latency=latency, threads=threads)
    t0 = time.perf_counter()
    row: dict = {"config": cfg.to_dict(), "timing_s": {}}
    try:
        row.update(_run(cfg, str(model_path), data_spec, stats_dir, settings, row["timing_s"]))
        row["status"] = "ok"
    except Exception as exc:   # a point's failure is stored, never stops the sweep
        row.update(status="failed", error=one_line(exc))
    row["timing_s"]["total"] = round(time.perf_counter() - t0, 3)
    row["pid"] = os.getpid()
    return row


def _run(cfg: PointConfig, model_path: str, data_spec, stats_dir, settings: Settings, timing: dict) -> dict:
    from ..backends.onnxruntime import OrtEngine
    from ..harness import compare

    clock = _Phases(timing)
    m = _model(model_path)
    ds = open_data(data_spec, model_path)
    stats, stats_cached = _statistics(stats_dir, model_path, data_spec, settings, cfg)
    folder = None
    if settings.models_dir is not None:
        folder = Path(settings.models_dir) / cfg.model_key(settings.model_sha256, settings.data_digest,
                                                            settings.key_fields())[:16]
    plan, search = _plan(cfg, m, ds, settings, folder)
    qdq, summary, model_reused = _calibrated(cfg, m, ds, stats, settings, folder, plan)
    clock.done("calibrate")

    ev = eval_split(ds, settings.eval_samples)
    ref = _fp32_engine(model_path, settings.threads)
    cand = OrtEngine(qdq, name="candidate", threads=settings.threads, precision="int8" if plan is None else "mixed")
    report = compare(ref, [cand], ev, batch_size=cfg.batch_size, progress=False).to_dict()
    fidelity, accuracy, metrics = metric_summary(report)
    clock.done("score")

    cpu = cpu_timing(cand, ref, ev, cfg.batch_size, settings.timing_runs) if settings.timing_runs > 0 else None
    predicted = predicted_latency(model_path, plan, settings.latency) if settings.latency else None
    qdq_path = None
    if folder is not None:
        from ..pipeline import output_paths

        qdq_path = output_paths(None, folder, m.name)["qdq"]
    trt = tensorrt_timing(qdq_path, model_path, folder, cfg.batch_size, settings.timing_runs or 10,
                          fp16=bool(summary.get("quantization", {}).get("fp16_nodes"))) \
        if cfg.target == "tensorrt" else None
    clock.done("speed")

    q = summary.get("quantization") or {}
    return {
        "fidelity": fidelity, "accuracy": accuracy, "metrics": metrics, "task": report["task"],
        "eval_samples": report["samples"], "cpu": cpu, "predicted": predicted, "tensorrt": trt,
        "size": {"onnx_bytes": len(qdq.serialize()), "weight_bytes": weight_bytes(qdq),
                 "fp32_weight_bytes": weight_bytes(m)},
        "calibration": {"algorithm": summary.get("algorithm"), "samples": summary.get("calibration_samples"),
                        "tensors": summary.get("tensors"), "quantization": q.get("summary"),
                        "int8_nodes": q.get("int8_nodes"), "fp16_nodes": len(q.get("fp16_nodes") or []),
                        "bias_correction": summary.get("bias_correction"), "sha256": summary.get("sha256"),
                        "search": search},
        "model_dir": folder.name if folder is not None else None,
        "reused": {"statistics": stats_cached, "model": model_reused},
    }


__all__ = ["PointConfig", "Settings", "run_point", "run_statistics", "data_digest", "statistics_digest",
           "statistics_path", "open_data", "eval_split", "metric_summary", "interleaved_times", "cpu_timing",
           "predicted_latency", "tensorrt_timing", "weight_bytes", "check_latency_spec", "one_line", "DEFAULT_LATENCY",
           "DEFAULT_TIMING_RUNS"]
