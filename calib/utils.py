"""Small shared helpers: output sets written as a unit, hashing, printable names.

Outputs
-------
Every file calib writes goes through :func:`atomic_write_all` (``atomic_write_bytes`` /
``atomic_write_text`` / ``atomic_path`` are one-file sets): the files of one set (a cache, its
sidecar, the Q/DQ model and the summary; a report and its plots; an engine and its sidecar) all lie
in one folder DIR and replace their previous versions as a unit, or not at all, also when the
process is killed or another run writes into DIR at the same time. POSIX renames one file
atomically, not several, so the unit is made of four parts:

1. **Lock.** The write phase (staging and commit) holds an exclusive ``fcntl.flock`` on
   ``DIR/.calib.lock``, which holds the writer's pid. The kernel drops a flock when its process
   dies, so a killed writer never leaves a stale lock. A second writer waits up to
   ``LOCK_WAIT_S`` seconds, then stops with :class:`~calib.errors.OutputLockedError` naming the
   holder's pid; two ``--force`` runs into one folder therefore write one after the other and the
   folder holds the complete set of the later one. The lock file is removed on release; a waiter
   that locked a removed file (its inode is no longer the one at the path) tries again.
2. **Staging.** Every file is written and fsynced into a fresh ``DIR/.calib-stage-<pid>-<random>/``
   (same file system as the targets, so the renames below are atomic). A full disk, a file size
   limit or a read-only file system fails here, before any target changes, and becomes one
   :class:`~calib.errors.OutputError` naming the target and the reason; the stage is removed.
3. **Commit with a rollback journal** (as SQLite's rollback journal). Each existing target is
   hard-linked into the stage's ``old/`` (no copy; a copy where the file system has no hard links),
   then ``journal.json`` (targets, whether each existed, the inode of each new file) is put in
   place atomically and fsynced. Then each new file is renamed onto its target in a fixed order, so
   a target is always either its complete old or its complete new version, never partial or
   absent. Removing the journal is the commit point; the stage is then deleted. SIGINT and SIGTERM
   are deferred during the commit: one that arrives rolls the commit back (every target restored
   from ``old/``, new ones removed), and then takes effect, so Ctrl-C or ``kill`` leaves the
   previous set (the CLI then exits 130 or 143 with one ``error:`` line).
4. **Recovery.** SIGKILL (or a power cut) cannot be deferred: it can leave a mixed set and a stage
   holding its journal. Whoever next holds the lock on DIR rolls it back to the complete previous
   set: every calib write into DIR does, at its check before any work (:func:`check_outputs`) and at
   its write phase, and :func:`recover_outputs` can be called directly. Stages without a journal
   (killed while staging) are deleted. Only names calib makes are removed (``.calib-stage-*``,
   ``.calib-probe-*``, and ``.<target>.XXXXXXXX.tmp`` / ``.old`` that earlier calib versions left
   beside a target being written), and only while holding the lock, so a live writer's files are
   never touched. Until then, readers do not take a mixed set for a set: the sidecar records the
   cache's sha256, and :func:`calib.cache.check_provenance` refuses a cache that does not match it.

Why not one atomic switch (a directory renamed into place, or a symlink per set): the outputs stay
plain files with the names TensorRT's tools and users expect (``m.cache`` beside other models'
files in one folder), and copying the folder copies files, not links.

The check before work (:func:`check_outputs`, :func:`check_output_dir`) refuses an output folder
that is a file, lies under a file, or cannot be written (read-only, no permission), by creating
and removing an unnamed file in it (or in its nearest existing parent when it is still to be
created), so a long computation never ends in an unwritable folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputError, OutputExistsError, OutputLockedError

try:  # POSIX; elsewhere the lock is a no-op (staging and the journal still apply)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_NAME = ".calib.lock"
STAGE_PREFIX = ".calib-stage-"
PROBE_PREFIX = ".calib-probe-"
JOURNAL_NAME = "journal.json"
JOURNAL_FORMAT = "calib-output-journal"
LOCK_WAIT_S = 30.0
# Test hook, used only by the tests: "N:SIGNAL" sends SIGNAL (KILL, TERM, INT) to this process
# right after the N-th rename of a commit (N = 0: when every file is staged, before the commit);
# "N:sleep=S" sleeps S seconds there (holding the lock).
TEST_HOOK_ENV = "CALIB_TEST_HOOK_AFTER_RENAME"

# every set this process committed (the CLI says whether an interrupted run wrote anything)
COMMITTED: list[Path] = []


def _reason(exc: OSError) -> str:
    """The human part of an OSError (``No space left on device``)."""
    return exc.strerror or str(exc) or type(exc).__name__


# --- checks before any work ---------------------------------------------------
def check_output_dir(folder: str | os.PathLike) -> Path:
    """Raise :class:`OutputError` unless *folder* is a writable folder or can be created as one.

    A missing folder is not created here (a run that fails before writing leaves nothing); its
    nearest existing parent must be a writable folder. Writability is tried, not guessed from
    permission bits (which say nothing for root or a read-only mount). An interrupted write into
    the folder is rolled back (:func:`recover_outputs`).
    """
    d = Path(folder)
    probe = d
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(d, "not a folder" if probe == d else f"{probe} is not a folder")
    try:
        with tempfile.TemporaryFile(prefix=PROBE_PREFIX, dir=probe):
            pass
    except OSError as exc:
        raise OutputError(d, _reason(exc) if probe == d else f"cannot create it in {probe}: {_reason(exc)}") from None
    if probe == d:
        recover_outputs(d)
    return d


def _check_target(p: Path, overwrite: bool, option: str) -> Path:
    if p.is_dir() and not p.is_symlink():
        raise OutputError(p, "a folder is in the way")
    if os.path.lexists(p) and not overwrite:
        raise OutputExistsError(p, option)
    return p


def check_writable(path: str | os.PathLike, overwrite: bool = False, *, option: str = "overwrite") -> Path:
    """The path of an output file, checked before any work: its folder is (or can become) a
    writable folder, and it does not exist unless *overwrite* (else :class:`OutputExistsError`,
    whose message names *option*, the caller's keyword: ``force`` or ``overwrite``)."""
    p = Path(path)
    check_output_dir(p.parent)
    return _check_target(p, overwrite, option)


def check_outputs(paths: Iterable[str | os.PathLike], overwrite: bool = False, *,
                  option: str = "overwrite") -> list[Path]:
    """:func:`check_writable` for several outputs, each folder checked once; all are checked before
    any is written."""
    out = [Path(p) for p in paths]
    for d in dict.fromkeys(p.parent for p in out):
        check_output_dir(d)
    return [_check_target(p, overwrite, option) for p in out]


# --- the folder lock ------------------------------------------------------------
class _Lock:
    """The exclusive lock of an output folder (see the module docstring, part 1)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, wait: float) -> bool:
        """Lock, waiting up to *wait* seconds; False if another process holds it (wait 0),
        :class:`OutputLockedError` if it still does after a positive *wait*."""
        if fcntl is None:  # pragma: no cover
            return True
        deadline = time.monotonic() + wait
        delay = 0.02
        while True:
            try:   # never through a link planted at the lock's name (it is truncated below)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as exc:
                raise OutputError(self.path.parent, f"{LOCK_NAME}: {_reason(exc)}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OutputError(self.path.parent, f"{LOCK_NAME} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    if wait <= 0:
                        return False
                    raise OutputLockedError(self.path.parent, holder) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:   # the holder removed it while we waited: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return True

    @staticmethod
    def _holder(fd: int) -> int | None:
        try:
            return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)      # while still holding it: see acquire()
        os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def _locked(folder: Path, wait: float | None = None) -> Iterator[bool]:
    lock = _Lock(folder)
    got = lock.acquire(LOCK_WAIT_S if wait is None else wait)
    try:
        yield got
    finally:
        lock.release()


# --- recovery ---------------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rollback(folder: Path, stage: Path, entries: list[dict]) -> list[str]:
    """Put every journalled target back as it was before the commit began (idempotent); the names
    of those that had changed."""
    changed = []
    for e in reversed(entries):
        target, old = folder / e["name"], stage / "old" / e["name"]
        if e["existed"]:
            if os.path.lexists(old):
                if not (os.path.lexists(target) and os.path.samestat(os.lstat(old), os.lstat(target))):
                    changed.append(e["name"])
                os.replace(old, target)
        else:
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(target).st_ino == e["ino"]:   # ours, not a file someone made since
                    os.unlink(target)
                    changed.append(e["name"])
    _fsync_dir(folder)
    return changed[::-1]


def _journal_entries(path: Path) -> list[dict]:
    """The targets a journal lists, checked: plain file names (no path), so that a journal planted in
    the folder cannot make a rollback touch anything outside it. ValueError if malformed."""
    rec = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rec, dict) or rec.get("format") != JOURNAL_FORMAT or not isinstance(rec.get("targets"), list):
        raise ValueError(f"{path} is not a calib output journal")
    for e in rec["targets"]:
        name = e.get("name") if isinstance(e, dict) else None
        if not (isinstance(name, str) and name == os.path.basename(name) and name not in ("", ".", "..")
                and isinstance(e.get("existed"), bool) and isinstance(e.get("ino"), int)):
            raise ValueError(f"{path}: bad entry {e!r}")
    return rec["targets"]


def _sweep(folder: Path, targets: Iterable[str] = ()) -> list[str]:
    """With the lock held: roll back interrupted commits and remove calib's leftovers in *folder*;
    the names of the targets restored."""
    restored: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return restored
    legacy = re.compile("|".join(rf"\.{re.escape(t)}\.[a-z0-9_]{{8}}\.(?:tmp|old)" for t in targets) or r"(?!)")
    for name in names:
        p = folder / name
        if name.startswith(STAGE_PREFIX) and p.is_dir() and not p.is_symlink():
            try:
                entries = _journal_entries(p / JOURNAL_NAME)
            except FileNotFoundError:
                entries = None
            except (OSError, ValueError):   # not a journal calib wrote: left for a person to look at
                continue
            if entries is not None:
                restored += _rollback(folder, p, entries)
            shutil.rmtree(p, ignore_errors=True)
        elif (name.startswith(PROBE_PREFIX) or legacy.fullmatch(name)) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
    return restored


def recover_outputs(folder: str | os.PathLike) -> list[str]:
    """Roll back a write into *folder* that was killed between its renames, and remove calib's
    leftovers of crashed runs, unless a live writer holds the folder's lock (then nothing is done).
    Returns the names of the files restored to their previous version (a warning says so)."""
    d = Path(folder)
    if not d.is_dir() or not any(n.startswith((STAGE_PREFIX, PROBE_PREFIX)) for n in os.listdir(d)):
        return []
    with _locked(d, wait=0) as got:
        restored = _sweep(d) if got else []
    if restored:
        warnings.warn(f"{d}: an earlier write was interrupted; restored the previous version of "
                      f"{', '.join(restored)}", stacklevel=2)
    return restored


# --- signals during the commit ------------------------------------------------------
@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """SIGINT and SIGTERM are recorded, not acted on, inside the block (main thread only; elsewhere
    signals are not delivered to this thread anyway); the list holds those that arrived."""
    got: list[int] = []
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(s) in (signal.SIG_IGN, None):
                continue   # ignored (or not set from Python): left as it is
            with contextlib.suppress(ValueError, OSError):
                saved[s] = signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _test_hook(n: int) -> None:
    spec = os.environ.get(TEST_HOOK_ENV)
    if not spec:
        return
    at, _, action = spec.partition(":")
    if at.strip() != str(n):
        return
    if action.startswith("sleep="):
        time.sleep(float(action[len("sleep="):]))
    else:
        os.kill(os.getpid(), getattr(signal, "SIG" + action.upper().removeprefix("SIG")))


# --- writing ----------------------------------------------------------------------------
class _Stage:
    """A fresh staging folder inside the output folder (module docstring, parts 2 and 3)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.dir = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=folder))
        (self.dir / "new").mkdir()
        (self.dir / "old").mkdir()

    def path(self, name: str) -> Path:
        return self.dir / "new" / name

    def put(self, name: str, data: bytes) -> None:
        with open(self.path(name), "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def commit(self, names: list[str], overwrite: bool, option: str) -> list[int]:
        """Place every staged file on its target, or none (part 3 of the module docstring). Returns
        the signals that arrived meanwhile (the commit was then rolled back)."""
        folder = self.folder
        _fsync_dir(self.dir / "new")
        entries = []
        for name in names:
            target, old = folder / name, self.dir / "old" / name
            existed = os.path.lexists(target)
            if existed:
                _check_target(target, overwrite, option)   # appeared meanwhile: never replaced silently
                try:
                    os.link(target, old, follow_symlinks=False)
                except OSError:   # no hard links on this file system: a copy
                    shutil.copy2(target, old, follow_symlinks=False)
            entries.append({"name": name, "existed": existed, "ino": os.lstat(self.path(name)).st_ino})
        _fsync_dir(self.dir / "old")
        journal, tmp = self.dir / JOURNAL_NAME, self.dir / (JOURNAL_NAME + ".tmp")
        tmp.write_text(json.dumps({"format": JOURNAL_FORMAT, "version": 1, "pid": os.getpid(),
                                   "targets": entries}, ensure_ascii=True), encoding="utf-8")
        with _signals_deferred() as got:
            os.replace(tmp, journal)
            _fsync_dir(self.dir)
            try:
                for i, e in enumerate(entries, 1):
                    os.replace(self.path(e["name"]), folder / e["name"])
                    _test_hook(i)
                _fsync_dir(folder)
            except BaseException:
                _rollback(folder, self.dir, entries)
                os.unlink(journal)
                raise
            if got:
                _rollback(folder, self.dir, entries)
            os.unlink(journal)   # the commit point (or the end of the rollback)
            return list(got)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _one_folder(targets: list[Path]) -> Path:
    folders = {t.parent for t in targets}
    if len(folders) != 1:
        raise ValueError(f"an output set lies in one folder, got {sorted(map(str, folders))}")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"an output set names a file twice: {names}")
    return folders.pop()


