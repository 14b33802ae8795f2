"""Sample sources behind :class:`calib.datasets.Dataset`.

A random-access source has ``n_samples``, ``ids_at(rows)`` (one string per sample, stable across
runs and machines, computed for the rows asked for), ``labels_at(rows)`` (int64 or None), a
:class:`FeedLayout` and its ``constants``, and either ``load(i)`` (one sample, called from worker
threads: images) or ``load_batch(rows)`` (sorted rows, one read per batch: HDF5 and NumPy, read
lazily in slices). A streaming source (Python iterables, loader scripts) yields samples.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import stat
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    CorruptSampleError,
    DataError,
    DataNotFoundError,
    InputMismatchError,
    LabelError,
    MissingDatasetKeyError,
)
from .labels import as_labels, read_classes, read_labels
from .layout import BATCH_AXIS_HINT, FeedLayout, check_finite, fmt_shape, parse_pairs
from .preprocess import ImagePlan, load_image
from .selection import EXACT_MAX

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff",
                              ".pgm", ".ppm", ".pbm", ".pnm"})
ARRAY_EXTENSIONS = frozenset({".npy", ".npz"})
HDF5_EXTENSIONS = frozenset({".h5", ".hdf5", ".hdf", ".he5"})
LABEL_KEYS = ("labels", "label")


class DataWarning(UserWarning):
    """Samples were skipped, or labels are incomplete (one warning per pass)."""


# ---------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------
def list_files(root: Path) -> tuple[list[str], list[str], list[str]]:
    """``(images, arrays, others)`` under *root*: image files, ``.npy``/``.npz`` files and a
    few other file names (for error messages), as sorted relative POSIX paths; recursive,
    hidden entries skipped.

    Hostile folders are read safely: a link to a directory is followed at most once per real
    directory (device, inode), so link loops (``self -> .``) end; a file reached under several
    names (links, hard links) counts once, under a name without links when it has one, else
    the first in sorted order; FIFOs, sockets, devices and broken links are skipped without
    being opened. Real directories are read before any link is followed.
    """
    seen_dirs: set[tuple[int, int]] = set()
    best: dict[tuple[int, int], tuple[bool, str]] = {}     # file identity -> (via a link, rel path)
    real: list[tuple[str, str]] = [("", os.fspath(root))]   # (rel path, path) not reached via a link
    linked: list[tuple[str, str]] = []                       # reached through a link: after the real ones
    while real or linked:
        via_link = not real
        if real:
            rel, path = real.pop()
        else:
            linked.sort(reverse=True)
            rel, path = linked.pop()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue      # unreadable (as os.walk): left out
        for e in entries:
            if e.name.startswith("."):
                continue
            erel = f"{rel}/{e.name}" if rel else e.name
            try:
                link = e.is_symlink()
                est = e.stat()                    # follows links; never opens the file
            except OSError:
                continue                          # broken link, vanished entry
            if stat.S_ISDIR(est.st_mode):
                (linked if link or via_link else real).append((erel, e.path))
            elif stat.S_ISREG(est.st_mode):
                key = (est.st_dev, est.st_ino)
                cand = (link or via_link, erel)
                if key not in best or cand < best[key]:
                    best[key] = cand
    images, arrays, others = [], [], []
    for _, rel in best.values():
        suffix = os.path.splitext(rel)[1].lower()
        (images if suffix in IMAGE_EXTENSIONS else arrays if suffix in ARRAY_EXTENSIONS else others).append(rel)
    return sorted(images), sorted(arrays), sorted(others)[:1000]


class ImageSource:
    kind = "images"
    threaded = True
    streaming = False

    def __init__(self, path: Path, ids: list[str], tinfo, plan: ImagePlan, *, layout: FeedLayout,
                 single_file: bool = False, classes=None, labels=None, strict: bool = False, draft: bool = True):
        self.path = path
        self.root = path.parent if single_file else path
        self.ids = ids
        self.n_samples = len(ids)
        self.input = tinfo
        self.layout = layout
        self.constants = dict(layout.constants)
        self.plan = plan
        self.draft = draft
        self.labels, self.label_source = self._labels(classes, labels, strict)
        self.has_labels = self.labels is not None
        self.corrupt: dict[str, str] = {}     # id -> reason, of the images passes so far skipped

    def ids_at(self, idx) -> list[str]:
        return [self.ids[i] for i in np.asarray(idx).tolist()]

    def labels_at(self, idx) -> np.ndarray | None:
        return None if self.labels is None else self.labels[np.asarray(idx, dtype=np.int64)]

    def _labels(self, classes, labels, strict):
        cmap = read_classes(classes) if classes is not None else None
        if labels is not None:
            lmap = read_labels(labels, cmap)
            out = []
            for i in self.ids:
                v = lmap.get(i)
                if v is None:
                    v = lmap.get(i.rsplit("/", 1)[-1], -1)
                out.append(v)
            source = f"labels file {labels}"
        elif cmap is not None:
            out = []
            for i in self.ids:
                parts = i.split("/")
                key = parts[0] if len(parts) > 1 else parts[0].rsplit(".", 1)[0].split("_", 1)[0]
                out.append(cmap.get(key, -1))
            source = f"sub-folder or file-name prefix mapped through {classes}"
        else:
            nested = [i for i in self.ids if "/" in i]
            if not nested or len(nested) != len(self.ids):
                return None, None
            names = sorted({i.split("/", 1)[0] for i in self.ids})
            if all(n.isdigit() for n in names):
                cmap = {n: int(n) for n in names}
                source = "sub-folder names (integers)"
            else:
                cmap = {n: k for k, n in enumerate(names)}
                source = f"sub-folder names, sorted ({len(names)} classes)"
            out = [cmap[i.split("/", 1)[0]] for i in self.ids]
        arr = np.asarray(out, dtype=np.int64)
        missing = np.flatnonzero(arr < 0)
        if len(missing) == len(arr):
            first = self.ids[0]
            raise LabelError(f"no image got a label from {source} (e.g. {first!r}); check --classes/--labels")
        if len(missing):
            msg = (f"{len(missing)} of {len(arr)} images have no label in {source} (first: {self.ids[missing[0]]}); "
                   f"they get label -1")
            if strict:
                raise LabelError(msg)
            warnings.warn(msg, DataWarning, stacklevel=4)
        return arr, source

    def load(self, i: int) -> dict[str, np.ndarray]:
        return {self.input.name: load_image(self.root / self.ids[i], self.plan, draft=self.draft)}

    def describe(self) -> dict:
        return {"kind": self.kind, "source": str(self.path)}


# ---------------------------------------------------------------------------
# arrays (HDF5, .npy, .npz, in-memory)
# ---------------------------------------------------------------------------
NPZ_LOAD_MAX = 1 << 28    # bytes: .npz members up to this size are read whole (and cached), larger ones by rows


class _NpzMember:
    """Lazy array view of one member of an .npz file. Members of up to ``NPZ_LOAD_MAX`` bytes are
    read whole on first access (and briefly cached); larger ones row by row along axis 0 from
    the zip stream, so memory follows the rows asked for, not the size the header claims."""

    def __init__(self, path: Path, key: str, head: _NpzHead):
        self.path, self.key, self.head = path, key, head
        self.shape, self.dtype = head.shape, head.dtype

    @property
    def ndim(self):
        return len(self.shape)

    def __getitem__(self, idx):
        if self.head.nbytes <= NPZ_LOAD_MAX:
            return _load_npz_member(str(self.path), self.key)[idx]
        return self._rows(idx)

    def _rows(self, idx) -> np.ndarray:
        h = self.head
        if isinstance(idx, tuple) or idx is Ellipsis or h.fortran or not self.shape:
            raise DataError(f"{self.path}: array '{self.key}' {fmt_shape(self.shape)} ({h.nbytes} bytes) can only be "
                            f"read row by row along axis 0 in C order; store it as .npy or HDF5")
        rows = np.arange(*idx.indices(self.shape[0])) if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64)
        row_bytes = h.nbytes // self.shape[0]
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8).reshape(len(rows), row_bytes) if len(rows) else None
        with zipfile.ZipFile(self.path) as z, z.open(h.member) as f:
            k = 0
            while k < len(rows):
                j = k
                while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
                    j += 1
                f.seek(h.offset + int(rows[k]) * row_bytes)
                data = f.read((j - k + 1) * row_bytes)
                if len(data) != (j - k + 1) * row_bytes:
                    raise CorruptSampleError(f"{self.path}: array '{self.key}' ends before row {int(rows[j])}")
                flat[k:j + 1] = np.frombuffer(data, dtype=np.uint8).reshape(j - k + 1, row_bytes)
                k = j + 1
        return out


@functools.lru_cache(maxsize=8)
def _load_npz_member(path: str, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except ValueError as exc:   # object arrays need pickle: refused
        raise DataError(f"{path}: array '{key}' cannot be read without pickle ({exc}); store numeric arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptSampleError(f"cannot read array '{key}' of {path}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class _NpzHead:
    shape: tuple
    dtype: np.dtype
    fortran: bool
    member: str       # name in the zip
    offset: int       # bytes of the .npy header before the data
    nbytes: int       # bytes of data the header claims


def _npz_headers(path: Path) -> dict[str, _NpzHead]:
    """{key: header} of an .npz without reading the arrays; a member whose header claims more or
    fewer bytes than the member holds is refused (a header claiming 10^9 rows of a tiny file)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    offset = f.tell()
                dtype = np.dtype(dtype)
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                key = info.filename[:-4]
                if not dtype.hasobject and nbytes != info.file_size - offset:
                    raise CorruptSampleError(f"cannot read {path} as .npz: array '{key}' claims shape "
                                             f"{fmt_shape(shape)} ({nbytes} bytes) but holds {info.file_size - offset}")
                out[key] = _NpzHead(tuple(shape), dtype, bool(fortran), info.filename, offset, nbytes)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else exc
        raise CorruptSampleError(f"cannot read {path} as .npz: {why}") from None
    return out


