"""Small shared helpers: atomic file output, hashing, logging of warnings."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raise :class:`OutputExistsError` if *path* exists and *overwrite* is false."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} already exists; pass --force (overwrite=True) to replace it")
    return p


def _temp_beside(target: Path, suffix: str = ".tmp", data: bytes | None = None) -> Path:
    """A new temporary file in *target*'s folder (same file system, so os.replace is atomic),
    with the mode open() would give it (mkstemp makes 0600); *data* is written and fsynced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    with os.fdopen(fd, "wb") as f:
        if data is not None:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False, data: bytes | None = None) -> Iterator[Path]:
    """Yield a temporary path beside *path* (holding *data*, if given); on success rename it onto *path*.

    On any exception the temporary file is removed and *path* is untouched, so a
    crash or Ctrl-C never leaves a half-written artifact.
    """
    target = check_writable(path, overwrite)
    tmp_path = _temp_beside(target, data=data)
    try:
        yield tmp_path
        if not overwrite and target.exists():
            raise OutputExistsError(f"{target} appeared while writing; not overwriting it")
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite, data=data):
        pass
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def atomic_write_all(files: list[tuple[Path, bytes]], overwrite: bool = False) -> None:
    """Write every file or none of them (artifacts that belong together, e.g. a cache and its sidecar).

    Each file goes to a temporary file beside its target first (the slow part); then the targets
    are put in place one by one. If that is interrupted (an error, Ctrl-C), the targets already
    replaced are put back as they were (removed, or their previous content restored), so a
    cache never ends up beside a sidecar or Q/DQ model of another run.
    """
    temps: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    placed: list[tuple[Path, Path | None]] = []   # (target, backup of its old content or None)
    try:
        for target, data in files:
            target = check_writable(target, overwrite)
            tmp = _temp_beside(target, data=data)
            temps.append(tmp)
            staged.append((target, tmp))
        for target, tmp in staged:
            backup = None
            if target.exists():
                check_writable(target, overwrite)   # appeared meanwhile: never replace it silently
                backup = _temp_beside(target, suffix=".old")
                temps.append(backup)
                os.replace(target, backup)
            placed.append((target, backup))
            os.replace(tmp, target)
    except BaseException:
        for target, backup in reversed(placed):
            if backup is not None and backup.exists():
                os.replace(backup, target)
            elif backup is None:
                target.unlink(missing_ok=True)
        raise
    finally:
        for t in temps:
            t.unlink(missing_ok=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_safe(obj):
    """*obj* with every non-finite float written as the string ``"nan"``, ``"inf"`` or ``"-inf"``
    (strict JSON has no such numbers), NumPy scalars as Python ones, tuples as lists and keys as
    strings, recursively."""
    import math

    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):   # NumPy scalars
        return json_safe(obj.item())
    return obj
