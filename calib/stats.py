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

An update of ``n`` values is a min and a max pass, then the binning. With NumPy: ``abs``, a
scaling multiply, a float->int conversion and ``np.bincount``, in chunks that stay in cache. When
`numba <https://numba.pydata.org>`_ is importable (a dependency; the NumPy path stays for when it
is missing or fails), updates of at least ``_NUMBA_MIN`` values bin in compiled code instead
(:func:`_bin_abs`: the indices ``int32(|x| * 2**-exp)`` of a chunk in one vectorised pass, then
counted into two interleaved int32 sub-histograms; it releases the GIL, so worker threads bin in
parallel). Both give the same counts: the index of every value is the same float32 product
truncated to an integer, and counting is exact. The sub-histograms stay with the observer from one
update to the next and are added into the int64 histogram only when it is read or its width grows
(or before 2**31 values could overflow them). The kernel is compiled on first use (cached on disk
by numba afterwards); ``CALIB_NUMBA=0`` turns it off. The cost per value of each path is in
``benchmarks/README.md`` ("Where the time goes").

Memory: ``bins`` int64 counts (128 KiB) per tensor, plus 128 KiB of int32 sub-histograms while
it is being updated by the kernel, or one chunk of scratch space for NumPy, independent of the
number of samples. float16 input is widened exactly; float64
input is rounded to float32 first (values beyond float32's range then count as Inf).

:meth:`TensorObserver.add_range` adds a batch known only by its min, max and size (all values
finite), exactly as :meth:`~TensorObserver.update` would for a range-only observer: range-only
collection uses it for the Relu / Clip outputs whose ranges follow from their inputs'
(:func:`calib.collect.plan_ranges`). :class:`ClipSplitObserver` does the same with histograms for
``clip(x, 0, hi)`` (Relu, ReLU6): it observes ``x`` in three histograms, from which the exact
observers of ``x`` and of its clipped output both follow.
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
_NUMBA_SLICE = 1 << 30    # values per kernel call
_PENDING_MAX = 2**31 - 1  # values counted into the int32 sub-histograms between two flushes
_SUBS = 2                 # interleaved sub-histograms of the numba kernels
_IDX = 2048               # values per index pass of the numba kernels

_kernel_lock = threading.Lock()
_kernel: Any = None       # None: not tried yet; False: unavailable or turned off


def _bin_abs(a, scale, sub, idx):    # pragma: no cover - compiled by numba (see _binning_kernel)
    """Count ``int32(|a[i]| * scale)`` into ``sub[i % 2]`` (the caller guarantees every index < bins).

    Two passes per chunk of ``idx.size`` values: the indices (over slices, which LLVM
    vectorises), then the counting into two interleaved sub-histograms, so that runs of equal
    indices (zeros, saturated ReLU6 values) do not wait on each other's increments.
    """
    n = a.size
    c = idx.size
    for s0 in range(0, n, c):
        m = min(c, n - s0)
        av = a[s0:s0 + m]
        iv = idx[:m]
        for k in range(m):
            iv[k] = np.int32(abs(av[k]) * scale)
        m2 = m - m % 2
        for k in range(0, m2, 2):
            sub[0, iv[k]] += 1
            sub[1, iv[k + 1]] += 1
        if m2 < m:
            sub[0, iv[m2]] += 1


def _bin_split(a, hi, s_neg, s_mid, s_over, bins, sub, idx):   # pragma: no cover - compiled by numba
    """Count each value into one of three histograms laid end to end in ``sub[k]`` (``3 * bins``
    bins): ``x < 0`` at ``int32(-x * s_neg)``, ``0 <= x <= hi`` at ``bins + int32(x * s_mid)``,
    ``x > hi`` at ``2 * bins + int32(x * s_over)`` (see :class:`ClipSplitObserver`).

    Two passes per chunk of ``idx.size`` values: the indices first, branch-free over slices (so
    that LLVM vectorises them; branches would mispredict on the random signs, and indexing
    ``a[s0 + k]`` instead of a slice keeps the pass scalar), then the counting into two
    interleaved sub-histograms.
    """
    n = a.size
    c = idx.size
    for s0 in range(0, n, c):
        m = min(c, n - s0)
        av = a[s0:s0 + m]
        iv = idx[:m]
        for k in range(m):
            v = av[k]
            neg = v < 0
            over = v > hi
            s = s_neg if neg else s_mid
            s = s_over if over else s
            base = np.int32(0) if neg else np.int32(bins)
            base = np.int32(2 * bins) if over else base
            iv[k] = base + np.int32(abs(v) * s)
        m2 = m - m % 2
        for k in range(0, m2, 2):
            sub[0, iv[k]] += 1
            sub[1, iv[k + 1]] += 1
        if m2 < m:
            sub[0, iv[m2]] += 1


_SIGNATURES = {
    "abs": (_bin_abs, "void(float32[::1], float32, int32[:, ::1], int32[::1])"),
    "split": (_bin_split, "void(float32[::1], float32, float32, float32, float32, int32, int32[:, ::1], int32[::1])"),
}
_split_kernel: Any = None  # as _kernel, for _bin_split


def _lazy_kernel(var: str, which: str):
    """The kernel held in the module global *var* (None: not tried yet; False: unavailable),
    compiled on first use; None when numba is missing, failing, or ``CALIB_NUMBA=0``."""
    g = globals()
    if g[var] is None:
        with _kernel_lock:
            if g[var] is None:
                g[var] = _compile_kernel(which)
    return g[var] or None


def _binning_kernel():
    """The compiled :func:`_bin_abs`, or None."""
    return _lazy_kernel("_kernel", "abs")


def _split_binning_kernel():
    """The compiled :func:`_bin_split`, or None."""
    return _lazy_kernel("_split_kernel", "split")


def _compile_kernel(which: str = "abs"):
    if os.environ.get("CALIB_NUMBA", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import numba
    except Exception:
        return False
    func, sig = _SIGNATURES[which]
    for cache in (True, False):         # an unwritable cache location must not cost the kernel
        try:
            return numba.njit(sig, nogil=True, boundscheck=False, cache=cache)(func)
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


def _check_bins(bins: int) -> int:
    if bins < TRT_BINS or bins & (bins - 1):
        raise ValueError(f"bins must be a power of two >= {TRT_BINS}, got {bins}")
    return int(bins)


class _Pending:
    """A numba kernel's int32 sub-histograms (``_SUBS`` x *width*) and index scratch, kept by an
    observer from one update to the next. Their counts go into the observer's int64 histogram
    (:meth:`drain_into`) only when it is read, when its width grows, or before 2**31 values could
    overflow them: counting into the same sub-histograms across updates saves allocating, zeroing
    and summing them at each one."""

    __slots__ = ("sub", "idx", "n")

    def __init__(self, width: int):
        self.sub = np.zeros((_SUBS, width), dtype=np.int32)
        self.idx = np.empty(_IDX, dtype=np.int32)
        self.n = 0                  # values counted since the last drain

    def drain_into(self, hist: np.ndarray) -> None:
        """Add the pending counts into *hist* (int64, *width* values; a view is updated in place)."""
        if self.n:
            hist += self.sub.sum(axis=0, dtype=np.int64)
            self.sub[...] = 0
            self.n = 0

    def count(self, kernel, a: np.ndarray, args: tuple, hist: np.ndarray) -> None:
        """``kernel(part, *args, sub, idx)`` over *a* in slices, draining into *hist* first
        whenever the next slice could overflow the int32 counts."""
        for s in range(0, a.size, _NUMBA_SLICE):
            part = a[s:s + _NUMBA_SLICE]
            if self.n + part.size > _PENDING_MAX:
                self.drain_into(hist)
            kernel(part, *args, self.sub, self.idx)
            self.n += part.size


class TensorObserver:
    """Running range and |x| histogram of one tensor; see the module docstring."""

    __slots__ = ("name", "bins", "_log2", "_hist", "exp", "count", "nan_count", "inf_count", "has_histogram",
                 "min", "max", "_scratch", "_pending")

    def __init__(self, name: str | None = None, bins: int = DEFAULT_BINS, histogram: bool = True):
        self.name = name
        self.bins = _check_bins(bins)
        self._log2 = int(math.log2(bins))
        self._hist = np.zeros(self.bins, dtype=np.int64)
        self._pending: _Pending | None = None     # the numba kernel's counts not yet in _hist
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
    def hist(self) -> np.ndarray:
        """The ``bins`` int64 counts (fine bins of width :attr:`width`)."""
        self._flush(release=True)
        return self._hist

    @hist.setter
    def hist(self, value) -> None:
        self._hist = value
        self._pending = None

    def _flush(self, release: bool = False) -> None:
        """Add the kernel's pending counts into the histogram (:class:`_Pending`)."""
        if self._pending is not None:
            self._pending.drain_into(self._hist)
            if release:
                self._pending = None

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
            self._flush()
            self._hist = _coarsen(self._hist, new_exp - self.exp)
            self.exp = new_exp

    def update(self, x) -> TensorObserver:
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
                if self._pending is None:
                    self._pending = _Pending(self.bins)
                self._pending.count(kernel, np.ascontiguousarray(a), (scale,), self._hist)
                return self
        if n <= _CHUNK:
            t = np.abs(a)
            t *= scale
            self._hist += np.bincount(t.astype(np.intp), minlength=self.bins)
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
        self._hist += acc
        return self

    def add_range(self, mn: float, mx: float, n: int) -> TensorObserver:
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

    def add_zeros(self, n: int) -> TensorObserver:
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

    def renamed(self, name: str | None) -> TensorObserver:
        """An exact, independent copy of this observer under another name."""
        st = self.state()
        st["name"] = name
        return TensorObserver.from_state(st)

    def merge(self, other: TensorObserver) -> TensorObserver:
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

    def copy(self) -> TensorObserver:
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
    def from_state(cls, st: dict[str, Any]) -> TensorObserver:
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

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The statistics as NumPy arrays (the name left out): ``hist`` (int64, ``bins``), 0-d
        ``bins``, ``exp``, ``count``, ``nan_count``, ``inf_count`` (int64), ``min``, ``max``
        (float64) and ``histogram`` (bool). Plain arrays, so they travel and are stored without
        pickle (:func:`dump_observers`); :meth:`from_arrays` gives back an exact copy."""
        st = self.state()
        del st["name"]
        types = {"hist": np.int64, "min": np.float64, "max": np.float64, "histogram": np.bool_}
        return {k: np.asarray(v, dtype=types.get(k, np.int64)) for k, v in st.items()}

    @classmethod
    def from_arrays(cls, arrays, name: str | None = None) -> TensorObserver:
        """The observer whose :meth:`to_arrays` gave *arrays* (any mapping of those names: a dict,
        an open ``.npz``), named *name*; raises ValueError when a field is missing or malformed."""
        try:
            st = {k: arrays[k] for k in ("bins", "exp", "hist", "count", "nan_count", "inf_count", "min", "max",
                                         "histogram")}
            for k, v in st.items():
                if k != "hist" and np.ndim(v) != 0:
                    raise ValueError(f"field '{k}' must be a scalar, got shape {np.shape(v)}")
        except KeyError as exc:
            raise ValueError(f"observer arrays lack the field {exc}") from None
        st["name"] = name
        return cls.from_state(st)

    def __getstate__(self):
        return self.state()

    def __setstate__(self, st):
        o = TensorObserver.from_state(st)
        for k in TensorObserver.__slots__:
            setattr(self, k, getattr(o, k))

    def same_as(self, other: TensorObserver) -> bool:
        """True if both hold bit-identical statistics."""
        return (self.has_histogram == other.has_histogram and self.bins == other.bins and self.exp == other.exp
                and self.count == other.count and self.nan_count == other.nan_count
                and self.inf_count == other.inf_count and self.min == other.min and self.max == other.max
                and np.array_equal(self.hist, other.hist))


def clip_value(v: float, lo: float, hi: float) -> float:
    """``min(max(v, lo), hi)``: the formula of ONNX Clip (*hi* wins when ``lo > hi``)."""
    return min(max(v, lo), hi)


class ClipSplitObserver:
    """Statistics of a tensor ``x`` from which the exact :class:`TensorObserver` of ``x`` *and*
    that of ``clip(x, 0, hi)`` (a Relu: ``hi = inf``; a ReLU6: ``hi = 6``) follow.

    The observer of ``clip(x, 0, hi)`` cannot be built from ``x``'s |x| histogram: that mixes
    both signs, and its bins are as wide as ``x``'s largest magnitude needs while the clipped
    tensor's are as fine as *its* maximum allows. So the values are counted into three
    histograms, each with its own power-of-two width that only grows (as in
    :class:`TensorObserver`, hence independent of order and batching):

    * ``x < 0`` by ``-x``, width for the most negative value;
    * ``0 <= x <= hi``, width for ``min(max x, hi)``: exactly the clipped tensor's width;
    * ``x > hi``, width for the largest value.

    :meth:`observer` merges the three into ``x``'s observer (coarsening is exact);
    :meth:`clipped` takes the middle one, adds the negatives to bin 0 (they become 0) and the
    values above ``hi`` to ``hi``'s bin (they become ``hi``). Both are bit-identical to
    observing the tensors directly. Each value is counted once, instead of once for each of the
    two tensors, and the clipped tensor need not be captured at all
    (:func:`calib.collect.collect_statistics`).

    :meth:`update` takes finite values only (the caller observes runs holding NaN or Inf
    directly, where Clip's treatment of them is ONNX Runtime's to decide).
    """

    __slots__ = ("name", "hi", "bins", "_log2", "_hists", "exps", "count", "min", "max", "_pending")

    def __init__(self, name: str | None = None, hi: float = math.inf, bins: int = DEFAULT_BINS):
        bins = _check_bins(bins)
        hi = float(hi)
        if not hi > 0.0 or (math.isfinite(hi) and float(np.float32(hi)) != hi):
            raise ValueError(f"the upper bound must be a float32 value > 0 (or inf), got {hi}")
        self.name = name
        self.hi = hi
        self.bins = int(bins)
        self._log2 = int(math.log2(bins))
        self._hists = np.zeros((3, self.bins), dtype=np.int64)    # x < 0, 0 <= x <= hi, x > hi
        self._pending: _Pending | None = None     # 3 * bins wide, as in TensorObserver
        self.exps = [EXP_MIN, EXP_MIN, EXP_MIN]
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def __repr__(self) -> str:
        return (f"ClipSplitObserver({self.name!r}, hi={self.hi:g}, count={self.count}, "
                f"min={self.min:g}, max={self.max:g})")

    @property
    def hists(self) -> np.ndarray:
        """int64 counts, shape ``(3, bins)``: ``x < 0``, ``0 <= x <= hi``, ``x > hi``."""
        self._flush(release=True)
        return self._hists

    def _flush(self, release: bool = False) -> None:
        if self._pending is not None:
            self._pending.drain_into(self._hists.reshape(-1))     # a view: the three rows in place
            if release:
                self._pending = None

    def _grow(self, r: int, new_exp: int) -> None:
        if new_exp > self.exps[r]:
            self._flush()
            self._hists[r] = _coarsen(self._hists[r], new_exp - self.exps[r])
            self.exps[r] = new_exp

    def update(self, x, minmax: tuple[float, float] | None = None) -> ClipSplitObserver:
        """Add every value of *x* (float16 or float32, all finite) to the statistics.

        *minmax*: ``(x.min(), x.max())`` when the caller has them already (saves two passes).
        """
        a = np.asarray(x)
        if a.dtype not in (np.float32, np.float16):
            raise TypeError(f"ClipSplitObserver takes float32 or float16 values, got {a.dtype}")
        a = np.ascontiguousarray(a.reshape(-1), dtype=np.float32)
        if a.size == 0:
            return self
        mn, mx = (float(a.min()), float(a.max())) if minmax is None else (float(minmax[0]), float(minmax[1]))
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise ValueError("ClipSplitObserver takes finite values only (observe runs with NaN or Inf directly)")
        self.count += a.size
        self.min = min(self.min, mn)
        self.max = max(self.max, mx)
        self._grow(0, _needed_exp(-mn, self._log2))
        self._grow(1, _needed_exp(min(mx, self.hi), self._log2))
        self._grow(2, _needed_exp(mx, self._log2))
        scales = [np.float32(math.ldexp(1.0, -e)) for e in self.exps]
        hi32 = np.float32(self.hi)
        kernel = _split_binning_kernel() if a.size >= _NUMBA_MIN else None
        if kernel is not None:
            if self._pending is None:
                self._pending = _Pending(3 * self.bins)
            self._pending.count(kernel, a, (hi32, scales[0], scales[1], scales[2], np.int32(self.bins)),
                                self._hists.reshape(-1))
            return self
        for s in range(0, a.size, _CHUNK):
            part = a[s:s + _CHUNK]
            neg = part < 0
            over = part > hi32
            for r, vals in ((0, -part[neg]), (1, part[~(neg | over)]), (2, part[over])):
                if vals.size:
                    vals *= scales[r]
                    self._hists[r] += np.bincount(vals.astype(np.intp), minlength=self.bins)
        return self

    def observer(self, name: str | None = None) -> TensorObserver:
        """The :class:`TensorObserver` of ``x`` itself (as if it had observed the same values)."""
        o = TensorObserver(self.name if name is None else name, self.bins)
        if self.count == 0:
            return o
        o.count, o.min, o.max = self.count, self.min, self.max
        o.exp = max(EXP_MIN, _needed_exp(max(-self.min, self.max), self._log2))
        o.hist = sum(_coarsen(self.hists[r], o.exp - self.exps[r]) for r in range(3))
        return o

    def clipped(self, name: str | None = None) -> TensorObserver:
        """The :class:`TensorObserver` of ``clip(x, 0, hi)`` over the same values."""
        o = TensorObserver(name, self.bins)
        if self.count == 0:
            return o
        o.count = self.count
        o.min = clip_value(self.min, 0.0, self.hi)
        o.max = clip_value(self.max, 0.0, self.hi)
        o.exp = _needed_exp(o.max, self._log2)
        if o.exp != self.exps[1]:       # the middle width follows min(max x, hi) = o.max
            raise RuntimeError(f"internal: clipped width 2**{self.exps[1]} != 2**{o.exp}")
        hist = self.hists[1].copy()
        hist[0] += int(self.hists[0].sum())
        n_over = int(self.hists[2].sum())
        if n_over:
            hist[int(np.float32(self.hi) * np.float32(math.ldexp(1.0, -o.exp)))] += n_over
        o.hist = hist
        return o


OBSERVERS_FORMAT = "calib-observers-1"


def dump_observers(observers) -> bytes:
    """``{tensor: TensorObserver}`` as the bytes of a compressed ``.npz`` archive holding only
    NumPy arrays (no pickle): ``format``, ``names`` (str, in the mapping's order) and, for the
    observer at position ``i``, its :meth:`~TensorObserver.to_arrays` fields as ``<i>.<field>``.
    :func:`load_observers` reads it back exactly, in the same order. Used to send statistics
    between processes and to store them (histograms are mostly zeros: they compress well)."""
    import io

    arrays: dict[str, np.ndarray] = {"format": np.asarray(OBSERVERS_FORMAT),
                                     "names": np.asarray([str(k) for k in observers], dtype=np.str_)}
    for i, o in enumerate(observers.values()):
        arrays.update({f"{i}.{k}": v for k, v in o.to_arrays().items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_observers(data: bytes) -> dict[str, TensorObserver]:
    """The ``{tensor: TensorObserver}`` that :func:`dump_observers` wrote into *data*, in its
    order. Object arrays are refused (``allow_pickle=False``); anything else than such an archive
    raises ValueError."""
    import io
    import zipfile

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != OBSERVERS_FORMAT:
                raise ValueError(f"not a {OBSERVERS_FORMAT} archive")
            names = [str(n) for n in z["names"]]
            fields: dict[int, dict[str, np.ndarray]] = {}
            for key in z.files:
                i, dot, field = key.partition(".")
                if dot and i.isdigit():
                    fields.setdefault(int(i), {})[field] = z[key]
            return {n: TensorObserver.from_arrays(fields.get(i, {}), n) for i, n in enumerate(names)}
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"not a readable {OBSERVERS_FORMAT} archive: {exc}") from None
