"""Class lists and label files.

``classes`` file: the class ids in model output order, either one id per line (line number =
index) or TSV/CSV rows ``index<TAB>id[<TAB>anything...]`` such as ``imagenet1k_classes.tsv``.
Blank lines and lines starting with ``#`` are ignored.

``labels`` file: CSV or TSV rows ``file_name,label`` where the label is an integer index or a
class id from the classes file; the file name is matched against the sample's path relative to
the data folder first, then against its base name. A header row is skipped.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, LabelError

INT64 = np.iinfo(np.int64)


def as_labels(values, where: str) -> np.ndarray:
    """*values* (integers: an array, a list, one number) as an int64 array; :class:`LabelError`
    naming *where* for anything else, values beyond int64 included (never wrapped)."""
    try:
        a = np.asarray(values)
    except (OverflowError, ValueError, TypeError) as exc:
        raise LabelError(f"{where}: labels must be integers ({exc})") from None
    if a.dtype == object:
        bad = next((v for v in a.reshape(-1) if not isinstance(v, (int, np.integer)) or isinstance(v, bool)
                    or not INT64.min <= int(v) <= INT64.max), None)
        if bad is not None:
            raise LabelError(f"{where}: label {bad!r} is not an integer within int64")
        return a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise LabelError(f"{where}: labels must be integers, got dtype {a.dtype.name}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > INT64.max:
        raise LabelError(f"{where}: label {int(a.max())} is beyond int64")
    return a.astype(np.int64)


def _int(text: str, where: str) -> int:
    v = int(text)
    if not INT64.min <= v <= INT64.max:
        raise LabelError(f"{where}: {text[:40]} is beyond int64")
    return v


def _split(line: str) -> list[str]:
    if "\t" in line:
        return [p.strip() for p in line.split("\t")]
    if "," in line:
        return [p.strip() for p in line.split(",")]
    return [line.strip()]


def _read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a *what* file that hold something (blank lines and ``#`` comments dropped)."""
    p = Path(path)
    if not p.exists():
        raise DataNotFoundError(f"{what} file not found: {p}")
    if p.is_dir():
        raise LabelError(f"{what} file {p} is a folder")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LabelError(f"{what} file {p} is not UTF-8 text") from None
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def read_classes(path: str | os.PathLike) -> dict[str, int]:
    """Read a class list; returns ``{class_id: index}``. Raises :class:`LabelError`."""
    lines = _read_lines(path, "classes")
    if not lines:
        raise LabelError(f"classes file {path} is empty")
    out: dict[str, int] = {}
    indexed = None
    for n, line in enumerate(lines):
        fields = _split(line) if "\t" in line else [line.strip()]
        is_indexed = len(fields) >= 2 and fields[0].lstrip("-").isdigit()
        if indexed is None:
            indexed = is_indexed
        if is_indexed != indexed:
            raise LabelError(f"classes file {path}: line {n + 1} {line.strip()[:40]!r} mixes 'index<TAB>id' "
                             f"and plain 'id' rows")
        if indexed:
            idx, name = _int(fields[0], f"classes file {path}: line {n + 1}"), fields[1]
        else:
            idx, name = n, fields[0]
        if name in out:
            raise LabelError(f"classes file {path}: class {name!r} appears twice (line {n + 1})")
        out[name] = idx
    return out


def read_labels(path: str | os.PathLike, classes: dict[str, int] | None = None) -> dict[str, int]:
    """Read a labels file; returns ``{file_name: index}``. Raises :class:`LabelError`."""
    out: dict[str, int] = {}
    lines = _read_lines(path, "labels")
    for n, line in enumerate(lines):
        fields = _split(line)
        if len(fields) < 2:
            raise LabelError(f"labels file {path}: line {n + 1} {line.strip()[:60]!r} is not 'file<TAB or ,>label'")
        name, lab = fields[0], fields[1]
        if lab.lstrip("-").isdigit():
            idx = _int(lab, f"labels file {path}: line {n + 1}")
        elif classes is not None and lab in classes:
            idx = classes[lab]
        elif n == 0:
            continue  # header row
        else:
            hint = "" if classes is not None else " (pass --classes to map class ids)"
            raise LabelError(f"labels file {path}: line {n + 1}: label {lab!r} is not an integer class index "
                             f"or a known class id{hint}")
        out[name.replace("\\", "/")] = idx
    if not out:
        raise LabelError(f"labels file {path} holds no 'file,label' rows")
    return out
