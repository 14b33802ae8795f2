"""Paired bootstrap intervals and McNemar's exact test."""
import math
from fractions import Fraction

import numpy as np
import pytest

from calib.harness.stats import (
    Series,
    binom_cdf_half,
    bootstrap_ci,
    mcnemar_exact,
    mcnemar_p,
    paired_bootstrap_diff,
    resample_indices,
)


def test_mcnemar_hand_computed():
    # b=0, c=5: p = 2 * (1/2)^5 = 0.0625
    assert mcnemar_p(0, 5) == pytest.approx(0.0625)
    # b=1, c=5: p = 2 * (C(6,0) + C(6,1)) / 2^6 = 2 * 7 / 64
    assert mcnemar_p(1, 5) == pytest.approx(14 / 64)
    # b=2, c=8: 2 * (1 + 10 + 45) / 1024
    assert mcnemar_p(2, 8) == pytest.approx(112 / 1024)
    assert mcnemar_p(8, 2) == mcnemar_p(2, 8)
    # equal counts: capped at 1
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 1) == 1.0


def test_mcnemar_from_outcomes():
    ref = np.array([1, 1, 1, 0, 0, 1, 1, 0], bool)
    cand = np.array([1, 0, 0, 0, 1, 1, 0, 0], bool)
    r = mcnemar_exact(ref, cand)
    assert (r.ref_only, r.cand_only) == (3, 1)
    assert r.p_value == pytest.approx(2 * (1 + 4) / 16)


def test_binomial_tail_exact_and_log_space_agree():
    # exact rational for a moderate n
    n, k = 60, 20
    exact = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n)
    assert binom_cdf_half(k, n) == pytest.approx(float(exact), rel=1e-15)
    # log-space path (n beyond the exact limit) against the exact value
    n, k = 6000, 2900
    exact = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2 ** n)
    assert binom_cdf_half(k, n) == pytest.approx(float(exact), rel=1e-9)
    assert 0.0 < mcnemar_p(2950, 3050) < 1.0


def test_resample_indices_blocks_reproducible():
    blocks = list(resample_indices(7, 25, seed=3))
    total = np.concatenate(blocks)
    assert total.shape == (25, 7) and total.min() >= 0 and total.max() < 7
    again = np.concatenate(list(resample_indices(7, 25, seed=3)))
    assert (again == total).all()


def test_bootstrap_reproducible_and_sensible():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 400)
    a = bootstrap_ci(Series(x), resamples=1000, seed=5)
    b = bootstrap_ci(Series(x), resamples=1000, seed=5)
    assert (a.low, a.high) == (b.low, b.high)
    assert a.low < x.mean() < a.high
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert (a.high - a.low) == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_ratio_and_max_aggregates():
    s = Series(np.array([1.0, 3.0]), np.array([2.0, 2.0]))
    assert s.value() == pytest.approx(1.0)
    iv = bootstrap_ci(s, resamples=500)
    assert 0.5 <= iv.low <= iv.high <= 1.5
    m = Series(np.array([1.0, 5.0, 2.0]), aggregate="max")
    assert m.value() == 5.0
    iv = bootstrap_ci(m, resamples=500)
    assert iv.low >= 1.0 and iv.high == 5.0


def test_paired_bootstrap_coverage_known_difference():
    """200 synthetic experiments with a known true difference: the 95% interval of the
    paired difference should cover it about 95% of the time."""
    rng = np.random.default_rng(12345)
    true_diff = -0.03            # candidate accuracy 0.87 vs reference 0.90 in expectation
    n = 300
    covered = 0
    reps = 200
    for rep in range(reps):
        # correlated binary outcomes: shared difficulty per sample
        u = rng.random(n)
        ref = (u < 0.90).astype(float)
        cand = (u < 0.87).astype(float)
        # plus independent flips that keep the expectations (symmetric noise on both)
        flip = rng.random(n) < 0.05
        cand = np.where(flip, (rng.random(n) < 0.87).astype(float), cand)
        ci = paired_bootstrap_diff(Series(cand), Series(ref), resamples=500, seed=rep)
        # expected difference after the flips: 0.95*0.87 + 0.05*0.87 - 0.90
        covered += ci.contains(true_diff)
    rate = covered / reps
    assert 0.90 <= rate <= 0.99, rate


def test_paired_is_tighter_than_unpaired():
    rng = np.random.default_rng(0)
    u = rng.random(500)
    ref = (u < 0.8).astype(float)
    cand = (u < 0.78).astype(float)
    paired = paired_bootstrap_diff(Series(cand), Series(ref), resamples=1000)
    single = bootstrap_ci(Series(cand), resamples=1000)
    assert (paired.high - paired.low) < 0.5 * (single.high - single.low)
    assert paired.estimate == pytest.approx(cand.mean() - ref.mean())


def test_transform_applies_per_resample():
    # dB of a ratio: interval equals dB of the ratio interval (monotone transform)
    num = np.array([10.0, 20.0, 30.0, 40.0])
    den = np.array([1.0, 1.0, 2.0, 1.0])
    plain = bootstrap_ci(Series(num, den), resamples=300, seed=2)
    in_db = bootstrap_ci(Series(num, den), resamples=300, seed=2, transform=lambda x: 10 * np.log10(x))
    assert in_db.low == pytest.approx(10 * math.log10(plain.low), rel=1e-3)
    assert in_db.high == pytest.approx(10 * math.log10(plain.high), rel=1e-3)
