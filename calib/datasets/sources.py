"""Sample sources behind :class:`calib.datasets.Dataset`.

A random-access source has ``ids`` (one string per sample, stable across runs and machines),
optional integer ``labels`` and either ``load(i)`` (one sample, called from worker threads:
images) or ``load_batch(indices)`` (sorted indices, one read per batch: HDF5 and NumPy, read
lazily in slices). A streaming source (Python iterables, loader scripts) yields samples.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import stat
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import (CorruptSampleError, DataError, DataNotFoundError, InputMismatchError, LabelError,
                      MissingDatasetKeyError, NonFiniteInputError)
from .labels import read_classes, read_labels
from .preprocess import ImagePlan, load_image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff",
                              ".pgm", ".ppm", ".pbm", ".pnm"})
ARRAY_EXTENSIONS = frozenset({".npy", ".npz"})
HDF5_EXTENSIONS = frozenset({".h5", ".hdf5", ".hdf", ".he5"})
LABEL_KEYS = ("labels", "label")


class DataWarning(UserWarning):
    """Samples were skipped, or labels are incomplete (one warning per pass)."""


# ---------------------------------------------------------------------------
# shape / dtype / finiteness checks shared by the array sources
# ---------------------------------------------------------------------------
def fmt_shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_sample_layout(t, sample_shape: tuple, dtype, where: str) -> None:
    """Raise InputMismatchError if samples of *sample_shape*/*dtype* cannot feed input *t*."""
    want = tuple(t.shape[1:])
    if len(sample_shape) != len(want):
        raise InputMismatchError(f"{where}: samples of shape {fmt_shape(sample_shape)} cannot feed model input "
                                 f"'{t.name}' {fmt_shape(t.shape)} (per sample {fmt_shape(want)})")
    for have, need in zip(sample_shape, want):
        if isinstance(need, int) and have != need:
            raise InputMismatchError(f"{where}: samples of shape {fmt_shape(sample_shape)} do not fit model input "
                                     f"'{t.name}' {fmt_shape(t.shape)} (per sample {fmt_shape(want)})")
    check_dtype(t, dtype, where)


def check_dtype(t, dtype, where: str) -> None:
    src, dst = np.dtype(dtype), np.dtype(t.dtype)
    if src == dst:
        return
    ok = src.kind in "biuf" and dst.kind in "biuf" and (
        np.can_cast(src, dst, "same_kind") or (src.kind in "biu" and dst.kind == "f"))
    if not ok:
        raise InputMismatchError(f"{where}: data dtype {src.name} cannot feed model input '{t.name}' of dtype "
                                 f"{dst.name}")


def check_finite(name: str, arr: np.ndarray, ids: Sequence[str]) -> None:
    if arr.dtype.kind != "f":
        return
    ok = np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1) if arr.ndim > 1 else np.isfinite(arr)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        kind = "NaN" if np.isnan(arr[bad]).any() else "Inf"
        more = f" (and {int((~ok).sum()) - 1} more in this batch)" if (~ok).sum() > 1 else ""
        raise NonFiniteInputError(f"sample {ids[bad]}: input '{name}' contains {kind}{more}")


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

    def __init__(self, path: Path, ids: list[str], tinfo, plan: ImagePlan, *, single_file: bool = False,
                 classes=None, labels=None, strict: bool = False, draft: bool = True):
        self.path = path
        self.root = path.parent if single_file else path
        self.ids = ids
        self.input = tinfo
        self.plan = plan
        self.draft = draft
        self.labels, self.label_source = self._labels(classes, labels, strict)

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
class _NpzMember:
    """Lazy array view of one member of an .npz file (loaded on first access, briefly cached)."""

    def __init__(self, path: Path, key: str, shape: tuple, dtype):
        self.path, self.key, self.shape, self.dtype = path, key, tuple(shape), np.dtype(dtype)

    @property
    def ndim(self):
        return len(self.shape)

    def __getitem__(self, idx):
        return _load_npz_member(str(self.path), self.key)[idx]


@functools.lru_cache(maxsize=8)
def _load_npz_member(path: str, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except ValueError as exc:   # object arrays need pickle: refused
        raise DataError(f"{path}: array '{key}' cannot be read without pickle ({exc}); store numeric arrays") from None


def _npz_headers(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """{key: (shape, dtype)} of an .npz without reading the arrays."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                out[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CorruptSampleError(f"cannot read {path} as .npz: {str(exc).splitlines()[0] if str(exc) else exc}") from None
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
    """A block of samples: per input an array-like with a leading sample axis."""

    def __init__(self, name: str, arrays: dict, n: int, single: bool, labels=None):
        self.name, self.arrays, self.n, self.single, self.labels = name, arrays, n, single, labels


class ArraySource:
    threaded = False
    streaming = False

    def __init__(self, kind: str, path, parts: list[_Part], inputs, *, labels=None, label_source=None,
                 closer: Callable | None = None):
        self.kind = kind
        self.path = path
        self.parts = parts
        self.inputs = inputs
        self._closer = closer
        self.ids: list[str] = []
        self._where: list[tuple[int, int]] = []
        for pi, p in enumerate(parts):
            for r in range(p.n):
                self.ids.append(p.name if p.single else (f"{p.name}[{r}]" if p.name else str(r)))
                self._where.append((pi, r))
        self.labels = labels
        self.label_source = label_source
        if self.labels is None and parts and all(p.labels is not None for p in parts):
            self.labels = np.concatenate([np.asarray(p.labels[...], dtype=np.int64).reshape(-1) for p in parts])
            self.label_source = "labels array"
        if self.labels is not None and len(self.labels) != len(self.ids):
            raise LabelError(f"{path}: {len(self.labels)} labels for {len(self.ids)} samples")

    def load_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Read the samples at sorted *indices*, one slice (or fancy read) per part."""
        out: dict[str, list] = {t.name: [] for t in self.inputs}
        groups: dict[int, list[int]] = {}
        for i in indices:
            pi, r = self._where[i]
            groups.setdefault(pi, []).append(r)
        for pi in sorted(groups):
            rows = groups[pi]
            part = self.parts[pi]
            sel = slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == len(rows) else rows
            for t in self.inputs:
                a = part.arrays[t.name]
                block = np.asarray(a[...])[None] if part.single else np.asarray(a[sel])
                out[t.name].append(block)
        return {k: (v[0] if len(v) == 1 else np.concatenate(v)) for k, v in out.items()}

    def close(self):
        if self._closer:
            self._closer()
            self._closer = None

    def describe(self) -> dict:
        return {"kind": self.kind, "source": str(self.path) if self.path is not None else "<array>"}


def _parse_map(hdf5_map) -> dict[str, str]:
    if hdf5_map is None:
        return {}
    if isinstance(hdf5_map, Mapping):
        return {str(k): str(v) for k, v in hdf5_map.items()}
    out = {}
    for item in str(hdf5_map).split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise DataError(f"--hdf5-map: expected input=dataset[,...], got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip() or not v.strip():
            raise DataError(f"--hdf5-map: expected input=dataset[,...], got {item!r}")
        out[k.strip()] = v.strip()
    return out


def _check_array_for_input(t, shape: tuple, dtype, where: str) -> bool:
    """Validate an array of *shape* for input *t*; returns True if it is a single sample
    (rank one less than the model input) instead of a stack of samples."""
    rank = len(t.shape)
    if len(shape) == rank:
        check_sample_layout(t, tuple(shape[1:]), dtype, where)
        return False
    if len(shape) == rank - 1:
        check_sample_layout(t, tuple(shape), dtype, where)
        return True
    raise InputMismatchError(f"{where}: array of shape {fmt_shape(shape)} cannot feed model input '{t.name}' "
                             f"{fmt_shape(t.shape)}; expected (samples, {', '.join(str(d) for d in t.shape[1:])})")


def _external_labels(labels, n: int):
    if labels is None:
        return None, None
    if isinstance(labels, (str, os.PathLike)):
        p = Path(labels)
        if not p.exists():
            raise DataNotFoundError(f"labels file not found: {p}")
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            try:
                arr = np.loadtxt(p, dtype=np.int64, ndmin=1)
            except ValueError as exc:
                raise LabelError(f"labels file {p}: expected one integer per line ({exc})") from None
        src = f"labels file {p}"
    else:
        arr = np.asarray(labels)
        src = "labels array"
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise LabelError(f"{src}: expected a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    if len(arr) != n:
        raise LabelError(f"{src}: {len(arr)} labels for {n} samples")
    return arr.astype(np.int64), src


def open_hdf5(path: Path, inputs, hdf5_map=None, labels=None) -> ArraySource:
    import h5py

    mapping = _parse_map(hdf5_map)
    unknown = sorted(set(mapping) - {t.name for t in inputs} - set(LABEL_KEYS))
    if unknown:
        raise InputMismatchError(f"--hdf5-map names {', '.join(unknown)}, which the model does not have as inputs "
                                 f"(inputs: {', '.join(t.name for t in inputs)})")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptSampleError(f"cannot open {path} as HDF5: {str(exc).splitlines()[0]}") from None
    try:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        arrays = {}
        n = None
        for t in inputs:
            key = mapping.get(t.name, t.name)
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise MissingDatasetKeyError(
                    f"{path} has no dataset '{key}' for model input '{t.name}'; it has: "
                    f"{', '.join(names[:20]) or 'no datasets'}{' ...' if len(names) > 20 else ''}"
                    f"{'' if key != t.name else ' (map one with --hdf5-map ' + t.name + '=DATASET)'}")
            d = f[key]
            if d.ndim != len(t.shape):
                raise InputMismatchError(f"{path}:{key}: dataset of shape {fmt_shape(d.shape)} cannot feed model input "
                                         f"'{t.name}' {fmt_shape(t.shape)}; HDF5 datasets need a leading sample axis")
            check_sample_layout(t, tuple(d.shape[1:]), d.dtype, f"{path}:{key}")
            if n is not None and d.shape[0] != n:
                raise InputMismatchError(f"{path}: datasets hold different sample counts ({n} vs {d.shape[0]} in '{key}')")
            n = d.shape[0]
            arrays[t.name] = d
        lab, src = _external_labels(labels, n)
        lkey = mapping.get("labels") or mapping.get("label")
        if lab is None:
            if lkey is not None and lkey not in f:
                raise MissingDatasetKeyError(f"{path} has no labels dataset '{lkey}'; it has: {', '.join(names[:20])}")
            lkey = lkey or next((k for k in LABEL_KEYS if k in f and isinstance(f[k], h5py.Dataset)), None)
            if lkey is not None:
                lab, src = _external_labels(np.asarray(f[lkey][:]).reshape(-1), n)
                src = f"{path}:{lkey}"
        part = _Part("", arrays, n, False)
        return ArraySource("hdf5", path, [part], inputs, labels=lab, label_source=src, closer=f.close)
    except BaseException:
        f.close()
        raise


def _arrays_from_file(path: Path, inputs, mapping: dict[str, str]):
    """-> (arrays per input, count, single, labels array-like or None)."""
    if path.suffix.lower() == ".npy":
        if len(inputs) != 1:
            raise InputMismatchError(f"{path}: a .npy file feeds one input but the model has {len(inputs)} "
                                     f"({', '.join(t.name for t in inputs)}); use .npz keyed by input name")
        t = inputs[0]
        a = _open_npy(path)
        single = _check_array_for_input(t, a.shape, a.dtype, str(path))
        return {t.name: a}, 1 if single else a.shape[0], single, None
    heads = _npz_headers(path)
    arrays, n, single = {}, None, None
    for t in inputs:
        key = mapping.get(t.name, t.name)
        if key not in heads:
            if len(inputs) == 1 and len([k for k in heads if k not in LABEL_KEYS]) == 1 and t.name not in mapping:
                key = next(k for k in heads if k not in LABEL_KEYS)   # one array, one input: take it
            else:
                raise MissingDatasetKeyError(f"{path} has no array '{key}' for model input '{t.name}'; it has: "
                                             f"{', '.join(sorted(heads)) or 'no arrays'}")
        shape, dtype = heads[key]
        s = _check_array_for_input(t, shape, dtype, f"{path}:{key}")
        cnt = 1 if s else shape[0]
        if n is not None and (cnt != n or s != single):
            raise InputMismatchError(f"{path}: arrays hold different sample counts ({n} vs {cnt} in '{key}')")
        n, single = cnt, s
        arrays[t.name] = _NpzMember(path, key, shape, dtype)
    lkey = mapping.get("labels") or next((k for k in LABEL_KEYS if k in heads), None)
    labels = None
    if lkey is not None:
        if lkey not in heads:
            raise MissingDatasetKeyError(f"{path} has no labels array '{lkey}'; it has: {', '.join(sorted(heads))}")
        labels = _NpzMember(path, lkey, *heads[lkey])
    return arrays, n, single, labels


def open_numpy(path: Path, inputs, hdf5_map=None, labels=None, files: list[str] | None = None) -> ArraySource:
    mapping = _parse_map(hdf5_map)
    parts = []
    if files is None:
        arrays, n, single, lab = _arrays_from_file(path, inputs, mapping)
        parts.append(_Part(path.name if single else "", arrays, n, single, lab))
        kind = path.suffix.lower().lstrip(".")
    else:
        for rel in files:
            arrays, n, single, lab = _arrays_from_file(path / rel, inputs, mapping)
            parts.append(_Part(rel, arrays, n, single, lab))
        kind = "numpy-folder"
        if any(p.labels is not None for p in parts) and not all(p.labels is not None for p in parts):
            raise LabelError(f"{path}: some files have a 'labels' array and some do not")
    total = sum(p.n for p in parts)
    lab, src = _external_labels(labels, total)
    return ArraySource(kind, path, parts, inputs, labels=lab, label_source=src)


def _arrays_for_inputs(d: Mapping[str, Any], inputs, where: str) -> tuple[dict[str, np.ndarray], int]:
    """One array per model input from mapping *d* (a single sample gains a batch axis), checked
    against the input's shape and dtype; all must hold the same number of samples. *where*
    prefixes messages (e.g. "item 3 of the data loader: ")."""
    arrays: dict[str, np.ndarray] = {}
    n = None
    for t in inputs:
        if t.name not in d:
            raise MissingDatasetKeyError(f"{where}no array for model input '{t.name}'; got: {', '.join(d) or 'none'}")
        a = np.asarray(d[t.name])
        if _check_array_for_input(t, a.shape, a.dtype, f"{where}input '{t.name}'"):
            a = a[None]
        if n is not None and a.shape[0] != n:
            raise InputMismatchError(f"{where}arrays hold different sample counts ({n} vs {a.shape[0]} "
                                     f"for '{t.name}')")
        n = a.shape[0]
        arrays[t.name] = a
    return arrays, n


def from_array(arr: np.ndarray, inputs) -> ArraySource:
    if len(inputs) != 1:
        raise InputMismatchError(f"one array feeds one input but the model has {len(inputs)} "
                                 f"({', '.join(t.name for t in inputs)}); pass a dict of arrays")
    return from_arrays({inputs[0].name: arr}, inputs)


def from_arrays(d: Mapping[str, Any], inputs, labels=None) -> ArraySource:
    d = dict(d)
    lab = labels
    for k in LABEL_KEYS:
        if k in d and k not in {t.name for t in inputs}:
            lab = d.pop(k) if lab is None else lab
    extra = sorted(set(d) - {t.name for t in inputs})
    if extra:
        raise InputMismatchError(f"arrays {', '.join(extra)} are not model inputs ({', '.join(t.name for t in inputs)})")
    arrays, n = _arrays_for_inputs(d, inputs, "")
    lab, src = _external_labels(lab, n)
    return ArraySource("arrays", None, [_Part("", arrays, n, False)], inputs, labels=lab, label_source=src)


# ---------------------------------------------------------------------------
# iterables and loader scripts (streaming)
# ---------------------------------------------------------------------------
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

    def __init__(self, obj, inputs, *, kind: str = "iterable", label: str | None = None):
        self.obj = obj
        self.inputs = inputs
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
            arrays, count = _arrays_for_inputs(item, self.inputs, f"item {n_item} of the data loader: ")
            lab = None
            if labels is not None:
                lab = np.asarray(labels, dtype=np.int64).reshape(-1)
                if len(lab) != count:
                    raise LabelError(f"item {n_item}: {len(lab)} labels for {count} samples")
            if labelled is None:
                labelled = lab is not None
            elif labelled != (lab is not None):
                raise LabelError(f"item {n_item}: some items have labels and some do not")
            for r in range(count):
                yield str(k), {name: a[r] for name, a in arrays.items()}, (int(lab[r]) if lab is not None else None)
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