@contextlib.contextmanager
def _writing(targets: list[Path], overwrite: bool, option: str) -> Iterator[_Stage]:
    """Lock the targets' folder, clean it up, yield a stage to put the files in, and commit them
    when the block ends without an exception. An OSError becomes :class:`OutputError` naming the
    file it concerns (the exception's ``calib_target``, else the folder). A folder created here and
    left empty by a failure is removed again."""
    folder = _one_folder(targets)
    created = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]   # leaf first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(folder, _reason(exc)) from None
    try:
        with _locked(folder):
            restored = _sweep(folder, [t.name for t in targets])
            if restored:
                warnings.warn(f"{folder}: an earlier write was interrupted; restored the previous version of "
                              f"{', '.join(restored)}", stacklevel=3)
            for t in targets:
                _check_target(t, overwrite, option)   # again: nothing may have appeared meanwhile
            try:
                stage = _Stage(folder)
            except OSError as exc:
                raise OutputError(folder, _reason(exc)) from None
            try:
                yield stage
                _test_hook(0)
                signals = stage.commit([t.name for t in targets], overwrite, option)
            except OSError as exc:
                raise OutputError(getattr(exc, "calib_target", folder), _reason(exc)) from None
            finally:
                stage.discard()
        if signals:   # rolled back, the lock released: the signal takes effect now
            signal.raise_signal(signals[0])
            raise OutputError(folder, f"interrupted by signal {signals[0]}; the previous files were kept")
    except BaseException:
        with contextlib.suppress(OSError):
            for p in created:
                p.rmdir()
        raise
    COMMITTED.append(folder)


