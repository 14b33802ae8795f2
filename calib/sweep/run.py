"""The sweep driver: skip finished points, collect statistics once per group, run the rest on an
executor, store each result as it comes.

Executors (the seam between the driver and where points run) have ``slots`` (how many tasks may
be in flight), ``submit(fn, *args, **kwargs) -> concurrent.futures.Future`` and ``close()``:

- :class:`SerialExecutor` (``--jobs 1``): runs each task in this process when submitted;
- :class:`ProcessExecutor` (``--jobs N``): a pool of N worker processes (``spawn``; each ends
  with the driver, even under SIGKILL, where the platform allows: Linux);
- a Ray executor (``--ray ADDRESS|auto``) from :mod:`calib.distributed`
  (``ray_executor(address, files=)``), where that module and Ray are installed.

The driver (:func:`run_sweep`) keeps at most ``slots`` tasks in flight. A (samples, seed) group's
statistics task runs first (:func:`calib.sweep.points.run_statistics`, unless its file is in the
statistics folder already), then its points (:func:`calib.sweep.points.run_point`); results come
back to the driver, which alone writes the store, one committed transaction per point. A
point's failure is stored with its error; a group whose statistics cannot be collected fails
its points with that error.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CalibError
from .points import PointConfig, Settings, one_line, run_point, run_statistics, statistics_path


class SerialExecutor:
    """Runs each task in this process, when it is submitted (one slot)."""

    slots = 1

    def submit(self, fn, *args, **kwargs) -> cf.Future:
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as exc:   # handed to the driver through the future
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            f.set_exception(exc)
        return f

    def close(self) -> None:
        pass


def _die_with_parent() -> None:
    """Worker initializer: end this process when the driver dies, SIGKILL included (Linux's
    ``PR_SET_PDEATHSIG``; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG = 1
        except OSError:
            pass
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the driver's to handle


class ProcessExecutor:
    """A pool of *jobs* worker processes (:class:`concurrent.futures.ProcessPoolExecutor`, spawned)."""

    def __init__(self, jobs: int):
        import multiprocessing as mp

        self.slots = jobs
        self.pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                           initializer=_die_with_parent)

    def submit(self, fn, *args, **kwargs) -> cf.Future:
        return self.pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_executor(jobs: int = 1, ray: str | None = None, files: dict[str, bytes] | None = None):
    """The executor for ``--jobs`` / ``--ray``; *files* (path -> bytes, the model) are shipped to
    Ray's workers, which get a local copy where a task's argument names such a path."""
    if ray is not None:
        from ..distributed import ray_executor

        return ray_executor(ray, files=files or {})
    if jobs < 1:
        raise CalibError(f"--jobs must be at least 1, got {jobs}")
    return SerialExecutor() if jobs == 1 else ProcessExecutor(jobs)


@dataclass
class Outcome:
    """What happened to one point in this run."""

    index: int
    config: PointConfig
    key: str
    status: str          # "computed" | "cached" | "failed"
    row: dict


def default_threads(jobs: int) -> int:
    """ONNX Runtime threads per point so that *jobs* points at once use the cores once."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def run_sweep(points: list[PointConfig], model_path: str, data_spec: dict, out: Path, settings: Settings, store, *,
              executor, run_id: str, force: bool = False,
              on_result: Callable[[Outcome, int], None] | None = None,
              on_statistics: Callable[[dict], None] | None = None) -> list[Outcome]:
    """Run every point of *points* not finished in *store* (all of them with *force*) on
    *executor*, storing each result under *run_id*; *on_result(outcome, total)* is called for every
    point (cached ones first), *on_statistics(info)* when a group's statistics are ready. Returns
    the outcomes in the order of *points*."""
    stats_dir = out / "stats"
    stats_dir.mkdir(parents=True, exist_ok=True)
    extra = settings.key_fields()
    keys = [p.key(settings.model_sha256, settings.data_digest, extra) for p in points]
    done = {} if force else store.status()
    total = len(points)
    outcomes: dict[int, Outcome] = {}
    todo: dict[tuple[int, int], deque] = {}
    for i, (p, k) in enumerate(zip(points, keys)):
        if done.get(k) == "ok":
            outcomes[i] = Outcome(i, p, k, "cached", store.get(k))
            if on_result:
                on_result(outcomes[i], total)
        else:
            todo.setdefault((p.samples, p.seed), deque()).append(i)
    groups = deque(todo)                       # in grid order
    ready: deque = deque()                     # points whose statistics are there
    for g in list(groups):
        if statistics_path(stats_dir, settings, *g).is_file():
            groups.remove(g)
            ready.extend(todo[g])
    in_flight: dict[cf.Future, tuple] = {}

    def failed(i: int, error: str) -> dict:
        return {"config": points[i].to_dict(), "status": "failed", "timing_s": {}, "error": error}

    def store_point(i: int, row: dict) -> None:
        store.put(keys[i], row, run_id)
        outcomes[i] = Outcome(i, points[i], keys[i], "computed" if row["status"] == "ok" else "failed", row)
        if on_result:
            on_result(outcomes[i], total)

    try:
        while ready or groups or in_flight:
            while len(in_flight) < executor.slots and (ready or groups):
                if ready:
                    i = ready.popleft()
                    f = executor.submit(run_point, points[i], model_path, data_spec, str(stats_dir),
                                        latency=settings.latency, threads=settings.threads, settings=settings)
                    in_flight[f] = ("point", i)
                else:
                    g = groups.popleft()
                    f = executor.submit(run_statistics, g[0], g[1], model_path, data_spec, str(stats_dir),
                                        settings=settings)
                    in_flight[f] = ("statistics", g)
            finished, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
            for f in finished:
                kind, what = in_flight.pop(f)
                exc = f.exception()
                if kind == "point":
                    store_point(what, f.result() if exc is None else failed(what, one_line(exc)))
                elif exc is None:
                    if on_statistics:
                        on_statistics(dict(f.result(), samples_axis=what[0], seed=what[1]))
                    ready.extend(todo[what])
                else:
                    for i in todo[what]:
                        store_point(i, failed(i, f"statistics: {one_line(exc)}"))
    finally:
        for f in in_flight:
            f.cancel()
    return [outcomes[i] for i in sorted(outcomes)]


__all__ = ["SerialExecutor", "ProcessExecutor", "make_executor", "run_sweep", "Outcome", "default_threads"]
