"""Accuracy-vs-speed sweeps: a resumable grid of calibrations, a durable results store, the Pareto front.

    from calib.sweep import sweep
    res = sweep("m.onnx", "imgs/", "sweep.toml", out="sweeps/m", preprocess="efficientnet-lite")
    print(res.table())                 # every point, front members marked
    res.paths["front_cpu"]             # PNG: accuracy against CPU latency, the front labelled

``calib sweep`` is the command; ``calib sweep show DIR`` prints a finished (or running) sweep.

Modules: :mod:`~calib.sweep.grid` (the TOML grid -> points), :mod:`~calib.sweep.points` (one
point: calibrate, score, time, size), :mod:`~calib.sweep.store` (SQLite, one row per point),
:mod:`~calib.sweep.run` (the driver and its executors: this process, ``--jobs N`` processes,
Ray), :mod:`~calib.sweep.front` (Pareto front, table, plots). docs/sweeps.md says what a sweep
writes and why the store is SQLite.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CalibError
from .front import COSTS, choose_metric, costs_of, front_table, plot_front, points_table
from .grid import AXES, Grid, load_grid, make_grid
from .points import DEFAULT_LATENCY, DEFAULT_TIMING_RUNS, PointConfig, Settings, run_point, run_statistics
from .run import Outcome, default_threads, make_executor, run_sweep
from .store import DB_NAME, Store, csv_text

FRONT_MD = "front.md"


def front_png(cost: str) -> str:
    return f"front_{cost}.png"


@dataclass
class SweepResult:
    """A sweep's rows (every stored point, this run's and earlier ones), this run's outcomes per
    point, the front metric and the files written."""

    rows: list[dict]
    outcomes: list[Outcome]
    metric: object
    paths: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None
    timing: dict[str, float] = field(default_factory=dict)     # seconds: "front" (table and plots)

    def counts(self) -> dict[str, int]:
        out = {"computed": 0, "cached": 0, "failed": 0}
        for o in self.outcomes:
            out[o.status] += 1
        return out

    def table(self) -> str:
        return points_table(self.rows, self.metric)

    def front_table(self) -> str:
        return front_table(self.rows, self.metric) if self.metric is not None else ""


def _grid(grid) -> Grid:
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, dict):
        return make_grid(grid, base=Path.cwd(), source="grid")
    return load_grid(grid)


def _fmt_pct(v, percent: bool) -> str:
    return f"{100 * v:.2f}%" if percent else f"{v:.4g}"


def status_line(o: Outcome, total: int, axes) -> str:
    """One line per point: where it stands (computed, cached, failed), its configuration, its
    metrics with intervals, its CPU latency against FP32, predicted GPU latency, size and time."""
    head = f"[{o.index + 1:>{len(str(total))}}/{total}] {o.status:<8} {o.config.label(axes or None)}"
    r = o.row or {}
    if r.get("status") != "ok":
        return f"{head}: error: {r.get('error', '?')}"
    parts = []
    for k in ("accuracy", "fidelity"):
        m = r.get(k)
        c = (m or {}).get("candidate") or {}
        if c.get("estimate") is not None:
            p = m["percent"]
            parts.append(f"{m['name']} {_fmt_pct(c['estimate'], p)} "
                         f"[{_fmt_pct(c['low'], p)}, {_fmt_pct(c['high'], p)}]")
    cpu = r.get("cpu") or {}
    if cpu.get("latency_ms"):
        parts.append(f"cpu {cpu['latency_ms']:.1f} ms (fp32 {cpu['fp32_latency_ms']:.1f} ms)")
    pred = r.get("predicted") or {}
    if pred.get("latency_ms"):
        parts.append(f"{pred['model'].split(':')[-1]} {pred['latency_ms']:.3f} ms predicted")
    size = r.get("size") or {}
    if size.get("weight_bytes"):
        parts.append(f"{size['weight_bytes'] / 1e6:.2f} MB")
    t = (r.get("timing_s") or {}).get("total")
    if t is not None and o.status == "computed":
        parts.append(f"{t:.1f} s")
    return f"{head}: " + " | ".join(parts)


def _prepare_folder(out: Path, model_sha256: str, data_digest: str, force: bool) -> None:
    """Make *out* ready: refuse a sweep of another model or data there unless *force*, and with
    *force* remove the previous sweep's store, statistics, models and plots."""
    from ..utils import check_output_dir

    check_output_dir(out)
    db = out / DB_NAME
    if db.is_file() and not force:
        with Store(db) as st:
            old = (st.meta("model_sha256"), st.meta("data_digest"))
        if old != (None, None) and old != (model_sha256, data_digest):
            what = "model" if old[0] != model_sha256 else "data"
            raise CalibError(f"{out} holds a sweep of another {what}; choose another --out, or pass --force to "
                             f"start over there")
    if force:
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", FRONT_MD, *(front_png(c) for c in COSTS)):
            (out / name).unlink(missing_ok=True)
        for d in ("stats", "models"):
            shutil.rmtree(out / d, ignore_errors=True)


