"""`open_dataset` and :class:`Dataset`: model-shaped batches from images, HDF5, NumPy or iterables.

Sample identity
    Every sample has an id: the image path relative to the data folder (POSIX separators), the
    row ``"3"`` of an HDF5/NumPy file, ``"file.npz[3]"`` in a folder of arrays, or the position
    in an iterable. Ids do not depend on the machine, the folder location or listing order.

Order
    Samples are read in sorted-id order (file systems list in arbitrary order; we never do).

Sampling (``limit`` + ``seed``)
    The ``limit`` samples whose ``sha256("<seed>\\0<id>")`` are smallest are kept (read in id
    order). The same ids give the same subset on every run and machine, and adding files to the
    folder only swaps in the new files that rank lower. Iterables have no ids beyond position:
    there ``limit`` keeps the first N samples.

Split (``split="calib"|"eval"``, ``eval_fraction``)
    A sample is in ``eval`` iff ``int(sha256("calib-split\\0<id>")[:16], 16) / 2**64 <
    eval_fraction``, else in ``calib``. It uses only the id (not the seed, not the other files),
    so calibration and evaluation sets stay disjoint across runs, commands and seeds. With
    ``open_dataset(split=..., limit=N)`` the split is taken first, then N samples from it;
    ``Dataset.split()`` partitions the dataset it is called on.

Slices (``Dataset.slice(start, stop)``)
    The samples at positions ``start`` to ``stop - 1`` of a dataset, in the order it reads them
    (id order; read order for iterables). With both multiples of a batch size, a slice yields
    exactly some of the batches the whole dataset yields, padding included: how work is cut into
    shards that give the same statistics as one pass (:mod:`calib.distributed`).

Reopening elsewhere (``Dataset.spec()``, :func:`open_spec`)
    A dataset opened from a path (folder, file, loader script) describes itself as a JSON-able
    spec: the absolute paths, preprocessing and flags it was opened with, the selection steps
    (split, limit, rest, slice) that narrowed it, and the digest of its sample ids. ``open_spec(spec,
    model)`` opens the same samples in another process or on another machine that sees the same
    files at the same paths, and refuses data whose ids differ. Data held in memory (arrays,
    iterables) has no spec.

Batching
    ``batches(batch_size)`` yields full batches of the requested size (the last may be smaller;
    ``drop_last=True`` drops it). Models with a fixed batch dimension are the engine's business.
    Images whose sizes differ (dynamic-size inputs: PP-OCR det/rec) are padded with 0 at the
    bottom/right to the largest height and width in the batch, as PaddleOCR pads its batches;
    use ``batch_size=1`` to avoid padding entirely.

Corrupt images
    Skipped and counted (``Dataset.skipped`` after a pass, ``describe()["skipped"]``); one
    :class:`DataWarning` at the end of the pass. ``strict=True`` raises
    :class:`~calib.errors.CorruptSampleError` naming the file.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import (CorruptSampleError, DataError, DataNotFoundError, EmptyDatasetError, InputMismatchError,
                      PreprocessError)
from .preprocess import Preprocess, make_plan, preset_names
from .sources import (ARRAY_EXTENSIONS, HDF5_EXTENSIONS, IMAGE_EXTENSIONS, DataWarning, ImageSource,
                      StreamSource, check_finite, from_array, from_arrays, list_images, load_script, open_hdf5,
                      open_numpy)

SPLITS = ("calib", "eval")
DEFAULT_BATCH_SIZE = 16


@dataclass
class Batch:
    """One batch: ``feed`` ready for ``Engine.run``, int64 ``labels`` (or None), sample ``ids``."""

    feed: dict
    labels: np.ndarray | None
    ids: list

    def __len__(self) -> int:
        return len(self.ids)


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16) / 2.0 ** 64


def split_of(sample_id: str, eval_fraction: float = 0.5) -> str:
    """Which split a sample id belongs to (the documented, stable rule)."""
    return "eval" if _unit_hash("calib-split\0" + sample_id) < eval_fraction else "calib"


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


def _sample_key(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}\0{sample_id}".encode("utf-8")).hexdigest()


def default_workers() -> int:
    """Decode threads: $CALIB_DATA_WORKERS, else the number of cores (at least 2, at most 8)."""
    env = os.environ.get("CALIB_DATA_WORKERS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(2, min(8, os.cpu_count() or 1))


def _check_split(part) -> None:
    if part not in SPLITS:
        raise DataError(f"split must be 'calib' or 'eval', got {part!r}")


def _check_fraction(f) -> float:
    try:
        f = float(f)
    except (TypeError, ValueError):
        raise DataError(f"eval_fraction must be a number in (0, 1), got {f!r}") from None
    if not 0.0 < f < 1.0:
        raise DataError(f"eval_fraction must be in (0, 1), got {f}")
    return f


def _collate(arrays: list[np.ndarray]) -> np.ndarray:
    first = arrays[0].shape
    if all(a.shape == first for a in arrays):
        return np.stack(arrays)
    # different sizes (dynamic H/W): pad with 0 at the end of every axis to the batch maximum
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(len(first)))
    out = np.zeros((len(arrays), *shape), dtype=arrays[0].dtype)
    for k, a in enumerate(arrays):
        out[(k, *(slice(0, s) for s in a.shape))] = a
    return out


def _prefetch(fn, items: Sequence, workers: int, window: int) -> Iterator[tuple[Any, Any]]:
    """Ordered map of *fn* over *items* in a pool of *workers* threads (0: inline), at most
    *window* results ahead. Closing the generator cancels what is queued and joins the threads."""
    if workers < 1:
        for it in items:
            yield it, fn(it)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calib-data")
    pending: collections.deque = collections.deque()
    it = iter(items)
    try:
        for x in it:
            pending.append((x, pool.submit(fn, x)))
            if len(pending) >= window:
                break
        while pending:
            x, fut = pending.popleft()
            res = fut.result()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield x, res
    finally:
        for _, f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


class Dataset:
    """Samples shaped for one model. Build with :func:`open_dataset`."""

    def __init__(self, source, inputs, *, ops=(), indices=None, strict=False, workers=None, preprocess=None,
                 seed=0, limit=None, split=None, eval_fraction=0.5, extra=None, origin=None):
        self.source = source
        self.inputs = list(inputs)
        self.strict = bool(strict)
        self.workers = workers
        self.preprocess = preprocess
        self.seed = seed
        self.limit = limit
        self.split_name = split
        self.eval_fraction = eval_fraction
        self._ops = tuple(ops)
        self._extra = dict(extra or {})
        self._origin = origin           # how open_dataset opened the source (None: held in memory)
        self.skipped: list[tuple[str, str]] = []
        self.last_pass: dict | None = None
        self._indices: list[int] | None = None
        self._len: int | None = None
        if not source.streaming:
            if indices is None:
                indices = range(len(source.ids))
                for op in self._ops:
                    indices = self._apply(op, indices)
            self._indices = list(indices)

    # -- selection ------------------------------------------------------------
    def _apply(self, op: tuple, indices: Sequence[int]) -> list[int]:
        """The source *indices* (in id order) that selection step *op* keeps, in id order."""
        ids = self.source.ids
        idx = list(indices)
        if op[0] == "split":
            _, part, frac = op
            idx = [i for i in idx if split_of(ids[i], frac) == part]
        elif op[0] in ("limit", "rest"):
            _, n, seed = op
            keep = set(sorted(idx, key=lambda i: _sample_key(seed, ids[i]))[:n]) if n < len(idx) else set(idx)
            idx = [i for i in idx if (i in keep) == (op[0] == "limit")]
        elif op[0] == "slice":
            idx = idx[op[1]:op[2]]
        return idx

    def _derive(self, op: tuple, **changes) -> "Dataset":
        """This dataset narrowed by one more selection step *op*, applied to the ids already selected
        here (streaming sources apply every step while reading: see :meth:`_admit`)."""
        kw = dict(strict=self.strict, workers=self.workers, preprocess=self.preprocess, seed=self.seed,
                  limit=self.limit, split=self.split_name, eval_fraction=self.eval_fraction, extra=self._extra,
                  origin=self._origin)
        kw.update(changes)
        indices = None if self._indices is None else self._apply(op, self._indices)
        return Dataset(self.source, self.inputs, ops=self._ops + (op,), indices=indices, **kw)

    def split(self, part: str, eval_fraction: float = 0.5) -> "Dataset":
        """The ``"calib"`` or ``"eval"`` part of this dataset (see the module docstring for the rule).

        The two parts are disjoint, cover this dataset, and a sample's part depends only on its id.
        """
        _check_split(part)
        frac = _check_fraction(eval_fraction)
        return self._derive(("split", part, frac), split=part, eval_fraction=frac)

    def subset(self, limit: int | None = None, seed: int | None = None) -> "Dataset":
        """At most *limit* samples of this dataset, chosen by the seeded hash rule."""
        if limit is None:
            return self
        if int(limit) < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        seed = self.seed if seed is None else seed
        return self._derive(("limit", int(limit), int(seed)), limit=int(limit), seed=seed)

    def rest(self, limit: int, seed: int | None = None) -> "Dataset":
        """The samples of this dataset that ``subset(limit, seed)`` leaves out: the two are
        disjoint and together make up this dataset (for a streaming source, ``subset`` keeps the
        first *limit* samples read and ``rest`` the ones after them)."""
        if int(limit) < 0:
            raise DataError(f"limit must be >= 0, got {limit}")
        seed = self.seed if seed is None else seed
        return self._derive(("rest", int(limit), int(seed)), seed=seed)

    def slice(self, start: int, stop: int) -> Dataset:
        """The samples at positions *start* .. *stop* - 1 of this dataset, in its reading order (see
        the module docstring); positions past the end select nothing."""
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop:
            raise DataError(f"a slice needs 0 <= start <= stop, got [{start}, {stop})")
        return self._derive(("slice", start, stop))

    # -- facts ----------------------------------------------------------------
    def __len__(self) -> int:
        if self._indices is not None:
            return len(self._indices)
        if self._len is None:
            self._len = len(self._stream_ids())
        return self._len

    @property
    def ids(self) -> list[str]:
        if self._indices is not None:
            return [self.source.ids[i] for i in self._indices]
        return self._stream_ids()

    @property
    def has_labels(self) -> bool:
        if self.source.streaming:
            if self.source.has_labels is None:
                self.source.count()
            return bool(self.source.has_labels)
        return self.source.labels is not None

    @property
    def kind(self) -> str:
        return self.source.kind

    def __repr__(self) -> str:
        return f"<Dataset {self.source.kind} {self.describe()['source']} samples={len(self)}>"

    # -- iteration -------------------------------------------------------------
    def _admit(self, sid: str, counts: list) -> bool | None:
        """Streaming selection: True keep, False drop, None stop (a full limit drops all after)."""
        for k, op in enumerate(self._ops):
            if op[0] == "split":
                if split_of(sid, op[2]) != op[1]:
                    return False
            elif op[0] == "limit":
                if counts[k] >= op[1]:
                    return None
                counts[k] += 1
            elif op[0] == "rest":
                if counts[k] < op[1]:
                    counts[k] += 1
                    return False
            elif op[0] == "slice":
                if counts[k] >= op[2]:
                    return None
                counts[k] += 1
                if counts[k] <= op[1]:
                    return False
        return True

    def _admitted(self, items: Iterable, id_of) -> Iterator:
        """The *items* (in position order) that the split/limit ops keep; *id_of(item)* is its id."""
        counts = [0] * len(self._ops)
        for item in items:
            ok = self._admit(id_of(item), counts)
            if ok is None:
                return
            if ok:
                yield item

    def _stream(self) -> Iterator[tuple[str, dict, int | None]]:
        """Streaming sources: samples after the split/limit ops."""
        yield from self._admitted(self.source.samples(), lambda sample: sample[0])

    def _stream_ids(self) -> list[str]:
        """Ids of a streaming dataset (positions), from the source's sample count alone."""
        return list(self._admitted((str(k) for k in range(self.source.count())), lambda sid: sid))

    def _samples(self, skipped: list) -> Iterator[tuple[str, dict, int | None]]:
        """Per-sample iteration for image (threaded) sources."""
        src = self.source
        labels = src.labels
        strict = self.strict

        def task(i):
            try:
                return src.load(i)
            except CorruptSampleError as exc:
                if strict:
                    raise
                return exc

        workers = self.workers or default_workers()
        window = max(4 * workers, 2 * self._batch_hint)
        for i, res in _prefetch(task, self._indices, workers, window):
            if isinstance(res, CorruptSampleError):
                skipped.append((src.ids[i], str(res)))
                continue
            yield src.ids[i], res, (int(labels[i]) if labels is not None else None)

    def _array_batches(self, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        """HDF5/NumPy: one lazy read per batch, one batch read ahead in a background thread."""
        src = self.source
        chunks = [self._indices[k:k + batch_size] for k in range(0, len(self._indices), batch_size)]
        if drop_last and chunks and len(chunks[-1]) < batch_size:
            chunks.pop()

        for chunk, feed in _prefetch(src.load_batch, chunks, 1, 2):
            ids = [src.ids[i] for i in chunk]
            labels = None if src.labels is None else np.asarray(src.labels[chunk], dtype=np.int64)
            yield Batch(self._finish(feed, ids), labels, ids)

    def _finish(self, feed: dict, ids: list) -> dict:
        out = {}
        for t in self.inputs:
            a = feed[t.name]
            check_finite(t.name, a, ids)
            if a.dtype != t.dtype:
                a = a.astype(t.dtype)
            out[t.name] = np.ascontiguousarray(a)
        return out

    _batch_hint = DEFAULT_BATCH_SIZE

    def batches(self, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | str = False,
                drop_last: bool = False) -> Iterator[Batch]:
        """Yield :class:`Batch` es of *batch_size* samples (the last may be smaller).

        ``progress``: False, True, or a label for a tqdm bar on stderr (shown on terminals only).
        After a full pass ``skipped`` lists ``(id, reason)`` of images that could not be decoded.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        bar = None
        if progress:
            from tqdm import tqdm

            total = len(self._indices) if self._indices is not None else self._len
            bar = tqdm(total=total, desc=progress if isinstance(progress, str) else "reading", unit="sample",
                       disable=None, leave=False, dynamic_ncols=True)
        skipped: list[tuple[str, str]] = []
        self.skipped = skipped
        read = 0
        done = False
        try:
            for b in self._batches(batch_size, drop_last, skipped):
                read += len(b)
                if bar is not None:
                    bar.update(len(b))
                yield b
            done = True
        finally:
            if bar is not None:
                bar.close()
            self.last_pass = {"read": read, "skipped": len(skipped), "complete": done}
            if done and self.source.streaming and not drop_last:
                self._len = read
        if skipped:
            first_id, first_reason = skipped[0]
            if read == 0:
                raise EmptyDatasetError(f"none of the {len(skipped)} images could be decoded (first: {first_reason})")
            warnings.warn(f"skipped {len(skipped)} of {len(skipped) + read} images that could not be decoded "
                          f"(first: {first_reason}); strict=True / --strict stops on them", DataWarning, stacklevel=2)

    def _batches(self, batch_size: int, drop_last: bool, skipped: list) -> Iterator[Batch]:
        """The batches of one pass: HDF5/NumPy read per batch, other sources grouped sample by sample
        (images decoded in worker threads, undecodable ones appended to *skipped*)."""
        if self._indices is not None and not self.source.threaded:
            yield from self._array_batches(batch_size, drop_last)
            return
        self._batch_hint = batch_size
        it = self._samples(skipped) if self._indices is not None else self._stream()
        buf: list = []
        for sample in it:
            buf.append(sample)
            if len(buf) == batch_size:
                yield self._make_batch(buf)
                buf = []
        if buf and not drop_last:
            yield self._make_batch(buf)

    def _make_batch(self, buf: list) -> Batch:
        ids = [s for s, _, _ in buf]
        feed = {t.name: _collate([f[t.name] for _, f, _ in buf]) for t in self.inputs}
        if self.source.streaming:
            feed = self._finish(feed, ids)
        labs = [lab for _, _, lab in buf]
        labels = None if any(v is None for v in labs) else np.asarray(labs, dtype=np.int64)
        return Batch(feed, labels, ids)

    # -- provenance ----------------------------------------------------------
    def describe(self) -> dict:
        """JSON-able provenance: where the samples came from and how they were chosen and prepared."""
        d = self.source.describe()
        ids = self.ids
        d.update({
            "count": len(ids),
            "total": len(self.source.ids) if not self.source.streaming else self.source.total,
            "ids_sha256": _ids_digest(ids),
            "seed": self.seed,
            "limit": self.limit,
            "split": self.split_name,
            "eval_fraction": self.eval_fraction if self.split_name else None,
            "split_rule": "eval iff int(sha256('calib-split\\0'+id)[:16],16)/2**64 < eval_fraction",
            "selection": [list(op) for op in self._ops],
            "labels": getattr(self.source, "label_source", None) if self.has_labels else None,
            "inputs": [t.to_dict() for t in self.inputs],
            "preprocess": self.preprocess.to_dict() if self.preprocess is not None else None,
            "preprocess_digest": self.preprocess.digest() if self.preprocess is not None else None,
            "skipped": None if self.last_pass is None else self.last_pass["skipped"],
            "skipped_ids": [s for s, _ in self.skipped][:50],
        })
        d.update(self._extra)
        json.dumps(d)  # guarantee JSON-ability
        return d

    def spec(self) -> dict:
        """A JSON-able description from which :func:`open_spec` opens the same samples in another
        process: ``source``, ``preprocess``, ``classes``, ``labels``, ``hdf5_map``, ``strict`` as
        :func:`open_dataset` got them (paths made absolute), ``seed``, ``selection`` (the split /
        limit / rest steps, in order) and ``ids_sha256`` (None for streaming sources, whose ids
        are positions). Raises :class:`~calib.errors.DataError` for data held in memory."""
        if self._origin is None:
            raise DataError(f"data held in memory ({self.describe()['source']}) cannot be reopened by another "
                            f"process; give a file or folder path")
        return {"format": SPEC_FORMAT, **self._origin, "seed": self.seed,
                "selection": [list(op) for op in self._ops],
                "ids_sha256": None if self.source.streaming else _ids_digest(self.ids)}


# ---------------------------------------------------------------------------
# open_dataset
# ---------------------------------------------------------------------------
def _model_inputs(model) -> list:
    from ..model import Model, TensorInfo, load_model

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, Model):
        inputs = model.inputs
    elif isinstance(model, TensorInfo):
        inputs = [model]
    else:
        try:
            inputs = list(model)
        except TypeError:
            raise DataError(f"model must be a calib.model.Model or a list of TensorInfo, got {type(model).__name__}") from None
        if not all(isinstance(t, TensorInfo) for t in inputs):
            raise DataError("model must be a calib.model.Model or a list of TensorInfo")
    if not inputs:
        raise InputMismatchError("the model has no inputs to feed")
    return inputs


def resolve_preprocess(preprocess) -> Preprocess | None:
    if preprocess is None or isinstance(preprocess, Preprocess):
        return preprocess
    if isinstance(preprocess, str):
        return Preprocess.preset(preprocess)
    if isinstance(preprocess, Mapping):
        if "format" in preprocess:
            return Preprocess.from_dict(dict(preprocess))
        try:
            return Preprocess(**preprocess)
        except TypeError as exc:
            raise PreprocessError(f"bad preprocessing fields: {exc}") from None
    raise PreprocessError(f"preprocess must be a preset name, a dict or a Preprocess, got {type(preprocess).__name__}")


def _image_source(path: Path, ids: list[str], inputs, pre, *, single_file, classes, labels, strict):
    if pre is None:
        raise PreprocessError(f"images in {path} need preprocessing: pass a preset ({', '.join(preset_names())}) "
                              f"with --preset, or --scale/--mean/--std/--resize")
    if len(inputs) != 1:
        raise InputMismatchError(f"images feed one input but the model has {len(inputs)} "
                                 f"({', '.join(t.name for t in inputs)}); use HDF5/NumPy data or a loader script")
    plan = make_plan(pre, inputs[0])
    return ImageSource(path, ids, inputs[0], plan, single_file=single_file, classes=classes, labels=labels,
                       strict=strict)


def open_dataset(source, model, preprocess=None, *, limit: int | None = None, seed: int = 0, classes=None,
                 labels=None, strict: bool = False, split: str | None = None, hdf5_map=None,
                 workers: int | None = None, eval_fraction: float = 0.5) -> Dataset:
    """Open *source* as samples for *model* (a :class:`calib.model.Model`, path, or list of TensorInfo).

    *source*: a folder of images (recursive; JPEG PNG BMP WebP TIFF PNM) or of .npy/.npz files; an
    image, .h5/.hdf5, .npy or .npz file; ``"script.py:func"``; a NumPy array or dict of arrays; an
    iterable of feed dicts or a callable returning one. *preprocess*: a preset name, dict or
    :class:`Preprocess` (images only; arrays are fed as stored, cast to the input dtype).
    *classes*/*labels*: files mapping images to class indices (see :mod:`calib.datasets.labels`).
    *hdf5_map*: ``{input: dataset}`` or ``"input=dataset,..."`` (also ``labels=...``; also used
    for .npz keys). Raises a :class:`~calib.errors.DataError` subclass with a one-line message.
    """
    inputs = _model_inputs(model)
    pre = resolve_preprocess(preprocess)
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise DataError(f"limit must be >= 1, got {limit!r}")
    if split is not None:
        _check_split(split)
    frac = _check_fraction(eval_fraction)
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise DataError(f"seed must be an integer, got {seed!r}") from None
    if workers is not None and (int(workers) < 1):
        raise DataError(f"workers must be >= 1, got {workers}")

    if isinstance(source, Dataset):
        ds = source
    else:
        src = _open_source(source, inputs, pre, classes=classes, labels=labels, strict=strict, hdf5_map=hdf5_map)
        used_pre = pre if isinstance(src, ImageSource) else None
        if pre is not None and used_pre is None and preprocess is not None:
            warnings.warn(f"preprocessing {pre.name or 'custom'} ignored: {src.kind} data is fed as stored",
                          DataWarning, stacklevel=2)
        ds = Dataset(src, inputs, strict=strict, workers=workers, preprocess=used_pre, seed=seed,
                     origin=_origin(source, used_pre, classes=classes, labels=labels, strict=strict,
                                    hdf5_map=hdf5_map))
    if split is not None:
        ds = ds.split(split, frac)
    if limit is not None:
        ds = ds.subset(int(limit), seed)
    if not ds.source.streaming:
        if len(ds.source.ids) == 0:
            raise EmptyDatasetError(f"{ds.describe()['source']} holds no samples")
        if len(ds) == 0:
            raise EmptyDatasetError(f"no samples of {ds.describe()['source']} fall in the '{split}' split "
                                    f"(eval_fraction {frac}); use more data")
    return ds


SPEC_FORMAT = "calib-data-spec-1"
_SELECTION = {"split": "split", "limit": "subset", "rest": "rest", "slice": "slice"}   # step -> Dataset method


def _absolute(path) -> str:
    """*path* as an absolute path (not resolved: links stay links); a loader script ``file.py:func``
    keeps its function name."""
    text = os.fspath(path)
    file, sep, func = text.rpartition(".py:") if ".py:" in text and not Path(text).exists() else (text, "", "")
    return os.path.abspath(file + (".py" if sep else "")) + (":" + func if sep else "")


def _origin(source, pre, *, classes, labels, strict, hdf5_map) -> dict | None:
    """What :meth:`Dataset.spec` records of an :func:`open_dataset` call, or None when the data or
    its labels are held in memory."""
    def path_or_none(v):
        return None if v is None else _absolute(v)

    if not isinstance(source, (str, os.PathLike)) or any(
            v is not None and not isinstance(v, (str, os.PathLike)) for v in (classes, labels)):
        return None
    if hdf5_map is not None and not isinstance(hdf5_map, (str, Mapping)):
        return None
    return {"source": _absolute(source), "preprocess": pre.to_dict() if pre is not None else None,
            "classes": path_or_none(classes), "labels": path_or_none(labels), "strict": bool(strict),
            "hdf5_map": dict(hdf5_map) if isinstance(hdf5_map, Mapping) else hdf5_map}


def open_spec(spec: Mapping, model, *, workers: int | None = None) -> Dataset:
    """The dataset that :meth:`Dataset.spec` described, opened for *model* (same inputs), here.

    Raises :class:`~calib.errors.DataError` when *spec* is not such a description, or when the
    data found at its paths hold other sample ids than where the spec was made (every process
    must see the same files)."""
    if not isinstance(spec, Mapping) or spec.get("format") != SPEC_FORMAT:
        raise DataError(f"not a {SPEC_FORMAT} data description")
    ds = open_dataset(spec["source"], model, spec.get("preprocess"), seed=spec.get("seed", 0),
                      classes=spec.get("classes"), labels=spec.get("labels"), strict=bool(spec.get("strict")),
                      hdf5_map=spec.get("hdf5_map"), workers=workers)
    for step in spec.get("selection") or ():
        if not step or step[0] not in _SELECTION:
            raise DataError(f"unknown selection step {step!r} in a data description")
        ds = getattr(ds, _SELECTION[step[0]])(*step[1:])
    want = spec.get("ids_sha256")
    if want is not None and _ids_digest(ds.ids) != want:
        raise DataError(f"the data at {spec['source']} hold other samples here ({len(ds)} selected) than where "
                        f"they were described; every process must see the same files")
    return ds


def _open_source(source, inputs, pre, *, classes, labels, strict, hdf5_map):
    if isinstance(source, np.ndarray):
        return from_array(source, inputs)
    if isinstance(source, Mapping):
        vals = list(source.values())
        if vals and all(isinstance(v, np.ndarray) for v in vals):
            return from_arrays(source, inputs, labels=labels)
        return StreamSource([source], inputs)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, str) and ".py:" in text and not Path(text).exists():
            fn = load_script(text)
            return StreamSource(fn, inputs, kind="script", label=text)
        path = Path(text)
        if not path.exists():
            raise DataNotFoundError(f"data path not found: {path}")
        if path.is_dir():
            return _open_folder(path, inputs, pre, classes=classes, labels=labels, strict=strict,
                                hdf5_map=hdf5_map)
        suffix = path.suffix.lower()
        if suffix in HDF5_EXTENSIONS:
            return open_hdf5(path, inputs, hdf5_map, labels)
        if suffix in ARRAY_EXTENSIONS:
            return open_numpy(path, inputs, hdf5_map, labels)
        if suffix in IMAGE_EXTENSIONS:
            return _image_source(path, [path.name], inputs, pre, single_file=True, classes=classes, labels=labels,
                                 strict=strict)
        if suffix == ".py":
            return StreamSource(load_script(text), inputs, kind="script", label=text)
        raise DataError(f"unsupported data file {path}: expected a folder of images, an image, .h5/.hdf5, "
                        f".npy/.npz, or script.py:function")
    if callable(source) or isinstance(source, Iterable):
        return StreamSource(source, inputs)
    raise DataError(f"data of type {type(source).__name__} is not a path, array, iterable or callable")


def _open_folder(path: Path, inputs, pre, *, classes, labels, strict, hdf5_map):
    images, others = list_images(path)
    if images:
        return _image_source(path, images, inputs, pre, single_file=False, classes=classes, labels=labels,
                             strict=strict)
    arrays = sorted(o for o in others if Path(o).suffix.lower() in ARRAY_EXTENSIONS)
    if arrays:
        return open_numpy(path, inputs, hdf5_map, labels, files=arrays)
    if not others:
        raise EmptyDatasetError(f"data folder {path} is empty")
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    raise EmptyDatasetError(f"no images ({exts}) or .npy/.npz arrays in {path} "
                            f"({len(others)} other file(s), e.g. {others[0]})")
