"""Run a model over calibration batches and gather a :class:`~calib.stats.TensorObserver` per tensor.

``collect_statistics(model, batches, tensors=None, *, threads=None, progress=True, derive=True)``

* ``batches``: an iterable of feed dicts ``{input_name: array}`` or of objects with ``.feed``
  (:class:`calib.datasets.Batch`).
* ``tensors``: names to observe; default every float activation tensor plus the float graph
  inputs, in topological order. Integer / bool tensors (shapes, indices) are recognised by
  their dtype at the first batch and skipped. Inputs are observed from the feed itself.
* ``threads``: ONNX Runtime intra-op threads (default all cores / ``$CALIB_THREADS``).

ONNX Runtime (:class:`calib.backends.onnxruntime.OrtEngine` with ``capture=``) returns the
captured intermediates of a run; each batch is split into runs of at most ``run_batch``
samples (default 4) when the batch dimension is dynamic, or of the model's fixed batch size,
which bounds the memory two runs of captured tensors take and keeps them in cache.

The capture session runs at ONNX Runtime's ``all`` level, like the deployed model. The captured
tensors go into a ring of two preallocated buffer sets (``OrtEngine(reuse=2)``) instead of fresh
memory each run. Minimum and maximum are taken in NumPy on the worker threads and histograms are
binned by the kernels of :mod:`calib.stats`; summarising tensors inside the graph (ReduceMin /
ReduceMax) is not used because it was slower. Where the time goes, measured:
``benchmarks/README.md`` ("Where the time goes").

Derived observers (``derive=True``, the default): an observer of a tensor whose values follow
exactly from other observed tensors is built from theirs at the end instead of capturing and
histogramming the tensor (:func:`plan_derivations`): outputs of Reshape, Flatten, Squeeze,
Unsqueeze, Transpose, Identity, Dropout (same values), Concat (merge of the inputs' observers)
and zero-padding Pad (the input's observer plus the zeros, counted from the run-time shapes).
Observers merge exactly, so the results are bit-identical to ``derive=False``; integer tensors
(known from ONNX shape inference) are not captured either. Fewer captured outputs also let ONNX
Runtime keep more of its graph rewrites (a Pad fused into its Conv, constant-folded shape
arithmetic).

With ``derive=True`` the outputs of Relu and of Clip with constant bounds are not captured
either (:func:`plan_ranges`): for finite inputs they follow from the input's values. Range-only collection
(``histogram=False``, max calibration) takes the output's min and max as the clipped min and
max of the input's, at each run. With histograms, each ``clip(x, 0, hi)`` (Relu, ReLU6;
:func:`plan_clip_splits`) has its input observed by a :class:`~calib.stats.ClipSplitObserver`,
which counts every value once into three histograms (below 0, 0 to ``hi``, above ``hi``) and
gives the exact observers of both tensors at the end. A run whose input holds NaN or Inf is
observed directly and runs again with the outputs captured (a second session, built on first
need), so NaN / Inf counts and every other statistic stay exactly those of capturing them.

Overlap: with ``workers > 0`` (default: one per core, at most 4) the histogram updates run on worker
threads while ONNX Runtime computes the next run. Each worker owns a fixed share of the
tensors (no locks; results are identical to the serial path because observers are order
independent). A run is handed to the workers only once they finished the previous one, so
while ONNX Runtime produces the next run at most two runs (two ``run_batch``-sample slices)
of activations are held at any time; with ``workers=0`` exactly one. While workers run, ONNX Runtime's idle
intra-op threads sleep instead of spinning (``spinning=False``), leaving the cores to the
histogram workers.
"""
from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import CalibError, EmptyDatasetError
from .graph import STANDARD_DOMAINS, ConstEval, Graph, attr, clip_bounds, tensor_types
from .model import Model, load_model
from .stats import ClipSplitObserver, TensorObserver, clip_value

_STOP = object()

# Ops whose (first) output holds exactly the values of their (first) input, only rearranged.
_ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout"})


