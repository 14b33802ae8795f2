"""Calibration algorithms: a :class:`~calib.stats.TensorObserver` -> ``amax`` (symmetric range).

``compute_amax(observer, algorithm, **params)`` with ``algorithm`` one of

``max``
    the largest |x| seen (TensorRT's MinMaxCalibration).
``percentile`` (``percentile=99.99``; any value in (0, 100])
    the smallest fine-bin upper edge below which at least that share of |x| lies, never
    above the max. Resolution: one fine bin (``absmax / 8192`` or better).
``entropy`` (``start_bin=128``, ``levels=128``, ``reference="tensorrt"``, ``zero_bin="neighbour"``,
``saturation="protect"``, ``spikes="protect"``)
    TensorRT's entropy calibration (IInt8EntropyCalibrator2), as NVIDIA published it in
    "8-bit Inference with TensorRT" (Migacz, GTC 2017, slides "Entropy calibration -
    pseudocode"), cross-checked against NVIDIA's open implementations
    ``pytorch_quantization/calib/histogram.py`` and ``modelopt/torch/quantization/calib/
    histogram.py`` (``_compute_amax_entropy``):

    * the 2048-bin histogram ``h`` of |x| (see below for how ours is made);
    * for every candidate ``i`` in ``start_bin .. last non-empty bin + 1`` (inclusive; NVIDIA's
      code runs to the histogram's end, and its histograms end at the max; ours extend up to
      twice the max, see below, so the empty tail is cut to keep the same candidate set):
      ``P = h[:i]`` with the clipped mass ``sum(h[i:])`` added to ``P[i-1]``;
      ``Q``: the bins ``h[:i]`` (without the clipped mass) merged into ``levels`` levels,
      bin ``j`` going to level ``floor(j * levels / i)`` (NVIDIA's ``linspace``/``digitize``
      split, here in exact integer arithmetic), each level's mass spread evenly over its
      *non-empty* bins and empty bins left empty; both normalised;
      ``KL(P || Q) = sum P log(P / Q)`` over ``P > 0``, infinite where ``P > 0 = Q`` (this
      happens when ``h[i-1]`` is empty but mass is clipped; scipy's ``entropy`` gives inf too);
    * the minimising ``i`` (the largest one on exact ties, as NVIDIA's code picks).
    * threshold: ``reference="tensorrt"`` (default) returns ``(i + 0.5) * bin_width`` as the
      GTC pseudocode states; ``reference="pytorch-quantization"`` reproduces that package's
      two differences: ``bin_edges[i] = i * bin_width`` (half a bin lower) and ``h[0]`` replaced
      by ``h[1]`` before the search (it discounts the exact zeros after ReLU).
      TensorRT's own implementation is closed; its observable results agree with the GTC
      description, which is why it is the default.
    * the zero spike: ``zero_bin="neighbour"`` (default) gives ``h[0]`` the count of ``h[1]``
      before the search, as NVIDIA's pytorch-quantization and Model Optimizer do. After ReLU
      or ReLU6 most values are exactly 0; the literal search (``zero_bin="keep"``) then merges
      that spike into level 0 for every candidate wider than 128 bins, spreads it over the
      level's bins, and so always picks the first candidate (a threshold of 0.5 on a ReLU6
      tensor whose max is 6). Zeros are exactly representable in symmetric INT8, so
      discounting them costs nothing.
    * the saturation spike: ``saturation="protect"`` (default) returns the max when the last
      non-empty bin is a spike (more than 8 times the mean count of the 8 bins below it, at
      least 8 values, and at least half of those 8 bins non-empty, so that isolated far
      outliers above empty bins still count as a tail): the tensor was saturated by the graph
      (ReLU6 / Clip outputs pile up at exactly 6). KL compares shapes, not error sizes, so the literal search
      (``saturation="ignore"``) happily clips the spike, moving every saturated value by
      ``6 - t``. Long, thin tails (no spike) are still clipped as TensorRT clips them.
    * spikes inside the range: ``spikes="protect"`` (default) never puts the threshold below a
      spike, i.e. the candidates start above the highest bin (after bin 0) that holds at least
      0.1% of the values, at least 8 of them, and more than 8 times the mean count of the 8 bins
      on each side. Such point masses are constant responses: on images with a plain background
      (rendered text lines, documents) every channel outputs one value over the whole
      background, so an early activation's |x| histogram is a comb of one spike per channel.
      The literal search (``spikes="ignore"``) is doubly misled there: Q spreads each spike over
      its level's non-empty bins, a cost that grows with the candidate's width, while clipping a
      spike costs only the log of its mass once; so KL runs to the smallest candidates and clips
      whole channels' backgrounds, a systematic error every later layer sees. The saturation
      rule is the special case of a spike in the top bin.

    What each of these three departures changes on the shared models is measured in
    ``docs/calibration.md`` ("Three departures from the literal entropy search").

    Fully vectorised: for all candidates at once the level sums come from cumulative sums
    gathered at the level boundaries, and ``sum P log P`` from a cumulative sum of
    ``h log h``.
``mse`` (``start_bin=128``)
    the candidate ``amax = i * bin_width`` (i = start_bin .. the bin holding the max, on the
    2048-bin grid) minimising the expected squared error of int8 symmetric fake
    quantisation (``scale = amax / 127``, round to nearest, clip at +-127) over the fine
    histogram, values taken at their bin centres. Exact per level via cumulative sums of
    ``n``, ``n x`` and ``n x^2``.

How our histogram maps to TensorRT's 2048 bins: :meth:`TensorObserver.histogram` merges
fine bins exactly into 2048 bins of the smallest power-of-two width holding the max, so the
max lies in bins 1024..2047. TensorRT does not document how it sizes its histogram; NVIDIA's
open calibrators grow the range in whole bins of the first batch's width, which makes their
result depend on batch order. We keep order independence and state the difference.

All-zero tensors give ``amax = 0.0``; tensors that never saw a finite value raise
:class:`~calib.errors.AlgorithmError`.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np

from .errors import AlgorithmError
from .stats import TRT_BINS, TensorObserver

ALGORITHMS = ("max", "percentile", "entropy", "mse")
PERCENTILES = (99.9, 99.99, 99.999, 99.9999)

_PARAMS = {
    "max": set(),
    "percentile": {"percentile"},
    "entropy": {"start_bin", "levels", "reference", "zero_bin", "saturation", "spikes"},
    "mse": {"start_bin"},
}


def compute_amax(observer: TensorObserver, algorithm: str = "entropy", **params) -> float:
    """The symmetric range ``amax`` for one tensor (scale = amax / 127)."""
    if algorithm not in _PARAMS:
        raise AlgorithmError(f"unknown calibration algorithm '{algorithm}'; choose one of {', '.join(ALGORITHMS)}")
    unknown = set(params) - _PARAMS[algorithm]
    if unknown:
        raise AlgorithmError(f"algorithm '{algorithm}' takes no parameter(s) {', '.join(sorted(unknown))}"
                             + (f"; it takes {', '.join(sorted(_PARAMS[algorithm]))}" if _PARAMS[algorithm] else ""))
    if observer.count == 0:
        what = f"tensor '{observer.name}'" if observer.name else "tensor"
        extra = f" ({observer.nan_count} NaN, {observer.inf_count} Inf)" if observer.nonfinite else ""
        raise AlgorithmError(f"{what} has no finite values to calibrate on{extra}")
    if observer.absmax == 0.0:
        return 0.0
    if algorithm == "max":
        return float(observer.absmax)
    if not observer.has_histogram:
        raise AlgorithmError(f"'{algorithm}' needs a histogram, but tensor '{observer.name}' was observed "
                             f"for its range only (collect with histogram=True)")
    if algorithm == "percentile":
        return amax_percentile(observer, float(params.get("percentile", 99.99)))
    if algorithm == "entropy":
        return amax_entropy(observer, **params)
    return amax_mse(observer, **params)


def compute_amax_all(observers: Mapping[str, TensorObserver], algorithm: str = "entropy",
                     **params) -> dict[str, float]:
    """``{name: amax}`` for every observer (same order)."""
    return {k: compute_amax(o, algorithm, **params) for k, o in observers.items()}


# --- percentile --------------------------------------------------------------
def amax_percentile(observer: TensorObserver, percentile: float = 99.99) -> float:
    if not (0.0 < percentile <= 100.0) or math.isnan(percentile):
        raise AlgorithmError(f"percentile must be in (0, 100], got {percentile}")
    if percentile == 100.0:
        return float(observer.absmax)
    cdf = np.cumsum(observer.hist)
    target = percentile / 100.0 * observer.count
    idx = int(np.searchsorted(cdf, target, side="left"))
    idx = min(idx, observer.bins - 1)
    return float(min((idx + 1) * observer.width, observer.absmax))


# --- entropy -----------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _entropy_bounds(nbins: int, start: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates i and, per candidate, the first bin of each level (plus i): shape (K, levels+1)."""
    cands = np.arange(start, nbins + 1, dtype=np.int64)
    l = np.arange(levels + 1, dtype=np.int64)
    # bin j is in level floor(j*levels/i)  <=>  ceil(l*i/levels) <= j < ceil((l+1)*i/levels)
    bounds = (l[None, :] * cands[:, None] + levels - 1) // levels
    return cands, bounds