def _open_npy(path: Path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        msg = str(exc).splitlines()[0]
        if "pickle" in msg or "Python objects" in msg:
            raise DataError(f"{path} holds Python objects (needs pickle, which is never enabled); "
                            f"store a numeric array") from None
        raise CorruptSampleError(f"cannot read {path} as .npy: {msg}") from None
    except (OSError, EOFError) as exc:
        raise CorruptSampleError(f"cannot read {path} as .npy: {str(exc).splitlines()[0]}") from None


class _Part:
    """A block of samples: per batched input an array-like with the samples along its batch axis
    (one sample without that axis when *single*), per input without samples its whole value."""

    def __init__(self, name: str, arrays: dict, n: int, single: bool, labels=None):
        self.name, self.arrays, self.n, self.single, self.labels = name, arrays, n, single, labels


def _take(a, ax: int, sel):
    """``a[sel]`` along axis *ax*, *sel* a slice or sorted rows (a slice when they are contiguous;
    h5py wants a list for a fancy read)."""
    if not isinstance(sel, slice):
        sel = np.asarray(sel, dtype=np.int64)
        if len(sel) and sel[-1] - sel[0] + 1 == len(sel):
            sel = slice(int(sel[0]), int(sel[-1]) + 1)
        else:
            sel = sel.tolist()
    return np.asarray(a[(slice(None),) * ax + (sel,)] if ax else a[sel])


class ArraySource:
    """Samples of arrays (HDF5 datasets, .npy/.npz files or a folder of them, in-memory arrays),
    read lazily, one slice or fancy read per part and batch. Row ``r`` of part ``p`` has the id
    ``str(r)`` (one file), ``"<file>[r]"`` (a folder), or ``"<file>"`` (a file holding one
    sample); ids and labels are computed for the rows asked for, never for every row."""

    threaded = False
    streaming = False

    def __init__(self, kind: str, path, parts: list[_Part], layout: FeedLayout, *, labels=None, label_source=None,
                 closer: Callable | None = None):
        self.kind = kind
        self.path = path
        self.parts = parts
        self.layout = layout
        self.inputs = layout.inputs
        self._closer = closer
        self._offsets = np.cumsum([0] + [p.n for p in parts], dtype=np.int64)
        self.n_samples = int(self._offsets[-1])
        self.constants = self._file_constants()
        self.label_source = label_source
        self._labels = labels
        self._part_labels = labels is None and bool(parts) and all(p.labels is not None for p in parts)
        if self._part_labels:
            self.label_source = "labels array"
            for p in parts:
                _label_shape(p.labels, p.n, f"{path}: {p.name or 'labels'}")
        elif labels is not None:
            _label_shape(labels, self.n_samples, f"{path}: {label_source}")
        if (labels is not None or self._part_labels) and self.n_samples <= EXACT_LABELS:
            self._labels = self.labels_at(np.arange(self.n_samples))     # small: read and checked now
            self._part_labels = False
        self.has_labels = self._labels is not None or self._part_labels

    def _file_constants(self) -> dict[str, np.ndarray]:
        out = dict(self.layout.constants)
        for t in self.layout.unbatched:
            if t.name in out:
                continue
            first = None
            for p in self.parts:
                v = np.array(p.arrays[t.name][...], dtype=t.dtype, order="C")
                if first is None:
                    first, out[t.name] = p, v
                elif not np.array_equal(v, out[t.name]):
                    raise InputMismatchError(f"{self.path}: model input '{t.name}' takes one value for every sample, "
                                             f"but {first.name} and {p.name} hold different values")
            check_finite(t.name, out[t.name], None, None)
        return out

    def _locate(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64)
        pis = np.searchsorted(self._offsets, idx, side="right") - 1
        return pis, idx - self._offsets[pis]

    def ids_at(self, idx) -> list[str]:
        """The ids of the samples at *idx*."""
        if len(self.parts) == 1 and not self.parts[0].name:
            return [str(r) for r in np.asarray(idx).tolist()]
        pis, rows = self._locate(idx)
        out = []
        for pi, r in zip(pis.tolist(), rows.tolist()):
            p = self.parts[pi]
            out.append(p.name if p.single else (f"{p.name}[{r}]" if p.name else str(r)))
        return out

    def labels_at(self, idx) -> np.ndarray | None:
        """int64 labels of the samples at sorted *idx* (None without labels); LabelError for values
        that are not int64 integers."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._labels is not None:
            if isinstance(self._labels, np.ndarray) and self._labels.dtype == np.int64:
                return self._labels[idx]
            return as_labels(_take(self._labels, 0, idx).reshape(len(idx), -1)[:, 0], self.label_source)
        if not self._part_labels:
            return None
        pis, rows = self._locate(idx)
        out = [_take(self.parts[pi].labels, 0, rows[pis == pi]).reshape(-1) for pi in np.unique(pis)]
        return as_labels(np.concatenate(out) if out else np.zeros(0, np.int64), self.label_source)

    def load_batch(self, indices) -> dict[str, np.ndarray]:
        """Read the samples at sorted *indices*, one slice (or fancy read) per part, of every batched
        input (samples along its batch axis); constants are not included."""
        pis, rows = self._locate(indices)
        out: dict[str, list] = {t.name: [] for t in self.layout.batched}
        for pi in np.unique(pis):
            r = rows[pis == pi]
            part = self.parts[int(pi)]
            for t in self.layout.batched:
                ax = self.layout.axis(t.name)
                a = part.arrays[t.name]
                out[t.name].append(np.expand_dims(np.asarray(a[...]), ax) if part.single else _take(a, ax, r))
        return {k: (v[0] if len(v) == 1 else np.concatenate(v, axis=self.layout.axis(k))) for k, v in out.items()}

    def close(self):
        if self._closer:
            self._closer()
            self._closer = None

    def describe(self) -> dict:
        return {"kind": self.kind, "source": str(self.path) if self.path is not None else "<array>"}


EXACT_LABELS = EXACT_MAX   # label arrays of up to this many samples are read and checked when opened


def _label_shape(labels, n: int, where: str) -> None:
    shape = tuple(getattr(labels, "shape", np.shape(labels)))
    dtype = np.dtype(getattr(labels, "dtype", np.asarray(labels).dtype))
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or dtype.kind not in "iu":
        raise LabelError(f"{where}: expected a 1-D integer array of labels, got shape {fmt_shape(shape)} "
                         f"dtype {dtype.name}")
    if shape[0] != n:
        raise LabelError(f"{where}: {shape[0]} labels for {n} samples")


INPUT_MAP_FLAG = "--input-map"


def _parse_map(input_map) -> dict[str, str]:
    return {k: str(v) for k, v in parse_pairs(input_map, INPUT_MAP_FLAG).items()}


def _check_map(mapping: dict, inputs) -> None:
    unknown = sorted(set(mapping) - {t.name for t in inputs} - set(LABEL_KEYS))
    if unknown:
        raise InputMismatchError(f"{INPUT_MAP_FLAG} names {', '.join(unknown)}, which the model does not have as "
                                 f"inputs (inputs: {', '.join(t.name for t in inputs)})")


def _missing(path, what: str, key: str, t, have: list[str], layout: FeedLayout | None = None
             ) -> MissingDatasetKeyError:
    listed = f"{', '.join(have[:20]) or 'none'}{' ...' if len(have) > 20 else ''}"
    hint = f" (map one with {INPUT_MAP_FLAG} {t.name}={what.upper()})" if t is not None and key == t.name else ""
    if t is not None and layout is not None and layout.axis(t.name) is None:
        hint = f"{hint[:-1]}, or give its value with --constant {t.name}=VALUE)" if hint else \
            f" (give its value with --constant {t.name}=VALUE)"
    need = f" for model input '{t.name}'" if t is not None else ""
    return MissingDatasetKeyError(f"{path} has no {what} '{key}'{need}; it has: {listed}{hint}")


def _external_labels(labels, n: int):
    """(labels array-like, description) from a labels file or array given apart from the data."""
    if labels is None:
        return None, None
    if isinstance(labels, (str, os.PathLike)):
        p = Path(labels)
        if not p.exists():
            raise DataNotFoundError(f"labels file not found: {p}")
        if p.suffix == ".npy":
            arr = _open_npy(p)
        else:
            try:
                arr = np.loadtxt(p, dtype=np.int64, ndmin=1)
            except ValueError as exc:
                raise LabelError(f"labels file {p}: expected one integer (within int64) per line ({exc})") from None
        src = f"labels file {p}"
    else:
        arr = as_labels(labels, "labels array")
        src = "labels array"
    _label_shape(arr, n, src)
    return arr, src


def _hdf5_object(f, key: str, allow_external: bool, path):
    """``f[key]`` (None if absent), following no external link unless *allow_external*."""
    import h5py

    g = f
    parts = [p for p in key.split("/") if p]
    for k, comp in enumerate(parts):
        link = g.get(comp, getlink=True) if isinstance(g, h5py.Group) else None
        if link is None:
            return None
        if isinstance(link, h5py.ExternalLink) and not allow_external:
            raise DataError(f"{path}:{'/'.join(parts[:k + 1])} is an external link to {link.filename}:{link.path}; "
                            f"a data file may not make calib read other files unless --allow-external-data")
        try:
            g = g[comp]
        except (KeyError, OSError):
            return None
    if isinstance(g, h5py.Dataset) and not allow_external:
        if g.external:
            raise DataError(f"{path}:{key} keeps its data in external files ({g.external[0][0]}, ...); a data file "
                            f"may not make calib read other files unless --allow-external-data")
        if g.is_virtual:
            raise DataError(f"{path}:{key} is a virtual dataset mapping other files; a data file may not make calib "
                            f"read other files unless --allow-external-data")
    return g


def open_hdf5(path: Path, layout: FeedLayout, input_map=None, labels=None, *,
              allow_external: bool = False) -> ArraySource:
    import h5py

    mapping = _parse_map(input_map)
    _check_map(mapping, layout.inputs)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptSampleError(f"cannot open {path} as HDF5: {str(exc).splitlines()[0]}") from None
    try:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        arrays = {}
        n = None
        for t in layout.inputs:
            if t.name in layout.constants:
                continue
            key = mapping.get(t.name, t.name)
            d = _hdf5_object(f, key, allow_external, path)
            if not isinstance(d, h5py.Dataset):
                raise _missing(path, "dataset", key, t, names, layout)
            if layout.check(t, d.shape, d.dtype, f"{path}:{key}") == "sample":
                raise InputMismatchError(f"{path}:{key}: dataset of shape {fmt_shape(d.shape)} cannot feed model "
                                         f"input '{t.name}' {fmt_shape(t.shape)}; HDF5 datasets hold samples along "
                                         f"the batch axis ({BATCH_AXIS_HINT})")
            ax = layout.axis(t.name)
            if ax is not None:
                if n is not None and d.shape[ax] != n:
                    raise InputMismatchError(f"{path}: datasets hold different sample counts ({n} vs {d.shape[ax]} "
                                             f"in '{key}'; {BATCH_AXIS_HINT})")
                n = d.shape[ax]
            arrays[t.name] = d
        if n is None:
            raise InputMismatchError(f"{path}: no model input takes samples (every one has a constant value)")
        lab, src = _external_labels(labels, n)
        lkey = mapping.get("labels") or mapping.get("label")
        if lab is None:
            d = _hdf5_object(f, lkey, allow_external, path) if lkey is not None else None
            if lkey is not None and not isinstance(d, h5py.Dataset):
                raise _missing(path, "labels dataset", lkey, None, names)
            for k in ([] if lkey else LABEL_KEYS):
                d = _hdf5_object(f, k, allow_external, path)
                if isinstance(d, h5py.Dataset):
                    lkey = k
                    break
            if lkey is not None:
                lab, src = d, f"{path}:{lkey}"
        part = _Part("", arrays, n, False)
        return ArraySource("hdf5", path, [part], layout, labels=lab, label_source=src, closer=f.close)
    except BaseException:
        f.close()
        raise


def _arrays_from_file(path: Path, layout: FeedLayout, mapping: dict[str, str]):
    """-> (arrays per input, count, single, labels array-like or None)."""
    if path.suffix.lower() == ".npy":
        batched = layout.batched
        wanted = [t for t in layout.inputs if t.name not in layout.constants]
        if len(wanted) != 1:
            raise InputMismatchError(f"{path}: a .npy file feeds one input but the model has {len(wanted)} "
                                     f"({', '.join(t.name for t in wanted)}); use .npz keyed by input name")
        t = batched[0] if batched else wanted[0]
        a = _open_npy(path)
        kind = layout.check(t, a.shape, a.dtype, str(path))
        return {t.name: a}, (1 if kind == "sample" else a.shape[layout.axis(t.name)]), kind == "sample", None
    heads = _npz_headers(path)
    arrays, n, single = {}, None, None
    wanted = [t for t in layout.inputs if t.name not in layout.constants]
    for t in wanted:
        key = mapping.get(t.name, t.name)
        if key not in heads:
            if len(wanted) == 1 and len([k for k in heads if k not in LABEL_KEYS]) == 1 and t.name not in mapping:
                key = next(k for k in heads if k not in LABEL_KEYS)   # one array, one input: take it
            else:
                raise _missing(path, "array", key, t, sorted(heads), layout)
        head = heads[key]
        kind = layout.check(t, head.shape, head.dtype, f"{path}:{key}")
        arrays[t.name] = _NpzMember(path, key, head)
        if kind == "constant":
            continue
        cnt = 1 if kind == "sample" else head.shape[layout.axis(t.name)]
        if n is not None and (cnt != n or (kind == "sample") != single):
            raise InputMismatchError(f"{path}: arrays hold different sample counts ({n} vs {cnt} in '{key}'; "
                                     f"{BATCH_AXIS_HINT})")
        n, single = cnt, kind == "sample"
    if n is None:
        raise InputMismatchError(f"{path}: no model input takes samples (every one has a constant value)")
    lkey = mapping.get("labels") or next((k for k in LABEL_KEYS if k in heads), None)
    labels = None
    if lkey is not None:
        if lkey not in heads:
            raise _missing(path, "labels array", lkey, None, sorted(heads))
        labels = _NpzMember(path, lkey, heads[lkey])
    return arrays, n, single, labels


def open_numpy(path: Path, layout: FeedLayout, input_map=None, labels=None,
               files: list[str] | None = None) -> ArraySource:
    mapping = _parse_map(input_map)
    _check_map(mapping, layout.inputs)
    parts = []
    if files is None:
        arrays, n, single, lab = _arrays_from_file(path, layout, mapping)
        parts.append(_Part(path.name if single else "", arrays, n, single, lab))
        kind = path.suffix.lower().lstrip(".")
    else:
        for rel in files:
            arrays, n, single, lab = _arrays_from_file(path / rel, layout, mapping)
            parts.append(_Part(rel, arrays, n, single, lab))
        kind = "numpy-folder"
        if any(p.labels is not None for p in parts) and not all(p.labels is not None for p in parts):
            raise LabelError(f"{path}: some files have a 'labels' array and some do not")
    total = sum(p.n for p in parts)
    lab, src = _external_labels(labels, total)
    return ArraySource(kind, path, parts, layout, labels=lab, label_source=src)


def _arrays_for_inputs(d: Mapping[str, Any], layout: FeedLayout, where: str, constants: dict | None = None
                       ) -> tuple[dict[str, np.ndarray], int]:
    """One array per batched model input from mapping *d* (a single sample gains its batch axis),
    checked against the input's shape and dtype; all must hold the same number of samples. The
    values of inputs without samples go into *constants* (if given; a value there already must
    be equal). *where* prefixes messages (e.g. "item 3 of the data loader: ")."""
    arrays: dict[str, np.ndarray] = {}
    n = None
    for t in layout.inputs:
        if t.name not in d:
            if t.name in layout.constants:
                continue
            hint = (f" (it takes one value for every sample: give it with --constant {t.name}=VALUE or in every "
                    f"item)" if layout.axis(t.name) is None else "")
            raise MissingDatasetKeyError(f"{where}no array for model input '{t.name}'; got: {', '.join(d) or 'none'}"
                                         f"{hint}")
        a = np.asarray(d[t.name])
        kind = layout.check(t, a.shape, a.dtype, f"{where}input '{t.name}'")
        if kind == "constant":
            if constants is not None:
                a = np.array(a, dtype=t.dtype, order="C")
                if t.name not in constants:
                    check_finite(t.name, a, None, None)
                    constants[t.name] = a
                elif not np.array_equal(constants[t.name], a):
                    raise InputMismatchError(f"{where}input '{t.name}' takes one value for every sample, but this "
                                             f"value differs from the one given before")
            continue
        ax = layout.axis(t.name)
        if kind == "sample":
            a = np.expand_dims(a, ax)
        if n is not None and a.shape[ax] != n:
            raise InputMismatchError(f"{where}arrays hold different sample counts ({n} vs {a.shape[ax]} "
                                     f"for '{t.name}'; {BATCH_AXIS_HINT})")
        n = a.shape[ax]
        arrays[t.name] = a
    if n is None:
        raise InputMismatchError(f"{where}no model input takes samples (every one has a constant value)")
    return arrays, n


def from_array(arr: np.ndarray, layout: FeedLayout) -> ArraySource:
    wanted = [t for t in layout.inputs if t.name not in layout.constants]
    if len(wanted) != 1:
        raise InputMismatchError(f"one array feeds one input but the model has {len(wanted)} "
                                 f"({', '.join(t.name for t in wanted)}); pass a dict of arrays")
    return from_arrays({wanted[0].name: arr}, layout)


def from_arrays(d: Mapping[str, Any], layout: FeedLayout, labels=None) -> ArraySource:
    d = dict(d)
    names = {t.name for t in layout.inputs}
    lab = labels
    for k in LABEL_KEYS:
        if k in d and k not in names:
            lab = d.pop(k) if lab is None else lab
    extra = sorted(set(d) - names)
    if extra:
        raise InputMismatchError(f"arrays {', '.join(extra)} are not model inputs ({', '.join(sorted(names))})")
    consts: dict[str, np.ndarray] = {}
    arrays, n = _arrays_for_inputs(d, layout, "", consts)
    arrays.update(consts)
    lab, src = _external_labels(lab, n)
    return ArraySource("arrays", None, [_Part("", arrays, n, False)], layout, labels=lab, label_source=src)


# ---------------------------------------------------------------------------
# iterables and loader scripts (streaming)
# ---------------------------------------------------------------------------
def script_function(text: str) -> tuple[str, str] | None:
    """``(file, function)`` when *text* names a loader script's function, ``file.py:func``, and is not
    itself an existing path; else None."""
    if ".py:" not in text or Path(text).exists():
        return None
    file, _, func = text.rpartition(".py:")
    return file + ".py", func


def load_script(spec: str) -> Callable[[], Iterable]:
    """``file.py:func`` -> the function (Polygraphy's data-loader-script convention)."""
    path, sep, func = str(spec).rpartition(":")
    if not sep or not path or not func:
        path, func = str(spec), "load_data"
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(f"data loader script not found: {p}")
    name = f"_calib_loader_{abs(hash(str(p.resolve())))}"
    mod_spec = importlib.util.spec_from_file_location(name, p)
    if mod_spec is None or mod_spec.loader is None:
        raise DataError(f"cannot import data loader script {p}")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise DataError(f"data loader script {p} failed to import: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise DataError(f"data loader script {p} has no function '{func}' (use FILE.py:FUNCTION)")
    return fn


class StreamSource:
    """Feed dicts from an iterable (one pass per ``iter()``), a callable returning one, or a
    one-shot iterator (kept in memory after the first pass so the dataset can be re-read).

    Each item is a ``{input_name: array}`` dict (optionally with a ``labels`` entry), or a
    ``(feed, labels)`` pair. An array whose rank equals the model input's is a batch (leading
    axis = samples); one rank lower is a single sample. Sample ids are their positions ``0, 1, ...``.
    """

    kind = "iterable"
    threaded = False
    streaming = True

    def __init__(self, obj, layout: FeedLayout, *, kind: str = "iterable", label: str | None = None):
        self.obj = obj
        self.layout = layout
        self.inputs = layout.inputs
        self.constants = dict(layout.constants)   # and those the items hold (the same in every item)
        self.kind = kind
        self.path = label
        self._cache: list | None = None
        self.total: int | None = None
        self.has_labels: bool | None = None
        if isinstance(obj, Iterator) or (not callable(obj) and not isinstance(obj, Iterable)):
            if not isinstance(obj, Iterable):
                raise DataError(f"data of type {type(obj).__name__} is not a path, array, iterable or callable")

    def _items(self) -> Iterator:
        if self._cache is not None:
            yield from self._cache
            return
        if callable(self.obj) and not isinstance(self.obj, Iterable):
            try:
                it = self.obj()
            except Exception as exc:
                raise DataError(f"data loader {getattr(self.obj, '__name__', self.obj)!r} failed: "
                                f"{type(exc).__name__}: {exc}") from None
            if not isinstance(it, Iterable):
                raise DataError(f"data loader {getattr(self.obj, '__name__', self.obj)!r} returned "
                                f"{type(it).__name__}, expected an iterable of feed dicts")
            yield from it
        elif isinstance(self.obj, Iterator):
            self._cache = list(self.obj)      # one-shot: keep it so later passes see the same data
            yield from self._cache
        else:
            yield from self.obj

    def samples(self) -> Iterator[tuple[str, dict, int | None]]:
        """Yield (id, {input: sample array}, label or None), validated."""
        names = {t.name for t in self.inputs}
        k = 0
        labelled = None
        for n_item, item in enumerate(self._items()):
            labels = None
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Mapping):
                item, labels = item
            if not isinstance(item, Mapping):
                raise DataError(f"item {n_item} of the data loader is a {type(item).__name__}, expected a dict "
                                f"{{input_name: array}}")
            item = dict(item)
            for lk in LABEL_KEYS:
                if lk in item and lk not in names:
                    labels = item.pop(lk) if labels is None else labels
            extra = sorted(set(item) - names)
            if extra:
                raise InputMismatchError(f"item {n_item}: {', '.join(repr(e) for e in extra)} not model inputs "
                                         f"({', '.join(sorted(names))})")
            arrays, count = _arrays_for_inputs(item, self.layout, f"item {n_item} of the data loader: ",
                                               self.constants)
            lab = None
            if labels is not None:
                lab = as_labels(labels, f"item {n_item} of the data loader").reshape(-1)
                if len(lab) != count:
                    raise LabelError(f"item {n_item}: {len(lab)} labels for {count} samples")
            if labelled is None:
                labelled = lab is not None
            elif labelled != (lab is not None):
                raise LabelError(f"item {n_item}: some items have labels and some do not")
            axes = {name: self.layout.axis(name) for name in arrays}
            for r in range(count):
                feed = {name: (np.take(a, r, axis=axes[name]) if axes[name] else a[r]) for name, a in arrays.items()}
                yield (str(k), feed, (int(lab[r]) if lab is not None else None))
                k += 1
        self.total = k
        self.has_labels = bool(labelled)

    def count(self) -> int:
        if self.total is None:
            for _ in self.samples():
                pass
        return self.total

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.path or f"<{type(self.obj).__name__}>"}