class _Derived:
    """How one tensor's observer follows from others' (see :func:`plan_derivations`).

    ``kind``: ``"alias"`` (same values as ``sources[0]``), ``"concat"`` (the union of the
    sources' values) or ``"pad"`` (``sources[0]``'s values plus zeros; ``pads`` holds the
    ONNX begin/end amounts, all >= 0). ``perm`` / ``axis`` describe the output shape where
    a later ``"pad"`` needs it.
    """

    __slots__ = ("name", "kind", "op", "sources", "pads", "perm", "axis")

    def __init__(self, name, kind, op, sources, pads=None, perm=None, axis=None):
        self.name, self.kind, self.op, self.sources = name, kind, op, list(sources)
        self.pads, self.perm, self.axis = pads, perm, axis

    def __repr__(self) -> str:
        return f"_Derived({self.name!r}, {self.kind}, {self.op}, {self.sources})"


def _pad_plan(node, model: Model, consts: ConstEval) -> np.ndarray | None:
    """ONNX pads (begin..., end...) of a Pad that adds only zeros, else None."""
    mode = attr(node, "mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        return None
    ins = list(node.input)
    if model.opset < 11:
        pads = attr(node, "pads")
        value = attr(node, "value", 0.0)
    else:
        if len(ins) < 2 or not ins[1] or (len(ins) > 3 and ins[3]):     # axes input: not handled
            return None
        pads = consts.value(ins[1])
        value = 0.0
        if len(ins) > 2 and ins[2]:
            cv = consts.value(ins[2])
            if cv is None or cv.size != 1:
                return None
            value = cv.reshape(-1)[0]
    if pads is None:
        return None
    pads = np.asarray(pads, dtype=np.int64).reshape(-1)
    try:
        zero = float(value) == 0.0
    except (TypeError, ValueError):
        return None
    if not zero or pads.size % 2 or (pads < 0).any():
        return None
    return pads


def plan_derivations(model: Model, observed: Sequence[str]) -> dict[str, _Derived]:
    """Which of the *observed* tensors can be derived exactly from other observed tensors.

    * outputs of Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Identity and Dropout
      (inference: its output is its input) hold the values of their data input: same observer;
    * Concat: the union of its inputs' values, i.e. the merge of their observers (exact);
    * Pad with mode ``constant`` and value 0 (pads and value constant, no ``axes``, no
      negative pads): the input's values plus ``numel(out) - numel(in)`` zeros
      (:meth:`TensorObserver.add_zeros`); it needs the input's shape at each run, known when
      the input is captured or derived through ops whose output shape follows from it.

    A derivation is used only when every source is itself observed (captured, a graph input
    or derived; chains resolve in topological order). Not derivable here (by design): MaxPool
    and any other op that changes values; Relu / Clip are :func:`plan_ranges`' and
    :func:`plan_clip_splits`' business.
    """
    obs = set(observed)
    inputs = {t.name for t in model.inputs}
    consts = ConstEval(Graph(model.proto))
    plan: dict[str, _Derived] = {}
    shape_known = set(inputs) | {t for t in obs if t not in inputs}   # captured tensors have shapes
    for node in model.nodes:
        if not node.output or node.output[0] not in obs or node.output[0] in inputs:
            continue
        out = node.output[0]
        op = node.op_type
        if node.domain not in STANDARD_DOMAINS:
            continue
        d = None
        if op in _ALIAS_OPS and node.input and node.input[0] in obs:
            if op == "Dropout" and len(node.input) > 2 and node.input[2]:
                tm = consts.value(node.input[2])
                if tm is None or bool(np.asarray(tm).reshape(-1)[0]):
                    continue                        # training mode (or unknown): values change
            perm = None
            if op == "Transpose":
                p = attr(node, "perm")
                perm = list(p) if p is not None else None
            d = _Derived(out, "alias", op, [node.input[0]], perm=perm,
                         axis=attr(node, "axis", 1) if op == "Flatten" else None)
        elif op == "Concat" and node.input and all(i and i in obs for i in node.input):
            d = _Derived(out, "concat", op, list(node.input), axis=attr(node, "axis"))
        elif op == "Pad" and node.input and node.input[0] in obs:
            pads = _pad_plan(node, model, consts)
            if pads is not None:
                d = _Derived(out, "pad", op, [node.input[0]], pads=pads)
        if d is None:
            continue
        plan[out] = d
        # is the output's shape computable from its sources' shapes at run time?
        shape_known.discard(out)
        if d.kind == "pad" and d.sources[0] not in shape_known:
            del plan[out]                            # cannot count the zeros: capture it instead
            shape_known.add(out)
            continue
        if all(s in shape_known for s in d.sources) and (
                op in ("Identity", "Dropout", "Transpose", "Flatten", "Concat", "Pad")):
            shape_known.add(out)
    return plan


def plan_ranges(model: Model, direct: Sequence[str]) -> dict[str, tuple[str, float, float]]:
    """Range-only derivations: ``{out: (src, lo, hi)}`` for each Relu / Clip (constant bounds)
    whose input and output are both in *direct* (observed directly, in topological order).

    ``clip(x, lo, hi) = min(max(x, lo), hi)`` is monotone, so for finite ``x`` the output's
    minimum and maximum are the clipped minimum and maximum of the input, and it holds as many
    values: a range-only observer of the output follows from its input's range at each run
    without capturing it. For histograms see :func:`plan_clip_splits`. A run whose input holds
    NaN or Inf (or is not float32 / float16) does not derive: the output is computed again with
    it captured (:class:`_Updater`), so the results stay exact.
    """
    consts = ConstEval(Graph(model.proto))
    obs = set(direct)
    out: dict[str, tuple[str, float, float]] = {}
    for node in model.nodes:
        if node.op_type not in ("Relu", "Clip") or node.domain not in STANDARD_DOMAINS:
            continue
        if not node.input or not node.output or node.output[0] not in obs or node.input[0] not in obs:
            continue
        b = clip_bounds(node, consts)
        if b is not None:
            out[node.output[0]] = (node.input[0], b[0], b[1])
    return out


def plan_clip_splits(ranges: Mapping[str, tuple[str, float, float]]) -> dict[str, tuple[str, float, float]]:
    """The part of :func:`plan_ranges`' result whose outputs' *histograms* follow from their
    inputs' too: ``clip(x, 0, hi)`` with ``hi > 0`` (Relu, ReLU6), one per input, whose input is
    not itself derived. Its input is then observed by a :class:`~calib.stats.ClipSplitObserver`,
    from which the exact observers of both tensors follow; the output is not captured.
    """
    out: dict[str, tuple[str, float, float]] = {}
    taken: set[str] = set()
    for k, (src, lo, hi) in ranges.items():
        if lo == 0.0 and hi > 0.0 and src not in ranges and src not in taken:
            out[k] = (src, lo, hi)
            taken.add(src)
    return out


def _out_shape(d: _Derived, shapes: Mapping[str, tuple]) -> tuple | None:
    """Run-time shape of a derived tensor from its sources' shapes (None if not computable)."""
    src = [shapes.get(s) for s in d.sources]
    if any(s is None for s in src):
        return None
    s0 = src[0]
    if d.op in ("Identity", "Dropout"):
        return s0
    if d.op == "Transpose":
        perm = d.perm if d.perm is not None else list(range(len(s0)))[::-1]
        return tuple(s0[p] for p in perm)
    if d.op == "Flatten":
        ax = d.axis + len(s0) if d.axis < 0 else d.axis
        return (int(np.prod(s0[:ax], dtype=np.int64)), int(np.prod(s0[ax:], dtype=np.int64)))
    if d.op == "Concat":
        ax = d.axis + len(s0) if d.axis < 0 else d.axis
        return s0[:ax] + (sum(s[ax] for s in src),) + s0[ax + 1:]
    if d.op == "Pad":
        r = len(s0)
        return tuple(int(s0[i] + d.pads[i] + d.pads[i + r]) for i in range(r))
    return None


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _static_nonfloat(model: Model, names: Iterable[str]) -> set[str]:
    """Names among *names* whose element type ONNX shape inference knows and is not float.

    They would be dropped at the first batch anyway; not capturing them lets ONNX Runtime
    constant-fold the integer shape/padding arithmetic (and fuse what depends on it).
    """
    types = tensor_types(model.proto)
    nonfloat = {2, 3, 4, 5, 6, 7, 8, 9, 12, 13}    # (u)int8..64, string, bool
    return {n for n in names if types.get(n, 0) in nonfloat}


def default_tensors(model: Model) -> list[str]:
    """Float graph inputs plus every activation tensor (dtype filtering happens at run time)."""
    inputs = [t.name for t in model.inputs if np.dtype(t.dtype).kind == "f"]
    return inputs + [t for t in model.activation_tensors() if t not in set(inputs)]


def _capture_plan(m: Model, wanted: Sequence[str], explicit: bool, derive: bool,
                  histogram: bool) -> tuple[dict[str, _Derived], dict[str, tuple], list[str]]:
    """``(plan, ranges, capture)`` for observing *wanted*: the tensors derived from others'
    observers (:func:`plan_derivations`), the Relu / Clip outputs derived from their inputs
    (:func:`plan_ranges`, for histograms :func:`plan_clip_splits`), and those ONNX Runtime must
    output. Integer tensors known from shape inference are skipped unless named explicitly."""
    plan = plan_derivations(m, wanted) if derive else {}
    skip = _static_nonfloat(m, wanted) if (derive and not explicit) else set()
    direct = [t for t in wanted if t not in plan and t not in skip]
    ranges = plan_ranges(m, direct) if derive else {}
    if histogram:
        ranges = plan_clip_splits(ranges)
    inputs = {t.name for t in m.inputs}
    return plan, ranges, [t for t in direct if t not in inputs and t not in ranges]


def captured_tensors(model: Model | str | os.PathLike, *, histogram: bool = True) -> list[str]:
    """The tensors :func:`collect_statistics` has ONNX Runtime output for *model* by default
    (every float tensor observed, ``derive=True``), with or without histograms."""
    m = load_model(model)
    return _capture_plan(m, default_tensors(m), False, True, histogram)[2]


def _feed_of(batch: Any) -> Mapping[str, np.ndarray]:
    feed = getattr(batch, "feed", batch)
    if not isinstance(feed, Mapping):
        raise CalibError(f"a calibration batch must be a dict of input arrays or have .feed, "
                         f"got {type(batch).__name__}")
    return feed


def _split(feed: Mapping[str, np.ndarray], model: Model, step: int | None) -> list[dict[str, np.ndarray]]:
    """Split a feed along axis 0 into runs of at most *step* samples, or of exactly the model's
    fixed batch size (when the feed is a multiple of it; otherwise the engine reports it)."""
    arrays = {k: np.asarray(v) for k, v in feed.items()}
    if not step or not arrays:
        return [arrays]
    sizes = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    if len(sizes) != 1:
        return [arrays]
    n = sizes.pop()
    fixed = model.fixed_batch
    if fixed is not None:
        step = fixed
        if n % step:
            return [arrays]
    if n <= step:
        return [arrays]
    return [{k: v[i:i + step] for k, v in arrays.items()} for i in range(0, n, step)]


class _Updater:
    """Applies captured arrays to observers, optionally on worker threads.

    ``dependents``: ``{src: [(out, lo, hi), ...]}`` from :func:`plan_ranges`; each ``out`` is
    not captured but follows from its source at each run, on the worker that owns the source:
    from its range (range-only collection), or, with ``splits`` (``{src: ClipSplitObserver}``,
    histograms; :func:`plan_clip_splits`), from the split observer that the source's values go
    into instead of its own observer (:meth:`finish_splits` builds both observers at the end).
    A run whose source is not all finite float32 / float16 is observed directly and calls
    ``recapture(feed)`` (ONNX Runtime again, with the outputs captured) for their values.
    """

    def __init__(self, observers: dict[str, TensorObserver], workers: int,
                 dependents: Mapping[str, list] | None = None, recapture=None,
                 splits: dict[str, ClipSplitObserver] | None = None):
        self.observers = observers
        self.workers = workers
        self.dependents = dict(dependents or {})
        self.recapture = recapture
        self.splits = dict(splits or {})
        derived = {d[0] for deps in self.dependents.values() for d in deps}
        self.roots = [k for k in observers if k not in derived]
        self.error: BaseException | None = None
        self.queues: list[queue.Queue] = []
        self.slots: list[threading.Semaphore] = []
        self.threads: list[threading.Thread] = []
        self.shares: list[list[str]] = []

    def start(self, sizes: dict[str, int]) -> None:
        if self.workers <= 0:
            return
        # balance tensors over workers by size (largest first), a fixed assignment
        shares: list[list[str]] = [[] for _ in range(self.workers)]
        load = [0] * self.workers
        for name in sorted(self.roots, key=lambda k: -sizes.get(k, 0)):
            i = load.index(min(load))
            shares[i].append(name)
            load[i] += sizes.get(name, 0)
        self.shares = shares
        for i in range(self.workers):
            q: queue.Queue = queue.Queue()
            slot = threading.Semaphore(1)        # one run per worker, queued or in progress
            t = threading.Thread(target=self._loop, args=(q, slot, shares[i]), name=f"calib-stats-{i}", daemon=True)
            t.start()
            self.queues.append(q)
            self.slots.append(slot)
            self.threads.append(t)

    def _apply(self, arrays: Mapping[str, np.ndarray], names: Iterable[str], feed=None) -> None:
        for name in names:
            a = arrays.get(name)
            if a is None:
                continue
            deps = self.dependents.get(name)
            if not deps:
                self.observers[name].update(a)
                continue
            a = np.asarray(a)
            if a.dtype in (np.float32, np.float16) and a.size:
                mn, mx = a.min(), a.max()                 # NaN-propagating: finite => all finite
                if np.isfinite(mn) and np.isfinite(mx):
                    split = self.splits.get(name)
                    if split is not None:
                        split.update(a, (mn, mx))
                        continue
                    self.observers[name].add_range(mn, mx, a.size)
                    self._derive(deps, float(mn), float(mx), a.size)
                    continue
            self.observers[name].update(a)
            if a.size:
                self._recapture(deps, feed)

    def _derive(self, deps, mn: float, mx: float, n: int) -> None:
        for out, lo, hi in deps:
            cmn, cmx = clip_value(mn, lo, hi), clip_value(mx, lo, hi)
            self.observers[out].add_range(cmn, cmx, n)
            if out in self.dependents:
                self._derive(self.dependents[out], cmn, cmx, n)

    def finish_splits(self) -> None:
        """Each split source's observer and its output's, merged with what their own observers
        got from runs that did not derive (exact: observers merge as if updated together)."""
        for src, split in self.splits.items():
            (out, _, _), = self.dependents[src]
            self.observers[src] = split.observer(src).merge(self.observers[src])
            self.observers[out] = split.clipped(out).merge(self.observers[out])
        self.splits = {}

    def _recapture(self, deps, feed) -> None:
        """Exact fallback: the dependents' values of this run, computed again and observed."""
        outs = self.recapture(feed)
        todo = list(deps)
        while todo:
            out, _, _ = todo.pop()
            self.observers[out].update(outs[out])
            todo.extend(self.dependents.get(out, ()))

    def _loop(self, q: queue.Queue, slot: threading.Semaphore, names: list[str]) -> None:
        while True:
            item = q.get()
            try:
                if item is _STOP:
                    return
                if self.error is None:
                    self._apply(item[0], names, item[1])
            except BaseException as exc:  # reported by the main thread
                self.error = exc
            finally:
                item = None                      # drop this run's arrays before waiting for the next
                slot.release()
                q.task_done()

    def submit(self, arrays: Mapping[str, np.ndarray], feed=None) -> None:
        if self.error is not None:
            raise self.error
        if not self.threads:
            self._apply(arrays, self.roots, feed)
            return
        # wait until each worker finished the previous run: with the run ONNX Runtime produces
        # next, at most two runs of activations are alive
        for q, slot in zip(self.queues, self.slots):
            slot.acquire()
            q.put((arrays, feed))

    def finish(self) -> None:
        for q in self.queues:
            q.put(_STOP)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error


def collect_statistics(model: Model | str | os.PathLike, batches: Iterable[Any],
                       tensors: Sequence[str] | None = None, *, threads: int | None = None,
                       progress: bool | str = True, workers: int | None = None,
                       run_batch: int | None = 4, bins: int | None = None,
                       derive: bool = True, spinning: bool | None = None,
                       histogram: bool = True, optimize: str | None = None) -> dict[str, TensorObserver]:
    """``{tensor: TensorObserver}`` over all *batches* (see the module docstring).

    ``derive=False`` captures and histograms every requested tensor directly (the path before
    derivation existed; the results are bit-identical either way). ``spinning``: whether ONNX
    Runtime's idle intra-op threads spin (default: only when no histogram workers share the cores).
    ``histogram=False`` observes ranges only (min, max, counts): enough for max calibration, and
    several times cheaper, since binning is most of the per-value work. With ``derive``, the
    outputs of Relu and constant-bound Clip are not captured (:func:`plan_ranges`; with
    histograms those of the form ``clip(x, 0, hi)``, :func:`plan_clip_splits`).
    ``optimize``: ONNX Runtime's optimisation level for the capture session (default ``all``,
    the values the deployed model computes; ``basic`` gives the values of collection before
    2026-11, several times slower, see :class:`~calib.backends.onnxruntime.OrtEngine`).
    """
    from .backends.onnxruntime import OrtEngine

    m = load_model(model)
    input_names = [t.name for t in m.inputs]
    inputs = set(input_names)
    explicit = tensors is not None
    wanted = list(dict.fromkeys(tensors)) if explicit else default_tensors(m)
    if explicit and not wanted:
        raise CalibError("no tensors to observe were given")
    plan, ranges, capture = _capture_plan(m, wanted, explicit, derive, histogram)
    dependents: dict[str, list] = {}
    for out, (src, lo, hi) in ranges.items():
        dependents.setdefault(src, []).append((out, lo, hi))
    if workers is None:
        cores = os.cpu_count() or 1
        workers = min(4, cores) if cores > 1 else 0
    if spinning is None:
        spinning = workers == 0
    # with spinning=False ONNX Runtime's idle threads sleep, leaving the cores to the histogram workers
    # captured tensors go into a ring of preallocated buffers: a run's arrays are overwritten two
    # runs later, when the workers are done with them (see _Updater.submit); the arena then only
    # holds ONNX Runtime's internal buffers, reused from run to run
    level = optimize or "all"
    engine = OrtEngine(m, capture=capture, threads=threads, spinning=spinning, optimize=level,
                       reuse=2 if workers > 0 else 1, arena=True)
    recapture_lock = threading.Lock()
    recapture_engine: list = []

    def recapture(feed):
        """The range-derived tensors' values of one run (only for runs holding NaN or Inf)."""
        with recapture_lock:
            if not recapture_engine:
                recapture_engine.append(OrtEngine(m, capture=list(ranges), threads=threads, spinning=False,
                                                  optimize=level))
        return recapture_engine[0].run(feed)

    kw = {"bins": bins} if bins else {}
    if not histogram:
        kw["histogram"] = False
    pad_zeros = {k: 0 for k, d in plan.items() if d.kind == "pad"}

    bar = None
    if progress:
        from tqdm import tqdm

        total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
        desc = progress if isinstance(progress, str) else "statistics"
        bar = tqdm(total=total, desc=desc, unit="batch", leave=False)

    observers: dict[str, TensorObserver] | None = None
    kept: list[str] = []
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
                    if k in inputs and k in part:
                        arrays[k] = np.asarray(part[k])
                if observers is None:
                    kept = _kept(wanted, arrays, plan, explicit, ranges)
                    if not kept:
                        raise CalibError(f"{m.name}: none of the requested tensors holds float values")
                    observers = {k: TensorObserver(k, **kw) for k in kept if k not in plan}
                    splits = {src: ClipSplitObserver(src, deps[0][2], **kw)
                              for src, deps in dependents.items() if src in observers} if histogram else {}
                    updater = _Updater(observers, workers, dependents, recapture, splits)
                    updater.start({k: int(np.asarray(arrays[k]).size) for k in observers if k in arrays})
                if pad_zeros:
                    shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
                    for k, (src, _, _) in ranges.items():     # elementwise: the source's shape
                        if src in shapes:
                            shapes[k] = shapes[src]
                    for k, d in plan.items():        # topological order
                        sh = _out_shape(d, shapes)
                        if sh is not None:
                            shapes[k] = sh
                        if k in pad_zeros:
                            if sh is None:      # plan_derivations only pads known shapes
                                raise RuntimeError(f"internal: no run-time shape for the input of '{k}'")
                            pad_zeros[k] += _numel(sh) - _numel(shapes[d.sources[0]])
                arrays = {k: arrays[k] for k in observers if k in arrays}
                updater.submit(arrays, part)
                del outs, arrays
                first = next(iter(part.values()), None)
                n_samples += int(first.shape[0]) if first is not None and first.ndim else 1
            n_batches += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(samples=n_samples, refresh=False)
        if updater is not None:
            updater.finish()
            updater.finish_splits()
    finally:
        if bar is not None:
            bar.close()
        if updater is not None and updater.threads:
            for q in updater.queues:
                q.put_nowait(_STOP)   # unbounded queues: never full
    if observers is None:
        raise EmptyDatasetError("no calibration batches: the data source yielded nothing")
    observers = _resolve(kept, observers, plan, pad_zeros, kw)
    warn_nonfinite(observers, stacklevel=3)
    return observers


def warn_nonfinite(observers: Mapping[str, TensorObserver], stacklevel: int = 2) -> None:
    """One RuntimeWarning naming the tensors among *observers* that held NaN or Inf (none if none did)."""
    bad = [o for o in observers.values() if o.nonfinite]
    if bad:
        shown = ", ".join(f"'{o.name}' ({o.nan_count} NaN, {o.inf_count} Inf)" for o in bad[:3])
        warnings.warn(f"{len(bad)} tensor(s) held non-finite values, left out of their statistics: {shown}"
                      + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""), RuntimeWarning, stacklevel=stacklevel)


