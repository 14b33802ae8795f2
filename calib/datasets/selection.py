"""Which samples a dataset keeps: the split and the seeded sample choice, on arrays of row indices.

The rules (stated in :mod:`calib.datasets.dataset`) hash sample ids. Here they run on NumPy arrays
of row indices in chunks of at most :data:`CHUNK` rows, so that no step holds one Python object
per row of a source: a file that claims 10^9 rows costs what the samples used cost.

- split: a sample is in ``eval`` iff ``int(sha256("calib-split\\0" + id)[:16], 16) / 2**64 <
  eval_fraction``; computed as a comparison of the digest's first 8 bytes (big-endian uint64)
  with the integer threshold that gives the same answer (:func:`split_threshold`).
- limit ``n`` with seed ``s`` on at most :data:`EXACT_MAX` rows: the ``n`` rows whose
  ``sha256(f"{s}\\0{id}")`` is smallest (:func:`smallest`; the first 8 bytes order them, the
  full digest breaks ties on them, so the choice is exactly that of a sort by digest).
- limit on a selection of more rows (only a source of more than :data:`EXACT_MAX` rows, before
  any limit, has one): the first ``n`` rows that pass the selection's filters in the order of a
  seeded permutation of the source's rows (:class:`Permutation`), so finding them costs about
  ``n`` hashes instead of one per row.

Ids are hashed as UTF-8 with ``surrogateescape``: the bytes of the file name itself for a name
that is not valid UTF-8, the plain UTF-8 encoding otherwise.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterator, Sequence

import numpy as np

CHUNK = 1 << 16          # rows hashed per step
EXACT_MAX = 1 << 22      # selections of up to this many rows use the exact smallest-digest rule

SPLIT_PREFIX = b"calib-split\0"


def id_bytes(sample_id: str) -> bytes:
    """The bytes of a sample id as hashed and written (any file name the OS allows)."""
    return sample_id.encode("utf-8", "surrogateescape")


def prefix_keys(prefix: bytes, ids: Sequence[str]) -> np.ndarray:
    """uint64 of the first 8 bytes (big-endian) of ``sha256(prefix + id)`` for each id."""
    sha = hashlib.sha256
    buf = b"".join([sha(prefix + s.encode("utf-8", "surrogateescape")).digest()[:8] for s in ids])
    return np.frombuffer(buf, dtype=">u8").astype(np.uint64)


def split_threshold(eval_fraction: float) -> int:
    """The smallest integer ``t`` with ``t / 2**64 >= eval_fraction`` (Python's division), so that
    ``key < t`` iff ``key / 2**64 < eval_fraction``, exactly as the documented rule reads."""
    lo, hi = 0, 1 << 64           # the predicate key / 2**64 < f is monotone in key
    while lo < hi:
        mid = (lo + hi) // 2
        if mid / 2.0 ** 64 < eval_fraction:
            lo = mid + 1
        else:
            hi = mid
    return lo


def in_split(ids: Sequence[str], part: str, eval_fraction: float) -> np.ndarray:
    """Boolean mask: which of *ids* belong to split *part* (``"calib"`` or ``"eval"``)."""
    return keys_in_split(prefix_keys(SPLIT_PREFIX, ids), part, eval_fraction)


def keys_in_split(keys: np.ndarray, part: str, eval_fraction: float) -> np.ndarray:
    """Boolean mask: which split keys (:func:`prefix_keys` with ``SPLIT_PREFIX``) fall in *part*."""
    t = split_threshold(eval_fraction)
    is_eval = keys < np.uint64(t) if t < (1 << 64) else np.ones(len(keys), dtype=bool)
    return is_eval if part == "eval" else ~is_eval


def smallest(idx: np.ndarray, n: int, seed: int, ids_at: Callable[[np.ndarray], list]) -> np.ndarray:
    """The rows of sorted *idx* whose ``sha256(f"{seed}\\0{id}")`` are the *n* smallest, sorted."""
    if n >= len(idx):
        return idx
    if n <= 0:
        return idx[:0]
    prefix = f"{seed}\0".encode("utf-8")
    keys = np.concatenate([prefix_keys(prefix, ids_at(idx[k:k + CHUNK])) for k in range(0, len(idx), CHUNK)])
    kth = np.partition(keys, n - 1)[n - 1]
    keep = keys < kth
    tied = np.flatnonzero(keys == kth)
    need = n - int(keep.sum())
    if need < len(tied):      # equal first 8 bytes: the full digest decides, as a sort would
        full = [hashlib.sha256(prefix + id_bytes(s)).hexdigest() for s in ids_at(idx[tied])]
        tied = tied[np.argsort(np.asarray(full), kind="stable")[:need]]
    keep[tied] = True
    return idx[keep]


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64), wrapping arithmetic."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class Permutation:
    """A seeded bijection of ``[0, n)``: a balanced 4-round Feistel network on the smallest
    even-width power of two holding ``n``, round keys from ``sha256("calib-perm\\0<seed>\\0<round>")``
    and splitmix64 as round function, cycle-walked into ``[0, n)`` (fewer than 4 steps expected)."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int):
        self.n = int(n)
        bits = max(2, (max(self.n - 1, 1).bit_length() + 1) // 2 * 2)
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        self.keys = [np.uint64(int.from_bytes(hashlib.sha256(f"calib-perm\0{seed}\0{r}".encode()).digest()[:8],
                                              "big")) for r in range(self.ROUNDS)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << self.half) | right

    def __call__(self, j: np.ndarray) -> np.ndarray:
        """The rows at positions *j* (int array in ``[0, n)``) of the permuted order."""
        x = self._encrypt(np.asarray(j, dtype=np.uint64))
        out = x >= np.uint64(self.n)
        while out.any():
            x[out] = self._encrypt(x[out])
            out = x >= np.uint64(self.n)
        return x.astype(np.int64)


def first_permuted(n_rows: int, n: int, seed: int, keep: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The first *n* rows of ``Permutation(n_rows, seed)`` order for which *keep(rows)* (a boolean
    mask) holds, sorted; fewer if fewer pass."""
    perm = Permutation(n_rows, seed)
    got: list[np.ndarray] = []
    count, start, step = 0, 0, max(64, 2 * n)
    while count < n and start < n_rows:
        j = np.arange(start, min(n_rows, start + step), dtype=np.uint64)
        rows = perm(j)
        rows = rows[keep(rows)][:n - count]
        got.append(rows)
        count += len(rows)
        start += len(j)
        step = min(CHUNK, 2 * step)
    return np.sort(np.concatenate(got)) if got else np.zeros(0, dtype=np.int64)


def chunks(n_rows: int, keep: Callable[[np.ndarray], np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """All rows ``0 .. n_rows - 1`` in order, in chunks, filtered by *keep* (a boolean mask)."""
    for start in range(0, n_rows, CHUNK):
        rows = np.arange(start, min(n_rows, start + CHUNK), dtype=np.int64)
        if keep is not None:
            rows = rows[keep(rows)]
        if len(rows):
            yield rows
