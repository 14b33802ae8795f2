"""Run a model over calibration batches and gather a :class:`~calib.stats.TensorObserver` per tensor.

``collect_statistics(model, batches, tensors=None, *, threads=None, progress=True)``

* ``batches``: an iterable of feed dicts ``{input_name: array}`` or of objects with ``.feed``
  (:class:`calib.datasets.Batch`).
* ``tensors``: names to observe; default every float activation tensor plus the float graph
  inputs, in topological order. Integer / bool tensors (shapes, indices) are recognised by
  their dtype at the first batch and skipped. Inputs are observed from the feed itself.
* ``threads``: ONNX Runtime intra-op threads (default all cores / ``$CALIB_THREADS``).

ONNX Runtime (:class:`calib.backends.onnxruntime.OrtEngine` with ``capture=``) returns the
captured intermediates of a run; each batch is split into runs of at most ``run_batch``
samples (default 4) when the batch dimension is dynamic, which lowers peak memory and, on the
CPU, time: allocating hundreds of MB of fresh outputs per run costs more than the runs.

Overlap: with ``workers > 0`` (default: one per core, at most 4) the histogram updates run on worker
threads while ONNX Runtime computes the next run. Each worker owns a fixed share of the
tensors (no locks; results are identical to the serial path because observers are order
independent). At most one finished run's activations wait in the queue while ONNX Runtime
produces the next, so at most two runs (two ``run_batch``-sample slices) of activations are
held at any time; with ``workers=0`` exactly one.
"""
from __future__ import annotations

import os
import queue
import threading
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import CalibError, EmptyDatasetError
from .model import Model, load_model
from .stats import TensorObserver

_STOP = object()


def default_tensors(model: Model) -> list[str]:
    """Float graph inputs plus every activation tensor (dtype filtering happens at run time)."""
    inputs = [t.name for t in model.inputs if np.dtype(t.dtype).kind == "f"]
    return inputs + [t for t in model.activation_tensors() if t not in set(inputs)]


def _feed_of(batch: Any) -> Mapping[str, np.ndarray]:
    feed = getattr(batch, "feed", batch)
    if not isinstance(feed, Mapping):
        raise CalibError(f"a calibration batch must be a dict of input arrays or have .feed, got {type(batch).__name__}")
    return feed


def _split(feed: Mapping[str, np.ndarray], model: Model, step: int | None) -> list[dict[str, np.ndarray]]:
    """Split a feed along axis 0 into runs of at most *step* samples (dynamic batch only)."""
    arrays = {k: np.asarray(v) for k, v in feed.items()}
    if not step or not arrays:
        return [arrays]
    if any(t.fixed_batch is not None for t in model.inputs):
        return [arrays]          # fixed batch: the engine splits itself
    sizes = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    if len(sizes) != 1:
        return [arrays]
    n = sizes.pop()
    if n <= step:
        return [arrays]
    return [{k: v[i:i + step] for k, v in arrays.items()} for i in range(0, n, step)]


