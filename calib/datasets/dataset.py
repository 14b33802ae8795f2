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
    there ``limit`` keeps the first N samples. Ids are hashed as UTF-8 with ``surrogateescape``
    (a file name that is not UTF-8 hashes as its own bytes).

Large sources
    Selections are arrays of row indices, computed in chunks (:mod:`calib.datasets.selection`).
    A source of more than ``selection.EXACT_MAX`` samples is not listed at all until a limit
    narrows it: a limit there keeps the first ``limit`` rows that pass the split in the order of
    a seeded permutation of the rows (``selection.Permutation``), so an HDF5 file that claims
    10^9 rows costs what the samples used cost. Below that size the rule above holds exactly.

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
    Skipped and counted (``Dataset.skipped`` after a pass, ``describe()["skipped"]``,
    ``Dataset.used_ids``); one :class:`DataWarning` at the end of a pass that skipped an image no
    earlier pass over the source reported. ``strict=True`` raises
    :class:`~calib.errors.CorruptSampleError` naming the file.

Inputs
    Each input's samples lie along its batch axis (0 unless ``batch_axes`` says otherwise); an
    input without samples (a scalar, or one given in ``constants``) gets the same value in every
    batch (:class:`~calib.datasets.layout.FeedLayout`).
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import stat
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    CorruptSampleError,
    DataError,
    DataNotFoundError,
    EmptyDatasetError,
    InputMismatchError,
    PreprocessError,
)
from . import selection
from .layout import FeedLayout, check_finite
from .preprocess import Preprocess, make_plan, preset_names
from .selection import EXACT_MAX
from .sources import (
    ARRAY_EXTENSIONS,
    HDF5_EXTENSIONS,
    IMAGE_EXTENSIONS,
    DataWarning,
    ImageSource,
    StreamSource,
    from_array,
    from_arrays,
    list_files,
    load_script,
    open_hdf5,
    open_numpy,
    script_function,
)

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


def split_of(sample_id: str, eval_fraction: float = 0.5) -> str:
    """Which split a sample id belongs to (the documented, stable rule)."""
    return "eval" if selection.in_split([sample_id], "eval", eval_fraction)[0] else "calib"


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


def _collate(arrays: list[np.ndarray], axis: int = 0) -> np.ndarray:
    """Samples stacked along *axis* (the input's batch axis)."""
    first = arrays[0].shape
    if all(a.shape == first for a in arrays):
        return np.stack(arrays, axis=axis)
    # different sizes (dynamic H/W): pad with 0 at the end of every axis to the batch maximum
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(len(first)))
    out = np.zeros((len(arrays), *shape), dtype=arrays[0].dtype)
    for k, a in enumerate(arrays):
        out[(k, *(slice(0, s) for s in a.shape))] = a
    return np.moveaxis(out, 0, axis) if axis else out


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