def entropy_divergences(hist: np.ndarray, start_bin: int = 128, levels: int = 128,
                        stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, KL)`` of the entropy search over the histogram *hist* (see module doc).

    Candidates are ``start_bin .. stop`` (inclusive; default: every bin count up to ``len(hist)``).
    """
    h = np.asarray(hist, dtype=np.float64)
    nb = h.size
    if not (1 <= levels <= start_bin <= nb):
        raise AlgorithmError(f"entropy needs 1 <= levels ({levels}) <= start_bin ({start_bin}) <= bins ({nb})")
    n = h.sum()
    cands, bnd = _entropy_bounds(nb, start_bin, levels)
    if stop is not None:
        k = min(max(int(stop), start_bin), nb) - start_bin + 1
        cands, bnd = cands[:k], bnd[:k]
    nz = h > 0
    c = np.zeros(nb + 1)
    np.cumsum(h, out=c[1:])
    cnz = np.zeros(nb + 1)
    np.cumsum(nz, out=cnz[1:])
    hl = np.zeros(nb + 1)
    np.cumsum(np.where(nz, h * np.log(np.where(nz, h, 1.0)), 0.0), out=hl[1:])

    mass = np.diff(c[bnd], axis=1)                       # (K, levels) level masses of h[:i]
    filled = np.diff(cnz[bnd], axis=1)                   # non-empty bins per level
    pos = mass > 0
    lr = np.log(np.where(pos, mass, 1.0) / np.where(pos, filled, 1.0))   # log(level mass / non-empty bins)
    sum_m_lr = np.einsum("kl,kl->k", mass, lr)

    i = cands
    s = c[i]                                             # mass of h[:i] (= sum Q before normalising)
    out = n - s                                          # clipped mass
    last = h[i - 1]
    p_last = last + out
    with np.errstate(divide="ignore", invalid="ignore"):
        xlogx_last = np.where(p_last > 0, p_last * np.log(np.where(p_last > 0, p_last, 1.0)), 0.0)
        # sum p log p  -  sum p log q, with p = P/n, q = Q/s, Q_j = mass_l / filled_l
        plogp = (hl[i - 1] + xlogx_last) / n - math.log(n)
        plogq = (sum_m_lr + out * lr[:, -1]) / n - np.log(s)
        kl = plogp - plogq
    kl[(last == 0) & (out > 0)] = np.inf
    return cands, kl


def saturation_spike(hist: np.ndarray, window: int = 8, factor: float = 8.0) -> bool:
    """True if the last non-empty bin is a spike: values piled up at a saturation bound."""
    nz = np.nonzero(hist)[0]
    if nz.size == 0:
        return False
    top = int(nz[-1])
    if top <= window:
        return False
    below = hist[top - window:top]
    if np.count_nonzero(below) < window // 2:
        return False  # isolated far outliers above empty bins: a tail to clip, not a saturation bound
    return hist[top] >= window and hist[top] > factor * max(float(np.mean(below)), 1.0)


def highest_spike(hist: np.ndarray, window: int = 8, factor: float = 8.0, min_share: float = 1e-3,
                  min_count: int = 8) -> int:
    """Index of the highest bin (bin 0 excluded) that is a point mass, or -1 if none.

    A spike holds at least *min_share* of all values and *min_count* of them, and more than
    *factor* times the mean count of the *window* bins on each side (fewer at the edges).
    """
    h = np.asarray(hist, dtype=np.float64)
    n = h.sum()
    if h.size < 2 or n <= 0:
        return -1
    c = np.zeros(h.size + 1)
    np.cumsum(h, out=c[1:])
    idx = np.arange(h.size)
    lo = np.maximum(idx - window, 0)
    hi = np.minimum(idx + window + 1, h.size)
    around = (c[hi] - c[lo] - h) / np.maximum(hi - lo - 1, 1)
    spike = (h > factor * np.maximum(around, 1.0)) & (h >= min_share * n) & (h >= min_count) & (idx > 0)
    nz = np.nonzero(spike)[0]
    return int(nz[-1]) if nz.size else -1


def amax_entropy(observer: TensorObserver, start_bin: int = 128, levels: int = 128,
                 reference: str = "tensorrt", zero_bin: str = "neighbour",
                 saturation: str = "protect", spikes: str = "protect") -> float:
    if reference not in ("tensorrt", "pytorch-quantization"):
        raise AlgorithmError(f"entropy reference must be 'tensorrt' or 'pytorch-quantization', got '{reference}'")
    if zero_bin not in ("neighbour", "keep"):
        raise AlgorithmError(f"entropy zero_bin must be 'neighbour' or 'keep', got '{zero_bin}'")
    hist, width = observer.histogram(TRT_BINS)
    if reference == "pytorch-quantization" or zero_bin == "neighbour":
        hist = hist.copy()
        hist[0] = hist[1]
    if hist.sum() == 0:
        return float(observer.absmax)
    # candidates end with the last non-empty bin: NVIDIA's histograms end at the max, so
    # thresholds beyond it (which clip nothing, only coarsen) are never on offer there either
    stop = int(np.nonzero(hist)[0].max()) + 1
    if saturation not in ("protect", "ignore"):
        raise AlgorithmError(f"entropy saturation must be 'protect' or 'ignore', got '{saturation}'")
    if saturation == "protect" and saturation_spike(hist):
        return float(observer.absmax)
    if spikes not in ("protect", "ignore"):
        raise AlgorithmError(f"entropy spikes must be 'protect' or 'ignore', got '{spikes}'")
    start = int(start_bin)
    if not (1 <= int(levels) <= start <= hist.size):
        raise AlgorithmError(f"entropy needs 1 <= levels ({levels}) <= start_bin ({start_bin}) <= bins ({hist.size})")
    if spikes == "protect":
        top = highest_spike(hist)
        if top >= stop - 1:
            return float(observer.absmax)   # the spike is the last non-empty bin: keep it whole
        if top >= 0:
            # never clip a point mass (see module doc); the search itself is unchanged
            start = max(start, top + 1)
    cands, kl = entropy_divergences(hist, start, int(levels), stop=stop)
    if not np.isfinite(kl).any():
        return float(observer.absmax)
    m = int(cands[len(kl) - 1 - int(np.argmin(kl[::-1]))])   # last minimum
    # never above the max: a range beyond the largest value seen only wastes resolution
    if reference == "tensorrt":
        return float(min((m + 0.5) * width, observer.absmax))
    return float(min(m * width, observer.absmax))


# --- mse ---------------------------------------------------------------------
def mse_errors(observer: TensorObserver, start_bin: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``(candidate amax values, expected squared error * count)`` of the MSE search."""
    h = observer.hist.astype(np.float64)
    w = observer.width
    nb = observer.bins
    big_w = w * (nb // TRT_BINS)
    top = max(start_bin, min(TRT_BINS, math.ceil(observer.absmax / big_w)))
    if start_bin < 1 or start_bin > TRT_BINS:
        raise AlgorithmError(f"mse start_bin must be in 1..{TRT_BINS}, got {start_bin}")
    amaxs = np.arange(start_bin, top + 1, dtype=np.float64) * big_w
    x = (np.arange(nb, dtype=np.float64) + 0.5) * w
    c0 = np.zeros(nb + 1)
    c1 = np.zeros(nb + 1)
    c2 = np.zeros(nb + 1)
    np.cumsum(h, out=c0[1:])
    np.cumsum(h * x, out=c1[1:])
    np.cumsum(h * x * x, out=c2[1:])
    q = 127
    s = amaxs / q                                           # (K,)
    k = np.arange(q + 1, dtype=np.float64)                  # levels 0..127
    # level k holds centres in [(k-0.5)s, (k+0.5)s); level 127 also everything above (clipped)
    edges = (k[None, :q] + 0.5) * s[:, None]                # (K, 127) upper edges of levels 0..126
    b = np.clip(np.ceil(edges / w - 0.5), 0, nb).astype(np.int64)
    bnd = np.concatenate([np.zeros((len(s), 1), np.int64), b, np.full((len(s), 1), nb, np.int64)], axis=1)
    s0 = np.diff(c0[bnd], axis=1)
    s1 = np.diff(c1[bnd], axis=1)
    s2 = np.diff(c2[bnd], axis=1)
    ks = k[None, :] * s[:, None]
    err = (s2 - 2.0 * ks * s1 + ks * ks * s0).sum(axis=1)
    return amaxs, err


def amax_mse(observer: TensorObserver, start_bin: int = 128) -> float:
    amaxs, err = mse_errors(observer, int(start_bin))
    return float(amaxs[int(np.argmin(err))])


# --- weights -----------------------------------------------------------------
def weight_amax_per_channel(w, axis: int = 0) -> np.ndarray:
    """max |w| per slice along *axis* (float32, shape ``(w.shape[axis],)``)."""
    a = np.asarray(w)
    if a.ndim == 0:
        raise AlgorithmError("per-channel amax needs a weight with at least one dimension")
    if not -a.ndim <= axis < a.ndim:
        raise AlgorithmError(f"axis {axis} out of range for a weight of shape {a.shape}")
    if a.size == 0:
        raise AlgorithmError(f"weight of shape {a.shape} is empty")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise AlgorithmError(f"weight of shape {a.shape} holds NaN or Inf")
    axis = axis % a.ndim
    red = tuple(d for d in range(a.ndim) if d != axis)
    return np.abs(a).max(axis=red).astype(np.float32) if red else np.abs(a).astype(np.float32)