def sweep(model, data=None, grid=None, out=None, *, jobs: int = 1, ray: str | None = None, force: bool = False,
          latency: str | None = DEFAULT_LATENCY, timing_runs: int = DEFAULT_TIMING_RUNS,
          eval_samples: int | None = 500, threads: int | None = None, metric: str | None = None, config=None,
          preprocess=None, classes=None, labels=None, strict: bool = False, limit: int | None = None, seed: int = 0,
          dataset=None, progress: bool = True, echo=None) -> SweepResult:
    """Run the sweep *grid* (a TOML path, a dict of axis -> values, or a :class:`Grid`) of *model*
    on *data* into the folder *out*, resuming what is there (see the module docs and
    docs/sweeps.md).

    *data* (a path; or an opened *dataset* of a path) with *preprocess*, *classes*, *labels*,
    *strict*, *limit* and *seed* as :func:`calib.datasets.open_dataset` takes them. *jobs*: points
    run at once in worker processes (1: in this process); *ray*: a Ray address (or ``auto``) to run
    them on instead. *force*: discard what *out* holds and start over. *latency*: the latency model
    predicting GPU latency (``roofline:<gpu>``, or None); *timing_runs*: timed runs per model at
    batch 1 on the CPU (0: no CPU timing); *eval_samples*: samples of the eval split every point is
    scored on; *threads*: ONNX Runtime threads per point (default: the cores shared among *jobs*);
    *metric*: the metric of the front (default: the headline metric against the labels, else
    against FP32); *config*: calibration options the grid does not vary (``smooth``,
    ``bias_correction``, ``trt_version``: a dict or :class:`calib.CalibrationConfig`; the grid's
    ``[calibration]`` table overrides them). *echo*: called
    with each status line (default: printed on stdout); *progress*: a bar over the points on stderr.
    """
    from tqdm import tqdm

    from .. import utils
    from ..datasets import open_dataset
    from ..model import load_model
    from ..pipeline import CalibrationConfig
    from ..qdq import check_input
    from .points import check_latency_spec, data_digest

    if out is None:
        raise CalibError("no output folder: a sweep needs out= (--out DIR) for its store")
    g = _grid(grid)
    latency = check_latency_spec(latency)
    if timing_runs < 0:
        raise CalibError(f"timing runs must be 0 or more, got {timing_runs}")
    if eval_samples is not None and eval_samples < 1:
        raise CalibError(f"eval samples must be at least 1, got {eval_samples}")
    base = CalibrationConfig.of(config, **g.calibration)
    m = load_model(model)
    for t in sorted(set(g.axes["target"])):
        check_input(m, t)
    if m.path is None:
        raise CalibError("a sweep needs the model as a file (its points reopen it)")
    # on Ray the model's bytes travel to the workers; the data and the sweep folder are read and
    # written at their paths, which every worker must see
    executor = make_executor(jobs, ray, files={str(m.path): m.path.read_bytes()} if ray is not None else None)
    try:
        ds = dataset if dataset is not None else open_dataset(data, m, preprocess, limit=limit, seed=seed,
                                                              classes=classes, labels=labels, strict=strict)
        spec = ds.spec()
        out = Path(out).absolute()         # workers (Ray's too) write statistics and models there
        digest = data_digest(ds)
        _prepare_folder(out, m.sha256, digest, force)
        out.mkdir(parents=True, exist_ok=True)
        algs = g.axes["algorithm"]
        settings = Settings(latency=latency, eval_samples=eval_samples, timing_runs=timing_runs, smooth=base.smooth,
                            bias_correction=base.bias_correction, trt_version=base.trt_version,
                            threads=threads or default_threads(getattr(executor, "slots", jobs)),
                            model_sha256=m.sha256, data_digest=digest, auto="auto" in algs,
                            histogram=any(a != "max" for a in algs), models_dir=str(out / "models"))
        points = g.points()
        axes = g.varying()
        write = echo or (lambda line: tqdm.write(line, file=sys.stdout))
        with Store(out / DB_NAME) as store:
            store.set_meta(model=str(m.path), model_sha256=m.sha256, data=json.dumps(spec, sort_keys=True),
                           data_digest=digest)
            run_id = store.start_run({"grid": g.to_dict(), "settings": settings.__dict__, "jobs": jobs, "ray": ray})
            bar = tqdm(total=len(points), desc="sweep", unit="point", file=sys.stderr, disable=not progress,
                       leave=False)

            def on_result(o: Outcome, total: int) -> None:
                bar.update(1)
                if o.status != "cached":        # an interrupted run says the store holds results
                    utils.COMMITTED.append(out / DB_NAME)
                write(status_line(o, total, axes))

            def on_statistics(info: dict) -> None:
                if not info.get("cached"):
                    write(f"statistics of n{info['samples_axis']} s{info['seed']}: {info['samples']} calibration "
                          f"samples observed in {info['seconds']:.1f} s, shared by their points")

            counts = {"computed": 0, "cached": 0, "failed": 0}
            try:
                outcomes = run_sweep(points, str(m.path), spec, out, settings, store, executor=executor,
                                     run_id=run_id, force=force, on_result=on_result, on_statistics=on_statistics)
                for o in outcomes:
                    counts[o.status] += 1
            finally:
                bar.close()
                store.finish_run(run_id, **counts)
            rows = [r["row"] for r in store.rows()]
    finally:
        executor.close()
    res = SweepResult(rows=rows, outcomes=outcomes, metric=None, run_id=run_id)
    t0 = time.perf_counter()
    res.metric, res.paths = write_front(out, rows, metric, subject=m.name)
    res.timing["front"] = round(time.perf_counter() - t0, 3)
    res.paths["store"] = out / DB_NAME
    return res