class _Lazy:
    """A selection not materialised: every row of the source that passes *filters* (split steps,
    and rows excluded by a ``rest`` step), found chunk by chunk when needed."""

    def __init__(self, filters: tuple = ()):
        self.filters = filters


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
        self._sel: np.ndarray | _Lazy | None = None     # sorted source rows, or a lazy selection
        self._len: int | None = None
        if not source.streaming:
            if indices is None:
                indices = np.arange(source.n_samples, dtype=np.int64) if source.n_samples <= EXACT_MAX else _Lazy()
                for op in self._ops:
                    indices = self._apply(op, indices)
            self._sel = indices

    # -- selection ------------------------------------------------------------
    def _keep(self, filters: tuple):
        """Boolean mask function over source rows for the filters of a lazy selection."""
        ids_at = self.source.ids_at

        def keep(rows: np.ndarray) -> np.ndarray:
            mask = np.ones(len(rows), dtype=bool)
            for f in filters:
                if f[0] == "split":
                    mask &= selection.in_split(ids_at(rows), f[1], f[2])
                else:   # ("exclude", sorted rows)
                    mask &= ~np.isin(rows, f[1])
            return mask
        return keep

    def _apply(self, op: tuple, sel):
        """The selection *sel* (sorted source rows, or :class:`_Lazy`) narrowed by step *op*."""
        ids_at = self.source.ids_at
        if isinstance(sel, _Lazy):
            if op[0] == "split":
                return _Lazy(sel.filters + (op,))
            if op[0] == "slice":      # reads the selection only as far as the slice's end
                rows, seen = [], 0
                for c in self._row_chunks(sel):
                    rows.append(c[max(0, op[1] - seen):max(0, op[2] - seen)])
                    seen += len(c)
                    if seen >= op[2]:
                        break
                return np.concatenate(rows) if rows else np.zeros(0, np.int64)
            _, n, seed = op
            first = selection.first_permuted(self.source.n_samples, n, seed, self._keep(sel.filters))
            return first if op[0] == "limit" else _Lazy(sel.filters + (("exclude", first),))
        if op[0] == "split":
            _, part, frac = op
            return sel[self._in_split(sel, part, frac)] if len(sel) else sel
        if op[0] == "slice":
            return sel[op[1]:op[2]]
        _, n, seed = op
        keep = selection.smallest(sel, n, seed, ids_at)
        return keep if op[0] == "limit" else np.setdiff1d(sel, keep, assume_unique=True)

    def _in_split(self, rows: np.ndarray, part: str, frac: float) -> np.ndarray:
        """Mask of the sorted source *rows* in split *part*. A split of most of a source hashes every
        id once and keeps the keys on the source (8 bytes a row; materialised selections have at
        most ``selection.EXACT_MAX`` rows), so the calib and eval splits share them."""
        src = self.source
        keys = getattr(src, "_split_keys", None)
        if keys is None and 4 * len(rows) > src.n_samples:
            keys = np.concatenate([selection.prefix_keys(selection.SPLIT_PREFIX, src.ids_at(c))
                                   for c in selection.chunks(src.n_samples)])
            src._split_keys = keys
        if keys is not None:
            return selection.keys_in_split(keys[rows], part, frac)
        return np.concatenate([selection.in_split(src.ids_at(c), part, frac)
                               for c in np.array_split(rows, -(-len(rows) // selection.CHUNK))])

    def _derive(self, op: tuple, **changes) -> Dataset:
        """This dataset narrowed by one more selection step *op*, applied to the ids already selected
        here (streaming sources apply every step while reading: see :meth:`_admit`)."""
        kw = dict(strict=self.strict, workers=self.workers, preprocess=self.preprocess, seed=self.seed,
                  limit=self.limit, split=self.split_name, eval_fraction=self.eval_fraction, extra=self._extra,
                  origin=self._origin)
        kw.update(changes)
        indices = None if self._sel is None else self._apply(op, self._sel)
        return Dataset(self.source, self.inputs, ops=self._ops + (op,), indices=indices, **kw)

    def _row_chunks(self, sel=None) -> Iterator[np.ndarray]:
        """The rows of the selection *sel* (default: this dataset's), in order, in chunks of at most
        ``selection.CHUNK``."""
        sel = self._sel if sel is None else sel
        if isinstance(sel, _Lazy):
            keep = self._keep(sel.filters) if sel.filters else None
            yield from selection.chunks(self.source.n_samples, keep)
        else:
            for k in range(0, len(sel), selection.CHUNK):
                yield sel[k:k + selection.CHUNK]

    def split(self, part: str, eval_fraction: float = 0.5) -> Dataset:
        """The ``"calib"`` or ``"eval"`` part of this dataset (see the module docstring for the rule).

        The two parts are disjoint, cover this dataset, and a sample's part depends only on its id.
        """
        _check_split(part)
        frac = _check_fraction(eval_fraction)
        return self._derive(("split", part, frac), split=part, eval_fraction=frac)

    def subset(self, limit: int | None = None, seed: int | None = None) -> Dataset:
        """At most *limit* samples of this dataset, chosen by the seeded hash rule."""
        if limit is None:
            return self
        if int(limit) < 1:
            raise DataError(f"limit must be >= 1, got {limit}")
        seed = self.seed if seed is None else seed
        return self._derive(("limit", int(limit), int(seed)), limit=int(limit), seed=seed)

    def rest(self, limit: int, seed: int | None = None) -> Dataset:
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
        if isinstance(self._sel, np.ndarray):
            return len(self._sel)
        if self._len is None:
            if self._sel is not None:
                self._len = sum(len(c) for c in self._row_chunks())
            else:
                self._len = len(self._stream_ids())
        return self._len

    def longer_than(self, n: int) -> bool:
        """Whether this dataset holds more than *n* samples; for a selection of a large source not
        counted yet, reads only as far as sample ``n + 1``."""
        if not isinstance(self._sel, _Lazy) or self._len is not None:
            return len(self) > n
        seen = 0
        for c in self._row_chunks():
            seen += len(c)
            if seen > n:
                return True
        self._len = seen
        return False

    @property
    def ids(self) -> list[str]:
        if self._sel is not None:
            return [i for c in self._row_chunks() for i in self.source.ids_at(c)]
        return self._stream_ids()

    @property
    def used_ids(self) -> list[str]:
        """The ids of the samples of this dataset that no pass so far skipped as corrupt (after a
        pass over them, the samples that were used)."""
        bad = getattr(self.source, "corrupt", None) or {}
        return [i for i in self.ids if i not in bad]

    @property
    def has_labels(self) -> bool:
        if self.source.streaming:
            if self.source.has_labels is None:
                self.source.count()
            return bool(self.source.has_labels)
        return bool(self.source.has_labels)

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
        rows = (int(i) for c in self._row_chunks() for i in c)
        for i, res in _prefetch(task, rows, workers, window):
            if isinstance(res, CorruptSampleError):
                skipped.append((src.ids[i], str(res)))
                continue
            yield src.ids[i], res, (int(labels[i]) if labels is not None else None)

    def _row_batches(self, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
        """The selected rows in batches of *batch_size* (the last one shorter unless *drop_last*)."""
        pending: list[np.ndarray] = []
        have = 0
        for c in self._row_chunks():
            pending.append(c)
            have += len(c)
            while have >= batch_size:
                rows = np.concatenate(pending)
                yield rows[:batch_size]
                pending, have = [rows[batch_size:]], have - batch_size
        if have and not drop_last:
            yield np.concatenate(pending)

    def _array_batches(self, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        """HDF5/NumPy: one lazy read per batch, one batch read ahead in a background thread."""
        src = self.source
        for rows, feed in _prefetch(src.load_batch, self._row_batches(batch_size, drop_last), 1, 2):
            ids = src.ids_at(rows)
            yield Batch(self._finish(feed, ids), src.labels_at(rows), ids)

    def _finish(self, feed: dict, ids: list) -> dict:
        """The model's feed: batched inputs cast to the input dtypes and checked for NaN/Inf (after
        the cast: float64 data beyond float32's range is caught), then the constants."""
        layout = self.source.layout
        out = {}
        for t in layout.batched:
            a = feed[t.name]
            was = a.dtype
            if a.dtype != t.dtype:
                with np.errstate(over="ignore"):     # values beyond the dtype's range: checked just below
                    a = a.astype(t.dtype)
            check_finite(t.name, a, ids, layout.axis(t.name), cast_from=was if was != a.dtype else None)
            out[t.name] = np.ascontiguousarray(a)
        return self._with_constants(out)

    def _with_constants(self, feed: dict) -> dict:
        for t in self.source.layout.unbatched:
            feed[t.name] = self.source.constants[t.name]
        return feed

    _batch_hint = DEFAULT_BATCH_SIZE

    def batches(self, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool | str = False,
                drop_last: bool = False) -> Iterator[Batch]:
        """Yield :class:`Batch` es of *batch_size* samples (the last may be smaller).

        ``progress``: False, True, or a label for a tqdm bar on stderr (shown on terminals only).
        After a full pass ``skipped`` lists ``(id, reason)`` of images that could not be used; a
        :class:`DataWarning` names those no earlier pass over the source reported.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DataError(f"batch size must be a positive integer, got {batch_size!r}")
        batch_size = int(batch_size)
        bar = None
        if progress:
            from tqdm import tqdm

            total = len(self._sel) if isinstance(self._sel, np.ndarray) else self._len
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
                raise EmptyDatasetError(f"none of the {len(skipped)} images could be used (first: {first_reason})")
            corrupt = self.source.corrupt
            new = [s for s in skipped if s[0] not in corrupt]
            corrupt.update(skipped)
            if new:
                warnings.warn(f"skipped {len(skipped)} of {len(skipped) + read} images that could not be used "
                              f"(first: {new[0][1]}); strict=True / --strict stops on them", DataWarning,
                              stacklevel=2)

    def _batches(self, batch_size: int, drop_last: bool, skipped: list) -> Iterator[Batch]:
        """The batches of one pass: HDF5/NumPy read per batch, other sources grouped sample by sample
        (images decoded in worker threads, undecodable ones appended to *skipped*)."""
        if self._sel is not None and not self.source.threaded:
            yield from self._array_batches(batch_size, drop_last)
            return
        self._batch_hint = batch_size
        it = self._samples(skipped) if self._sel is not None else self._stream()
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
        layout = self.source.layout
        feed = {t.name: _collate([f[t.name] for _, f, _ in buf], layout.axis(t.name)) for t in layout.batched}
        feed = self._finish(feed, ids) if self.source.streaming else self._with_constants(feed)
        labs = [lab for _, _, lab in buf]
        labels = None if any(v is None for v in labs) else np.asarray(labs, dtype=np.int64)
        return Batch(feed, labels, ids)

    # -- provenance ----------------------------------------------------------
    def _ids_digest(self) -> tuple[str, int]:
        """(sha256 of the selected ids joined by newlines, how many), read in chunks."""
        sha, count = hashlib.sha256(), 0
        chunks = ((self.source.ids_at(c) for c in self._row_chunks()) if self._sel is not None
                  else [self._stream_ids()])
        for ids in chunks:
            if ids:
                sha.update((b"\n" if count else b"") + b"\n".join(selection.id_bytes(i) for i in ids))
                count += len(ids)
        return sha.hexdigest(), count

    def describe(self) -> dict:
        """JSON-able provenance: where the samples came from and how they were chosen and prepared."""
        d = self.source.describe()
        digest, count = self._ids_digest()
        d.update({
            "count": count,
            "total": self.source.n_samples if not self.source.streaming else self.source.total,
            "ids_sha256": digest,
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
        process: ``source``, ``preprocess``, ``classes``, ``labels``, ``input_map``, ``batch_axes``,
        ``constants``, ``strict``, ``allow_external_data`` as :func:`open_dataset` got them (paths
        made absolute), ``seed``, ``selection`` (the split / limit / rest / slice steps, in order)
        and ``ids_sha256`` (None for streaming sources, whose ids are positions).
        Raises :class:`~calib.errors.DataError` for data held in memory."""
        if self._origin is None:
            raise DataError(f"data held in memory ({self.describe()['source']}) cannot be reopened by another "
                            f"process; give a file or folder path")
        return {"format": SPEC_FORMAT, **self._origin, "seed": self.seed,
                "selection": [list(op) for op in self._ops],
                "ids_sha256": None if self.source.streaming else self._ids_digest()[0]}


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
            raise DataError(f"model must be a calib.model.Model or a list of TensorInfo, "
                            f"got {type(model).__name__}") from None
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


def _image_source(path: Path, ids: list[str], layout: FeedLayout, pre, *, single_file, classes, labels, strict):
    if pre is None:
        raise PreprocessError(f"images in {path} need preprocessing: pass a preset ({', '.join(preset_names())}) "
                              f"with --preset, or --scale/--mean/--std/--resize")
    wanted = [t for t in layout.inputs if t.name not in layout.constants]
    if len(wanted) != 1:
        raise InputMismatchError(f"images feed one input but the model has {len(wanted)} "
                                 f"({', '.join(t.name for t in wanted)}); give the others with --constant "
                                 f"INPUT=VALUE, or use HDF5/NumPy data or a loader script")
    t = wanted[0]
    if layout.axis(t.name) != 0:
        raise InputMismatchError(f"images are batched on axis 0, but model input '{t.name}' "
                                 f"{tuple(t.shape)} has --batch-axis {layout.axis(t.name)}")
    plan = make_plan(pre, t)
    return ImageSource(path, ids, t, plan, layout=layout, single_file=single_file, classes=classes, labels=labels,
                       strict=strict)


def open_dataset(source, model, preprocess=None, *, limit: int | None = None, seed: int = 0, classes=None,
                 labels=None, strict: bool = False, split: str | None = None, input_map=None,
                 batch_axes=None, constants=None, allow_external_data: bool = False,
                 workers: int | None = None, eval_fraction: float = 0.5, hdf5_map=None) -> Dataset:
    """Open *source* as samples for *model* (a :class:`calib.model.Model`, path, or list of TensorInfo).

    *source*: a folder of images (recursive; JPEG PNG BMP WebP TIFF PNM) or of .npy/.npz files; an
    image, .h5/.hdf5, .npy or .npz file; ``"script.py:func"`` or ``"script.py"`` (imported and run:
    it is code); a NumPy array or dict of arrays; an iterable of feed dicts or a callable returning
    one. *preprocess*: a preset name, dict or :class:`Preprocess` (images only; arrays are fed as
    stored, cast to the input dtype). *classes*/*labels*: files mapping images to class indices
    (see :mod:`calib.datasets.labels`). *input_map* (``hdf5_map``, its old name):
    ``{input: key}`` or ``"input=key,..."``, the HDF5 dataset or .npz array that feeds each input
    (also ``labels=...``). *batch_axes* (``{input: axis or None}``) and *constants*
    (``{input: value}``): where an input's samples lie when not on axis 0, and the values of
    inputs that take one for every sample (see :class:`~calib.datasets.layout.FeedLayout`).
    *allow_external_data*: let HDF5 external links, external storage and virtual datasets make
    the reader open other files (refused by default). Raises a :class:`~calib.errors.DataError`
    subclass with a one-line message.
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
    if input_map is not None and hdf5_map is not None:
        raise DataError("give input_map or hdf5_map (its old name), not both")
    input_map = input_map if input_map is not None else hdf5_map

    if isinstance(source, Dataset):
        ds = source
    else:
        layout = FeedLayout(inputs, batch_axes, constants)
        src = _open_source(source, layout, pre, classes=classes, labels=labels, strict=strict,
                           input_map=input_map, allow_external=bool(allow_external_data))
        used_pre = pre if isinstance(src, ImageSource) else None
        if pre is not None and used_pre is None and preprocess is not None:
            warnings.warn(f"preprocessing {pre.name or 'custom'} ignored: {src.kind} data is fed as stored",
                          DataWarning, stacklevel=2)
        ds = Dataset(src, inputs, strict=strict, workers=workers, preprocess=used_pre, seed=seed,
                     extra=layout.to_dict(),
                     origin=_origin(source, used_pre, layout, classes=classes, labels=labels, strict=strict,
                                    input_map=input_map, allow_external_data=allow_external_data))
    if split is not None:
        ds = ds.split(split, frac)
    if limit is not None:
        ds = ds.subset(int(limit), seed)
    if not ds.source.streaming:
        if ds.source.n_samples == 0:
            raise EmptyDatasetError(f"{ds.describe()['source']} holds no samples")
        if not ds.longer_than(0):
            raise EmptyDatasetError(f"no samples of {ds.describe()['source']} fall in the '{split}' split "
                                    f"(eval_fraction {frac}); use more data")
    return ds


SPEC_FORMAT = "calib-data-spec-1"
_SELECTION = {"split": "split", "limit": "subset", "rest": "rest", "slice": "slice"}   # step -> Dataset method


def _absolute(path) -> str:
    """*path* as an absolute path (not resolved: links stay links); a loader script ``file.py:func``
    keeps its function name."""
    text = os.fspath(path)
    script = script_function(text) if isinstance(text, str) else None
    return os.path.abspath(text) if script is None else f"{os.path.abspath(script[0])}:{script[1]}"


def _origin(source, pre, layout, *, classes, labels, strict, input_map, allow_external_data) -> dict | None:
    """What :meth:`Dataset.spec` records of an :func:`open_dataset` call, or None when the data or
    its labels are held in memory."""
    def path_or_none(v):
        return None if v is None else _absolute(v)

    if not isinstance(source, (str, os.PathLike)) or any(
            v is not None and not isinstance(v, (str, os.PathLike)) for v in (classes, labels)):
        return None
    if input_map is not None and not isinstance(input_map, (str, Mapping)):
        return None
    return {"source": _absolute(source), "preprocess": pre.to_dict() if pre is not None else None,
            "classes": path_or_none(classes), "labels": path_or_none(labels), "strict": bool(strict),
            "input_map": dict(input_map) if isinstance(input_map, Mapping) else input_map,
            **layout.to_dict(), "allow_external_data": bool(allow_external_data)}


def open_spec(spec: Mapping, model, *, workers: int | None = None) -> Dataset:
    """The dataset that :meth:`Dataset.spec` described, opened for *model* (same inputs), here.

    Raises :class:`~calib.errors.DataError` when *spec* is not such a description, or when the
    data found at its paths hold other sample ids than where the spec was made (every process
    must see the same files)."""
    if not isinstance(spec, Mapping) or spec.get("format") != SPEC_FORMAT:
        raise DataError(f"not a {SPEC_FORMAT} data description")
    ds = open_dataset(spec["source"], model, spec.get("preprocess"), seed=spec.get("seed", 0),
                      classes=spec.get("classes"), labels=spec.get("labels"), strict=bool(spec.get("strict")),
                      input_map=spec.get("input_map"), batch_axes=spec.get("batch_axes"),
                      constants=spec.get("constants"), allow_external_data=bool(spec.get("allow_external_data")),
                      workers=workers)
    for step in spec.get("selection") or ():
        if not step or step[0] not in _SELECTION:
            raise DataError(f"unknown selection step {step!r} in a data description")
        ds = getattr(ds, _SELECTION[step[0]])(*step[1:])
    want = spec.get("ids_sha256")
    if want is not None and ds._ids_digest()[0] != want:
        raise DataError(f"the data at {spec['source']} hold other samples here ({len(ds)} selected) than where "
                        f"they were described; every process must see the same files")
    return ds


def _open_source(source, layout, pre, *, classes, labels, strict, input_map, allow_external):
    if isinstance(source, np.ndarray):
        return from_array(source, layout)
    if isinstance(source, Mapping):
        vals = list(source.values())
        if vals and all(isinstance(v, np.ndarray) for v in vals):
            return from_arrays(source, layout, labels=labels)
        return StreamSource([source], layout)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, str) and script_function(text) is not None:
            fn = load_script(text)
            return StreamSource(fn, layout, kind="script", label=text)
        path = Path(text)
        if not path.exists():
            raise DataNotFoundError(f"data path not found: {path}")
        if not path.is_dir() and not stat.S_ISREG(path.stat().st_mode):
            raise DataError(f"data path {path} is not a regular file or a folder (a FIFO, socket or device "
                            f"is never opened)")
        if path.is_dir():
            return _open_folder(path, layout, pre, classes=classes, labels=labels, strict=strict,
                                input_map=input_map)
        suffix = path.suffix.lower()
        if suffix in HDF5_EXTENSIONS:
            return open_hdf5(path, layout, input_map, labels, allow_external=allow_external)
        if suffix in ARRAY_EXTENSIONS:
            return open_numpy(path, layout, input_map, labels)
        if suffix in IMAGE_EXTENSIONS:
            return _image_source(path, [path.name], layout, pre, single_file=True, classes=classes, labels=labels,
                                 strict=strict)
        if suffix == ".py":
            return StreamSource(load_script(text), layout, kind="script", label=text)
        raise DataError(f"unsupported data file {path}: expected a folder of images, an image, .h5/.hdf5, "
                        f".npy/.npz, or script.py:function")
    if callable(source) or isinstance(source, Iterable):
        return StreamSource(source, layout)
    raise DataError(f"data of type {type(source).__name__} is not a path, array, iterable or callable")


def _open_folder(path: Path, layout, pre, *, classes, labels, strict, input_map):
    images, arrays, others = list_files(path)
    if images:
        return _image_source(path, images, layout, pre, single_file=False, classes=classes, labels=labels,
                             strict=strict)
    if arrays:
        return open_numpy(path, layout, input_map, labels, files=arrays)
    if not others:
        raise EmptyDatasetError(f"data folder {path} is empty")
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    raise EmptyDatasetError(f"no images ({exts}) or .npy/.npz arrays in {path} "
                            f"({len(others)} other file(s), e.g. {others[0]})")