def _kept(wanted: Sequence[str], arrays: Mapping[str, np.ndarray], plan: Mapping[str, _Derived],
          explicit: bool, ranges: Mapping[str, tuple] | None = None) -> list[str]:
    """The observed tensors, in *wanted* order: captured ones holding floats (any dtype when
    named explicitly), range-derived ones whose source is kept and derived ones whose sources
    are all kept."""
    keep = {k for k in wanted if k in arrays and k not in plan and
            (explicit or np.asarray(arrays[k]).dtype.kind == "f")}
    for k, (src, _, _) in (ranges or {}).items():    # topological order
        if src in keep:
            keep.add(k)
    for k, d in plan.items():                        # topological order: sources first
        if all(s in keep for s in d.sources):
            keep.add(k)
    return [k for k in wanted if k in keep]


def _resolve(kept: Sequence[str], direct: dict[str, TensorObserver], plan: Mapping[str, _Derived],
             pad_zeros: Mapping[str, int], kw: dict) -> dict[str, TensorObserver]:
    """All observers in *kept* order, derived ones built from their sources (exactly)."""
    done = dict(direct)
    for k, d in plan.items():                        # topological order
        if k not in kept:
            continue
        if d.kind == "concat":
            o = TensorObserver(k, **kw)
            for s in d.sources:
                o.merge(done[s])
        else:
            o = done[d.sources[0]].renamed(k)
            if d.kind == "pad":
                o.add_zeros(pad_zeros[k])
        done[k] = o
    return {k: done[k] for k in kept}