def write_front(out: Path, rows: list[dict], metric: str | None = None, subject: str | None = None):
    """Write ``front.md`` and one ``front_<cost>.png`` per cost the points have into *out* (one
    atomic set; *subject*, the model's name, opens the plots' titles); returns ``(metric, {name:
    path})``. Nothing when no point succeeded."""
    from ..utils import atomic_write_all

    if not any(r.get("status") == "ok" for r in rows):
        return None, {}
    m = choose_metric(rows, metric)
    files = [(out / FRONT_MD, (f"# Pareto fronts: {m.name}\n\n" + front_table(rows, m)).encode("utf-8"))]
    paths = {"front": out / FRONT_MD}
    for c in costs_of(rows):
        files.append((out / front_png(c), plot_front(rows, c, m, subject)))
        paths[f"front_{c}"] = out / front_png(c)
    atomic_write_all(files, overwrite=True)
    return m, paths


def load(out) -> list[dict]:
    """The stored points of the sweep in the folder *out*: flat columns and ``row`` each."""
    with Store(Path(out) / DB_NAME, create=False) as st:
        return st.rows()


def show(out, metric: str | None = None) -> str:
    """The table of every point of the sweep in *out*, front members marked ``*``, best first."""
    rows = [r["row"] for r in load(out)]
    m = choose_metric(rows, metric) if any(r.get("status") == "ok" for r in rows) else None
    return points_table(rows, m)


def export_csv(out) -> str:
    """The stored points of the sweep in *out* as CSV text (flat columns)."""
    return csv_text(load(out))


def export_json(out) -> list[dict]:
    """The stored points of the sweep in *out*: flat columns plus the whole result ``row``."""
    return load(out)


__all__ = ["sweep", "show", "load", "export_csv", "export_json", "write_front", "SweepResult", "status_line",
           "PointConfig", "Settings", "Grid", "load_grid", "make_grid", "run_point", "run_statistics", "AXES",
           "Store"]