def atomic_write_all(files: list[tuple[str | os.PathLike, bytes]], overwrite: bool = False, *,
                     option: str = "overwrite") -> list[Path]:
    """Write every file of *files* (``(path, bytes)``, all in one folder) or none of them, as a unit
    (see the module docstring). Existing files are refused unless *overwrite*
    (:class:`OutputExistsError` naming *option*, the caller's keyword); an OSError (full disk,
    read-only file system) becomes :class:`OutputError` naming the file and the reason."""
    pairs = [(Path(p), bytes(data)) for p, data in files]
    targets = [p for p, _ in pairs]
    with _writing(targets, overwrite, option) as stage:
        for target, data in pairs:
            try:
                stage.put(target.name, data)
            except OSError as exc:
                exc.calib_target = target
                raise
    return targets


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False, data: bytes | None = None, *,
                option: str = "overwrite") -> Iterator[Path]:
    """Yield a temporary path (holding *data*, if given) for the caller to write *path*'s content
    to; when the block ends, it replaces *path* as a one-file set (:func:`atomic_write_all`); on an
    exception *path* is untouched and nothing is left behind."""
    target = Path(path)
    with _writing([target], overwrite, option) as stage:
        try:
            stage.put(target.name, data or b"")
            yield stage.path(target.name)
        except OSError as exc:
            exc.calib_target = target
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False, *,
                       option: str = "overwrite") -> Path:
    return atomic_write_all([(path, data)], overwrite, option=option)[0]


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = False, *,
                      option: str = "overwrite") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite, option=option)


# --- text shown to people ------------------------------------------------------------------
def printable(text: str) -> str:
    """*text* with every character a terminal would act on (control characters such as ESC,
    newlines, bidirectional overrides, lone surrogates) written as its Python escape, so a name
    read from a file can neither move the cursor, recolour the screen nor break a line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


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


__all__ = ["LOCK_NAME", "LOCK_WAIT_S", "STAGE_PREFIX", "TEST_HOOK_ENV", "atomic_path", "atomic_write_all",
           "atomic_write_bytes", "atomic_write_text", "check_output_dir", "check_outputs", "check_writable",
           "json_safe", "printable", "recover_outputs", "sha256_bytes", "sha256_file"]