def bias_shifts(probe: Model | str | os.PathLike, batches: Iterable[Any], outputs: Mapping[str, str], *,
                threads: int | None = None, progress: bool | str = False) -> dict[str, np.ndarray]:
    """``{node key: mean INT8 output error per channel}`` for bias correction.

    *probe* is a Q/DQ model from ``calib.qdq.quantize_model(..., bias_probe=True)`` and *outputs*
    its ``quant_report.bias_probes`` (probe output -> node key). Each probe output holds each
    sample's per-channel mean of (INT8 output - float reference output); the result is their
    mean over all samples, as float32, to pass to ``quantize_model(..., bias_shift=...)``.

    The samples run one at a time, and the per-sample values are sorted before they are summed,
    so the result depends on the set of samples only: not on their order, on how they were
    batched, or on the padding a batch of differently sized images needs (feed batches of one
    sample for that: the padding is in the values the model sees). Memory: one float per
    sample and output channel of the probed layers.
    """
    from .backends.onnxruntime import OrtEngine

    m = load_model(probe)
    names = list(outputs)
    if not names:
        return {}
    eng = OrtEngine(m, threads=threads)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in names}
    it = batches
    if progress:
        from tqdm import tqdm

        it = tqdm(batches, desc=progress if isinstance(progress, str) else "bias correction", unit="batch",
                  leave=False)
    for batch in it:
        for feed in _split(_feed_of(batch), m, 1):
            res = eng.run(feed)
            for name in names:
                v = np.asarray(res[name], np.float32)
                rows[name].append(v.reshape(v.shape[0], -1) if v.ndim >= 1 else v.reshape(1, 1))
    if not rows[names[0]]:
        raise EmptyDatasetError("no samples to measure the bias correction on")
    out = {}
    for name in names:
        v = np.sort(np.concatenate(rows.pop(name)), axis=0, kind="stable").astype(np.float64)
        out[outputs[name]] = (v.sum(axis=0) / v.shape[0]).astype(np.float32)
    return out