class _Updater:
    """Applies captured arrays to observers, optionally on worker threads."""

    def __init__(self, observers: dict[str, TensorObserver], workers: int):
        self.observers = observers
        self.workers = workers
        self.error: BaseException | None = None
        self.queues: list[queue.Queue] = []
        self.threads: list[threading.Thread] = []
        self.shares: list[list[str]] = []

    def start(self, sizes: dict[str, int]) -> None:
        if self.workers <= 0:
            return
        # balance tensors over workers by size (largest first), a fixed assignment
        shares: list[list[str]] = [[] for _ in range(self.workers)]
        load = [0] * self.workers
        for name in sorted(self.observers, key=lambda k: -sizes.get(k, 0)):
            i = load.index(min(load))
            shares[i].append(name)
            load[i] += sizes.get(name, 0)
        self.shares = shares
        for i in range(self.workers):
            q: queue.Queue = queue.Queue(maxsize=1)
            t = threading.Thread(target=self._loop, args=(q, shares[i]), name=f"calib-stats-{i}", daemon=True)
            t.start()
            self.queues.append(q)
            self.threads.append(t)

    def _apply(self, arrays: Mapping[str, np.ndarray], names: Iterable[str]) -> None:
        for name in names:
            a = arrays.get(name)
            if a is not None:
                self.observers[name].update(a)

    def _loop(self, q: queue.Queue, names: list[str]) -> None:
        while True:
            item = q.get()
            try:
                if item is _STOP:
                    return
                if self.error is None:
                    self._apply(item, names)
            except BaseException as exc:  # reported by the main thread
                self.error = exc
            finally:
                q.task_done()

    def submit(self, arrays: Mapping[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        if not self.threads:
            self._apply(arrays, list(self.observers))
            return
        for q in self.queues:
            q.put(arrays)

    def finish(self) -> None:
        for q in self.queues:
            q.put(_STOP)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error


def collect_statistics(model: "Model | str | os.PathLike", batches: Iterable[Any],
                       tensors: Sequence[str] | None = None, *, threads: int | None = None,
                       progress: "bool | str" = True, workers: int | None = None,
                       run_batch: int | None = 4, bins: int | None = None) -> dict[str, TensorObserver]:
    """``{tensor: TensorObserver}`` over all *batches* (see the module docstring)."""
    from .backends.onnxruntime import OrtEngine

    m = load_model(model)
    input_names = [t.name for t in m.inputs]
    explicit = tensors is not None
    wanted = list(dict.fromkeys(tensors)) if explicit else default_tensors(m)
    if explicit and not wanted:
        raise CalibError("no tensors to observe were given")
    capture = [t for t in wanted if t not in set(input_names)]
    engine = OrtEngine(m, capture=capture, threads=threads)
    if workers is None:
        cores = os.cpu_count() or 1
        workers = min(4, cores) if cores > 1 else 0
    kw = {"bins": bins} if bins else {}

    bar = None
    if progress:
        from tqdm import tqdm

        total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        desc = progress if isinstance(progress, str) else "statistics"
        bar = tqdm(total=total, desc=desc, unit="batch", leave=False)

    observers: dict[str, TensorObserver] | None = None
    updater: _Updater | None = None
    n_batches = 0
    n_samples = 0
    try:
        for batch in batches:
            feed = _feed_of(batch)
            for part in _split(feed, m, run_batch):
                outs = engine.run(part)
                arrays = {k: outs[k] for k in capture if k in outs}
                for k in wanted:
                    if k in set(input_names) and k in part:
                        arrays[k] = np.asarray(part[k])
                if observers is None:
                    keep = [k for k in wanted if k in arrays and
                            (explicit or np.asarray(arrays[k]).dtype.kind == "f")]
                    if not keep:
                        raise CalibError(f"{m.name}: none of the requested tensors holds float values")
                    observers = {k: TensorObserver(k, **kw) for k in keep}
                    updater = _Updater(observers, workers)
                    updater.start({k: int(np.asarray(arrays[k]).size) for k in keep})
                arrays = {k: arrays[k] for k in observers if k in arrays}
                updater.submit(arrays)
                del outs, arrays
                first = next(iter(part.values()), None)
                n_samples += int(first.shape[0]) if first is not None and first.ndim else 1
            n_batches += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(samples=n_samples, refresh=False)
        if updater is not None:
            updater.finish()
    finally:
        if bar is not None:
            bar.close()
        if updater is not None and updater.threads:
            for q in updater.queues:
                try:
                    q.put_nowait(_STOP)
                except queue.Full:
                    pass
    if observers is None:
        raise EmptyDatasetError("no calibration batches: the data source yielded nothing")
    bad = [o for o in observers.values() if o.nonfinite]
    if bad:
        shown = ", ".join(f"'{o.name}' ({o.nan_count} NaN, {o.inf_count} Inf)" for o in bad[:3])
        warnings.warn(f"{len(bad)} tensor(s) held non-finite values, left out of their statistics: {shown}"
                      + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""), RuntimeWarning, stacklevel=2)
    return observers
