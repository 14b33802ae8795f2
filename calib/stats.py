"""Streaming per-tensor statistics: :class:`TensorObserver`.

An observer only *collects* (like PyTorch's observers); choosing a range from what it
collected is :mod:`calib.algorithms`' job.

What one observer keeps, whatever the number of samples:

* running ``min``, ``max``, ``absmax`` and ``count`` of the finite values seen;
* ``nan_count`` / ``inf_count``: non-finite values are counted, left out of everything
  else, and never raise (:mod:`calib.collect` reports them);
* a histogram of ``|x|`` with ``bins`` (default 16384 = 2048 * 8) equal bins of width
  ``2**exp``.

Histogram scheme (order- and batch-size independent, exact)
----------------------------------------------------------
The bin width is always a power of two, ``w = 2**exp``, so ``|x| / w`` is computed as
``|x| * 2**-exp`` in float32, which is *exact* (a power-of-two scaling of a float32 whose
result is a normal number; results below 2**-126 are < 1 and land in bin 0 whatever their
rounding). ``exp`` starts at ``EXP_MIN`` (width 2**-100) and only grows: when a batch holds
a value at or beyond ``bins * w`` the width doubles ``d`` times, merging each run of ``2**d``
adjacent bins into one. Merging is exact because the boundaries nest:
``floor(floor(y) / 2**d) == floor(y / 2**d)``. Hence after any sequence of updates and
merges every value sits in bin ``floor(|x| / 2**exp_final)`` with
``exp_final = max(EXP_MIN, e(absmax))``, where ``e(a)`` is the smallest exponent with
``a < bins * 2**e``; this depends only on the multiset of values, not on their order, the
batch sizes or how the work was split between observers (:meth:`TensorObserver.merge`).
Consequently the top bin in use is always in the upper half, ``[bins/2, bins)``.

:meth:`TensorObserver.histogram` coarsens the fine bins by an exact power-of-two factor to
the 2048 bins TensorRT's entropy calibration works on: the result has the smallest
power-of-two bin width whose 2048 bins cover the max (so the max falls in bins 1024..2047).

Cost per update of ``n`` values (one core of this project's 2-core machine): a min and a max
pass (~0.2 ns/value), then the binning. With NumPy: ``abs``, a scaling multiply, a float->int
conversion and ``np.bincount`` (~1.9 ns/value in total, bincount alone ~1.3, done in chunks that
stay in cache). When `numba <https://numba.pydata.org>`_ is importable (a dependency; the NumPy
path stays for when it is missing or fails), updates of at least ``_NUMBA_MIN`` values bin in one compiled pass instead
(``|x| * 2**-exp`` in float32, truncated, counted into four interleaved int32 sub-histograms;
~0.65 ns/value; it releases the GIL, so worker threads bin in parallel). Both give the same
counts: the index of every value is the same float32 product truncated to an integer, and
counting is exact. The kernel is compiled on first use (about 0.4 s, cached on disk by numba
afterwards); ``CALIB_NUMBA=0`` turns it off. ``O(bins)`` for adding the counts. Memory: ``bins``
int64 counts (128 KiB) per tensor plus one chunk of scratch space, independent of the number of
samples. float16 input is widened exactly; float64 input is rounded to float32 first (values
beyond float32's range then count as Inf).

:meth:`TensorObserver.add_range` adds a batch known only by its min, max and size (all values
finite), exactly as :meth:`~TensorObserver.update` would for a range-only observer: range-only
collection uses it for the Relu / Clip outputs whose ranges follow from their inputs'
(:func:`calib.collect.plan_ranges`).
"""
from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np

DEFAULT_BINS = 2048 * 8
EXP_MIN = -100            # smallest bin width, 2**-100 (keeps 2**-exp a normal float32)
TRT_BINS = 2048           # bins of TensorRT's entropy histogram
_CHUNK = 1 << 18          # values per histogram chunk (scratch stays in L2 cache)
_NUMBA_MIN = 1 << 15      # updates this large use the numba kernel when available
_NUMBA_SLICE = 1 << 30    # values per kernel call: int32 sub-histogram counts cannot overflow

