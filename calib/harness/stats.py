"""Uncertainty: paired bootstrap confidence intervals and McNemar's exact test.

Everything here is NumPy plus :mod:`math` (no SciPy).

Bootstrap
---------
Samples are resampled with replacement as a whole (the *pairing*): one resample
draws the same sample indices for the reference and for the candidate, so the
candidate-minus-reference difference keeps the correlation between the two
(a paired test is far tighter than comparing two independent intervals).

A metric's per-sample record is ``num`` (and optionally ``den``): its aggregate
is ``sum(num) / sum(den)`` (``den`` = 1 per sample gives the plain mean; CER uses
edits / characters, SQNR signal power / noise power), or ``max(num)`` for
max-type metrics. Resamples are drawn as index arrays (``B x N`` uniform integers)
in blocks of at most 4 M indices, so memory stays bounded whatever N.
The interval is the percentile interval (2.5th and 97.5th percentiles of the
resampled statistic). With a fixed ``seed`` the result is reproducible.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
_BLOCK_ELEMS = 4_000_000     # resampled indices held at once (32 MB of int64)


@dataclass
class Series:
    """Per-sample values of one metric for one engine (or one engine pair)."""

    num: np.ndarray
    den: np.ndarray | None = None      # None: each sample weighs 1
    aggregate: str = "mean"            # "mean" (sum num / sum den) | "max"

    def __len__(self) -> int:
        return int(self.num.shape[0])

    def value(self) -> float:
        return _aggregate(self.num, self.den, self.aggregate, None)


def _aggregate(num, den, how, idx):
    """Aggregate over samples; with resampled indices *idx* [B, N], one value per resample."""
    if idx is None:
        if how == "max":
            return float(np.max(num)) if num.size else float("nan")
        d = float(np.sum(den)) if den is not None else float(num.shape[0])
        return _safe_div(float(np.sum(num)), d)
    if how == "max":
        return num[idx].max(axis=1)
    n = num[idx].sum(axis=1)
    d = den[idx].sum(axis=1) if den is not None else np.full(idx.shape[0], float(idx.shape[1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, n / np.where(d > 0, d, 1.0), np.where(n > 0, np.inf, np.nan))


def _safe_div(n: float, d: float) -> float:
    if d > 0:
        return n / d
    return math.inf if n > 0 else math.nan


def _identity(x):
    return x


def resample_indices(n: int, resamples: int, seed: int):
    """Yield blocks of bootstrap resamples: index arrays of shape [b, n] (with replacement)."""
    rng = np.random.default_rng(seed)
    block = max(1, min(resamples, _BLOCK_ELEMS // max(1, n)))
    done = 0
    while done < resamples:
        b = min(block, resamples - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


@dataclass
class Interval:
    estimate: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def _quantile(sorted_vals: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (NumPy's default) that also handles infinities
    (an exact candidate has infinite SQNR in every resample)."""
    pos = q * (sorted_vals.size - 1)
    i = int(math.floor(pos))
    frac = pos - i
    lo = float(sorted_vals[i])
    hi = float(sorted_vals[min(i + 1, sorted_vals.size - 1)])
    if lo == hi or frac == 0.0:
        return lo
    return lo + frac * (hi - lo)


def _percentiles(stat: np.ndarray, level: float) -> tuple[float, float]:
    finite = np.sort(stat[~np.isnan(stat)])
    if finite.size == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    return _quantile(finite, a), _quantile(finite, 1.0 - a)


def bootstrap_ci(series: Series, *, transform: Callable = _identity, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of ``transform(aggregate(series))``."""
    n = len(series)
    est = float(transform(series.value())) if n else math.nan
    if n == 0:
        return Interval(est, math.nan, math.nan, level)
    stats = []
    for idx in resample_indices(n, resamples, seed):
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.append(np.asarray(transform(_aggregate(series.num, series.den, series.aggregate, idx)),
                                    dtype=np.float64))
    lo, hi = _percentiles(np.concatenate(stats), level)
    return Interval(est, lo, hi, level)


def paired_bootstrap_diff(candidate: Series, reference: Series, *, transform: Callable = _identity,
                          resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                          level: float = 0.95) -> Interval:
    """Interval of ``T(candidate) - T(reference)``, resampling the same samples for both."""
    n = len(candidate)
    if n != len(reference):
        raise ValueError(f"paired bootstrap needs equal lengths, got {n} and {len(reference)}")
    with np.errstate(divide="ignore", invalid="ignore"):
        est = float(transform(candidate.value()) - transform(reference.value())) if n else math.nan
    if n == 0:
        return Interval(est, math.nan, math.nan, level)
    stats = []
    for idx in resample_indices(n, resamples, seed):
        c = _aggregate(candidate.num, candidate.den, candidate.aggregate, idx)
        r = _aggregate(reference.num, reference.den, reference.aggregate, idx)
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.append(np.asarray(transform(c) - transform(r), dtype=np.float64))
    lo, hi = _percentiles(np.concatenate(stats), level)
    return Interval(est, lo, hi, level)


# --------------------------------------------------------------------------- McNemar
@dataclass
class McNemarResult:
    ref_only: int          # b: reference right, candidate wrong
    cand_only: int         # c: candidate right, reference wrong
    p_value: float         # two-sided exact p-value

    @property
    def discordant(self) -> int:
        return self.ref_only + self.cand_only

    def to_dict(self) -> dict:
        return {"test": "mcnemar-exact", "reference_only_correct": self.ref_only,
                "candidate_only_correct": self.cand_only, "discordant": self.discordant,
                "p_value": self.p_value}


_EXACT_LIMIT = 5000


def binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2); exact integers up to n=5000, log-space beyond."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if n <= _EXACT_LIMIT:
        s = sum(math.comb(n, i) for i in range(k + 1))
        # exact rational s / 2**n, converted once (no overflow: integer division first)
        return _ratio_to_float(s, 1 << n)
    # log-space: log C(n,i) - n log 2, summed with log-sum-exp
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
            for i in range(k + 1)]
    m = max(logs)
    return math.exp(m) * math.fsum(math.exp(x - m) for x in logs)


def _ratio_to_float(num: int, den: int) -> float:
    from fractions import Fraction

    return float(Fraction(num, den))


def mcnemar_exact(ref_correct: Sequence[bool] | np.ndarray, cand_correct: Sequence[bool] | np.ndarray
                  ) -> McNemarResult:
    """McNemar's exact test: two-sided binomial test on the discordant pairs.

    ``b`` = samples the reference gets right and the candidate wrong, ``c`` the
    opposite; under the null (equal accuracy) ``b ~ Binomial(b + c, 1/2)``.
    ``p = min(1, 2 * P(X <= min(b, c)))``; with no discordant pairs p = 1.
    """
    r = np.asarray(ref_correct).astype(bool)
    c = np.asarray(cand_correct).astype(bool)
    if r.shape != c.shape:
        raise ValueError("McNemar needs paired outcomes of equal length")
    b = int(np.sum(r & ~c))
    cc = int(np.sum(~r & c))
    return McNemarResult(b, cc, mcnemar_p(b, cc))


def mcnemar_p(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binom_cdf_half(min(b, c), n))


def db(x):
    """10 log10 of a power ratio (arrays or floats); inf stays inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if np.isscalar(x):
            if x is None or (isinstance(x, float) and math.isnan(x)):
                return math.nan
            if x <= 0:
                return -math.inf
            return 10.0 * math.log10(x) if math.isfinite(x) else math.inf
        return 10.0 * np.log10(x)
