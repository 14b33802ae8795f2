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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside *path*; on success rename it onto *path*.

    On any exception the temporary file is removed and *path* is untouched, so a
    crash or Ctrl-C never leaves a half-written artifact.
    """
    target = check_writable(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not overwrite and target.exists():
            raise OutputExistsError(f"{target} appeared while writing; not overwriting it")
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