_kernel_lock = threading.Lock()
_kernel: Any = None       # None: not tried yet; False: unavailable or turned off


def _bin_abs(a, scale, sub):    # pragma: no cover - compiled by numba (see _binning_kernel)
    """Count ``int32(|a[i]| * scale)`` into ``sub[i % 4]`` (the caller guarantees every index < bins).

    Four interleaved sub-histograms: runs of equal indices (zeros, saturated ReLU6 values) do
    not wait on each other's increments.
    """
    n = a.size
    n4 = n - n % 4
    for i in range(0, n4, 4):
        sub[0, np.int32(abs(a[i]) * scale)] += 1
        sub[1, np.int32(abs(a[i + 1]) * scale)] += 1
        sub[2, np.int32(abs(a[i + 2]) * scale)] += 1
        sub[3, np.int32(abs(a[i + 3]) * scale)] += 1
    for i in range(n4, n):
        sub[0, np.int32(abs(a[i]) * scale)] += 1


def _binning_kernel():
    """The compiled :func:`_bin_abs`, or None (numba missing, failing, or ``CALIB_NUMBA=0``)."""
    global _kernel
    if _kernel is None:
        with _kernel_lock:
            if _kernel is None:
                _kernel = _compile_kernel()
    return _kernel or None


def _compile_kernel():
    if os.environ.get("CALIB_NUMBA", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import numba
    except Exception:
        return False
    sig = "void(float32[::1], float32, int32[:, ::1])"
    for cache in (True, False):         # an unwritable cache location must not cost the kernel
        try:
            return numba.njit(sig, nogil=True, boundscheck=False, cache=cache)(_bin_abs)
        except Exception:
            continue
    return False


def _needed_exp(absmax: float, log2_bins: int) -> int:
    """Smallest exponent e >= EXP_MIN with absmax < 2**log2_bins * 2**e."""
    if absmax <= 0.0:
        return EXP_MIN
    _, p = math.frexp(absmax)          # absmax = m * 2**p, 0.5 <= m < 1  ->  2**(p-1) <= absmax < 2**p
    return max(EXP_MIN, p - log2_bins)


def _coarsen(hist: np.ndarray, d: int) -> np.ndarray:
    """Merge runs of 2**d adjacent bins (exact), keeping the number of bins."""
    if d <= 0:
        return hist
    n = hist.size
    out = np.zeros_like(hist)
    if d >= int(math.log2(n)):
        out[0] = hist.sum()
        return out
    f = 1 << d
    merged = hist.reshape(-1, f).sum(axis=1)
    out[: merged.size] = merged
    return out


class TensorObserver:
    """Running range and |x| histogram of one tensor; see the module docstring."""

    __slots__ = ("name", "bins", "_log2", "hist", "exp", "count", "nan_count", "inf_count", "has_histogram",
                 "min", "max", "_scratch")

    def __init__(self, name: str | None = None, bins: int = DEFAULT_BINS, histogram: bool = True):
        if bins < TRT_BINS or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= {TRT_BINS}, got {bins}")
        self.name = name
        self.bins = int(bins)
        self._log2 = int(math.log2(bins))
        self.hist = np.zeros(self.bins, dtype=np.int64)
        self.exp = EXP_MIN
        self.count = 0
        self.nan_count = 0
        self.inf_count = 0
        self.min = math.inf
        self.max = -math.inf
        self._scratch = None
        # histogram=False: a range-only observer (min, max, counts) for max calibration, which
        # needs no histogram; it skips the binning, the expensive part of update()
        self.has_histogram = bool(histogram)

    # -- properties ---------------------------------------------------------
    @property
    def absmax(self) -> float:
        """max |x| over the finite values seen (0.0 before any)."""
        if self.count == 0:
            return 0.0
        return max(-self.min, self.max)

    @property
    def width(self) -> float:
        """Width of one fine bin (a power of two)."""
        return math.ldexp(1.0, self.exp)

    @property
    def nonfinite(self) -> int:
        return self.nan_count + self.inf_count

    def __repr__(self) -> str:
        return (f"TensorObserver({self.name!r}, count={self.count}, min={self.min:g}, max={self.max:g}, "
                f"width=2**{self.exp}, nan={self.nan_count}, inf={self.inf_count})")

    # -- updating -----------------------------------------------------------
    def _grow(self, new_exp: int) -> None:
        if new_exp > self.exp:
            self.hist = _coarsen(self.hist, new_exp - self.exp)
            self.exp = new_exp

    def update(self, x) -> "TensorObserver":
        """Add every value of *x* (any shape; float, int or bool) to the statistics."""
        a = np.asarray(x)
        if a.dtype != np.float32:
            if a.dtype.kind not in "fiub":
                raise TypeError(f"cannot observe values of dtype {a.dtype}")
            with np.errstate(over="ignore", invalid="ignore"):
                a = a.astype(np.float32)
        a = a.reshape(-1)
        if a.size == 0:
            return self
        mn = a.min()
        mx = a.max()
        if not (np.isfinite(mn) and np.isfinite(mx)):
            finite = np.isfinite(a)
            n_fin = int(np.count_nonzero(finite))
            n_nan = int(np.count_nonzero(np.isnan(a)))
            self.nan_count += n_nan
            self.inf_count += a.size - n_fin - n_nan
            if n_fin == 0:
                return self
            a = a[finite]
            mn = a.min()
            mx = a.max()
        mn = float(mn)
        mx = float(mx)
        self.count += a.size
        self.min = min(self.min, mn)
        self.max = max(self.max, mx)
        if not self.has_histogram:
            return self
        self._grow(_needed_exp(max(-mn, mx), self._log2))
        scale = np.float32(math.ldexp(1.0, -self.exp))
        n = a.size
        if n >= _NUMBA_MIN:
            kernel = _binning_kernel()
            if kernel is not None:
                a = np.ascontiguousarray(a)
                sub = np.zeros((4, self.bins), dtype=np.int32)
                acc = np.zeros(self.bins, dtype=np.int64)
                for s in range(0, n, _NUMBA_SLICE):
                    kernel(a[s:s + _NUMBA_SLICE], scale, sub)
                    acc += sub.sum(axis=0, dtype=np.int64)
                    sub[...] = 0
                self.hist += acc
                return self
        if n <= _CHUNK:
            t = np.abs(a)
            t *= scale
            self.hist += np.bincount(t.astype(np.intp), minlength=self.bins)
            return self
        if self._scratch is None:
            self._scratch = (np.empty(_CHUNK, np.float32), np.empty(_CHUNK, np.intp))
        f32, idx = self._scratch
        acc = np.zeros(self.bins, dtype=np.int64)
        for s in range(0, n, _CHUNK):
            part = a[s:s + _CHUNK]
            k = part.size
            t = np.abs(part, out=f32[:k])
            t *= scale
            ii = idx[:k]
            np.copyto(ii, t, casting="unsafe")      # truncation == floor for values >= 0
            acc += np.bincount(ii, minlength=self.bins)
        self.hist += acc
        return self

    def add_range(self, mn: float, mx: float, n: int) -> "TensorObserver":
        """Add *n* finite values whose minimum is *mn* and maximum *mx* (range-only observers).

        Exactly what ``update(x)`` does for such an ``x`` when the observer keeps no histogram:
        the range widens, ``count`` grows by *n*. *mn* and *mx* must be finite (a batch holding
        NaN or Inf must go through :meth:`update`, which counts them).
        """
        if self.has_histogram:
            raise ValueError("add_range needs a range-only observer (histogram=False): the histogram needs the values")
        n = int(n)
        if n < 0:
            raise ValueError(f"cannot add a negative number of values ({n})")
        if n == 0:
            return self
        mn, mx = float(mn), float(mx)
        if not (math.isfinite(mn) and math.isfinite(mx)) or mn > mx:
            raise ValueError(f"add_range needs a finite range with min <= max, got [{mn}, {mx}]")
        self.count += n
        self.min = min(self.min, mn)
        self.max = max(self.max, mx)
        return self

    def add_zeros(self, n: int) -> "TensorObserver":
        """Add *n* values equal to 0.0, exactly as ``update(np.zeros(n, np.float32))`` would.

        Zeros land in fine bin 0 whatever the width and never change the width; the range
        widens to include 0. Used to derive the observer of a zero-padded tensor from its input's.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"cannot add a negative number of zeros ({n})")
        if n == 0:
            return self
        self.count += n
        self.min = min(self.min, 0.0)
        self.max = max(self.max, 0.0)
        if self.has_histogram:
            self.hist[0] += n
        return self

    def renamed(self, name: str | None) -> "TensorObserver":
        """An exact, independent copy of this observer under another name."""
        st = self.state()
        st["name"] = name
        return TensorObserver.from_state(st)

    def merge(self, other: "TensorObserver") -> "TensorObserver":
        """Add *other*'s statistics into this observer (exactly as if its data were updated here)."""
        if not isinstance(other, TensorObserver):
            raise TypeError(f"cannot merge {type(other).__name__} into a TensorObserver")
        if other.bins != self.bins:
            raise ValueError(f"cannot merge observers with {other.bins} and {self.bins} bins")
        if self.has_histogram and other.has_histogram:
            e = max(self.exp, other.exp)
            self._grow(e)
            self.hist = self.hist + _coarsen(other.hist, e - other.exp)
        elif self.has_histogram:   # merging a range-only observer leaves ranges only
            self.has_histogram = False
            self.hist = np.zeros(self.bins, dtype=np.int64)
            self.exp = EXP_MIN
        self.count += other.count
        self.nan_count += other.nan_count
        self.inf_count += other.inf_count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def copy(self) -> "TensorObserver":
        o = TensorObserver(self.name, self.bins, self.has_histogram)
        o.merge(self)
        return o

    # -- results ------------------------------------------------------------
    def histogram(self, nbins: int = TRT_BINS) -> tuple[np.ndarray, float]:
        """``(counts, width)``: the |x| histogram coarsened exactly to *nbins* bins starting at 0.

        With the default 2048 this is TensorRT's entropy histogram: the smallest power-of-two
        bin width whose 2048 bins hold the max. *nbins* must be a power of two <= ``bins``.
        """
        if not self.has_histogram:
            from .errors import AlgorithmError

            raise AlgorithmError(f"tensor '{self.name}' was observed without a histogram (range only); "
                                 f"collect with histogram=True for entropy, percentile or mse")
        if nbins > self.bins or nbins & (nbins - 1) or nbins <= 0:
            raise ValueError(f"nbins must be a power of two <= {self.bins}, got {nbins}")
        f = self.bins // nbins
        counts = self.hist.reshape(nbins, f).sum(axis=1)
        return counts, self.width * f

    def state(self) -> dict[str, Any]:
        """A picklable / npz-able snapshot (see :meth:`from_state`)."""
        return {"name": self.name, "bins": self.bins, "exp": self.exp, "hist": self.hist.copy(),
                "count": self.count, "nan_count": self.nan_count, "inf_count": self.inf_count,
                "min": self.min, "max": self.max, "histogram": self.has_histogram}

    @classmethod
    def from_state(cls, st: dict[str, Any]) -> "TensorObserver":
        o = cls(st.get("name"), int(st["bins"]), bool(st.get("histogram", True)))
        hist = np.asarray(st["hist"], dtype=np.int64)
        if hist.shape != (o.bins,):
            raise ValueError(f"histogram has shape {hist.shape}, expected ({o.bins},)")
        o.hist = hist.copy()
        o.exp = int(st["exp"])
        for k in ("count", "nan_count", "inf_count"):
            setattr(o, k, int(st[k]))
        o.min = float(st["min"])
        o.max = float(st["max"])
        return o

    def __getstate__(self):
        return self.state()

    def __setstate__(self, st):
        o = TensorObserver.from_state(st)
        for k in TensorObserver.__slots__:
            setattr(self, k, getattr(o, k))

    def same_as(self, other: "TensorObserver") -> bool:
        """True if both hold bit-identical statistics."""
        return (self.has_histogram == other.has_histogram and self.bins == other.bins and self.exp == other.exp and self.count == other.count
                and self.nan_count == other.nan_count and self.inf_count == other.inf_count
                and self.min == other.min and self.max == other.max
                and np.array_equal(self.hist, other.hist))
