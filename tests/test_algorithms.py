"""Calibration algorithms on known distributions, and entropy against NVIDIA's published algorithm."""
from __future__ import annotations

import math

import numpy as np
import pytest

from calib.algorithms import compute_amax, entropy_divergences, highest_spike, mse_errors, weight_amax_per_channel
from calib.errors import AlgorithmError, CalibError
from calib.stats import TensorObserver


def _obs(x, name="t"):
    o = TensorObserver(name)
    o.update(np.asarray(x, np.float32))
    return o


@pytest.fixture(scope="module")
def gauss_outliers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2_000_000).astype(np.float32)
    x[:30] = 60.0          # a few far outliers
    x[30:60] = -45.0
    return _obs(x)


# --- known distributions --------------------------------------------------------
def test_max_keeps_outliers(gauss_outliers):
    assert compute_amax(gauss_outliers, "max") == 60.0


@pytest.mark.parametrize("alg,params", [("entropy", {}), ("percentile", {"percentile": 99.99}),
                                        ("percentile", {"percentile": 99.9})])
def test_entropy_and_percentile_clip_far_outliers(gauss_outliers, alg, params):
    a = compute_amax(gauss_outliers, alg, **params)
    assert 2.5 < a < 8.0, a


def test_percentile_keeps_outliers_above_its_share(gauss_outliers):
    # 60 outliers in 2M values are 0.003%: 99.999 may clip only 20 of them, so it must reach them
    assert compute_amax(gauss_outliers, "percentile", percentile=99.999) >= 45.0


def test_percentile_is_a_tight_upper_bound():
    rng = np.random.default_rng(1)
    x = np.abs(rng.standard_normal(500_000)).astype(np.float32)
    o = _obs(x)
    for p in (99.9, 99.99, 99.999, 99.9999):
        a = compute_amax(o, "percentile", percentile=p)
        frac = np.mean(x <= a)
        assert frac >= p / 100
        # never more than one fine bin above the exact quantile
        q = np.sort(x)[math.ceil(p / 100 * x.size) - 1]     # smallest value with >= p% at or below it
        assert q <= a + 1e-12 and a - q <= o.width + 1e-12
    assert compute_amax(o, "percentile", percentile=100) == o.absmax


def test_uniform_entropy_near_max():
    rng = np.random.default_rng(2)
    o = _obs(rng.uniform(-3.0, 3.0, 1_000_000))
    a = compute_amax(o, "entropy")
    assert abs(a - 3.0) / 3.0 < 0.02, a
    assert abs(compute_amax(o, "mse") - 3.0) / 3.0 < 0.03


def test_mse_gaussian_clips_near_known_optimum():
    # the MSE-optimal symmetric 8-bit clip for N(0,1) lies near 4 sigma
    rng = np.random.default_rng(3)
    x = rng.standard_normal(2_000_000).astype(np.float32)
    o = _obs(x)
    a = compute_amax(o, "mse")
    assert 3.0 < a < 5.0, a


def _fake_quant_mse(x, amax):
    s = amax / 127.0
    q = np.clip(np.round(x / s), -127, 127) * s
    return float(np.mean((q - x) ** 2))


def test_mse_agrees_with_brute_force_on_samples():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.laplace(0, 1.0, 400_000), rng.standard_normal(50) * 30]).astype(np.float32)
    o = _obs(x)
    amaxs, err = mse_errors(o)
    a = compute_amax(o, "mse")
    ours = _fake_quant_mse(x.astype(np.float64), a)
    grid = amaxs[:: max(1, len(amaxs) // 200)]
    best = min(_fake_quant_mse(x.astype(np.float64), g) for g in grid)
    assert ours <= best * 1.02, (a, ours, best)


def test_all_zero_and_empty_observers():
    assert compute_amax(_obs(np.zeros(10)), "entropy") == 0.0
    empty = TensorObserver("never")
    empty.update(np.array([np.nan], np.float32))
    with pytest.raises(AlgorithmError, match="never.*no finite values"):
        compute_amax(empty, "max")


def test_bad_algorithm_and_params(gauss_outliers):
    with pytest.raises(AlgorithmError, match="unknown calibration algorithm"):
        compute_amax(gauss_outliers, "kl")
    with pytest.raises(AlgorithmError):
        compute_amax(gauss_outliers, "max", percentile=99.9)
    for bad in (0, -1, 100.5, float("nan")):
        with pytest.raises(CalibError):
            compute_amax(gauss_outliers, "percentile", percentile=bad)
    with pytest.raises(AlgorithmError):
        compute_amax(gauss_outliers, "entropy", reference="caffe")


# --- entropy against a literal transcription of NVIDIA's published algorithm -------
def _reference_entropy(hist, start=128, levels=128, stop=None):
    """Slow, literal reading of the GTC 2017 pseudocode, with the quantize/expand step as NVIDIA's
    pytorch-quantization does it (bin j -> level floor(j*levels/i); each level's mass spread over its
    non-empty bins). Returns (KL per candidate i, chosen i = last minimum)."""
    bins = [float(v) for v in hist]
    divergences = {}
    for i in range(start, (stop or len(bins)) + 1):
        p = bins[:i]
        outliers = sum(bins[i:])
        p[i - 1] += outliers
        level_of = [int(math.floor(j * levels / i)) for j in range(i)]
        level_mass = [0.0] * levels
        level_nonempty = [0] * levels
        for j in range(i):
            if bins[j] != 0:
                level_mass[level_of[j]] += bins[j]
                level_nonempty[level_of[j]] += 1
        q = [0.0] * i
        for j in range(i):
            if bins[j] != 0:
                q[j] = level_mass[level_of[j]] / level_nonempty[level_of[j]]
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for pj, qj in zip(p, q):
            if pj == 0:
                continue
            if qj == 0:
                kl = math.inf
                break
            kl += (pj / sp) * math.log((pj / sp) / (qj / sq))
        divergences[i] = kl
    return divergences, _last_minimum(divergences)


def _last_minimum(divergences: dict) -> int:
    best = min(divergences.values())
    return max(i for i, d in divergences.items() if d == best)


def _random_histograms():
    rng = np.random.default_rng(7)
    out = []
    # a smooth bell with a tail, as activations look
    out.append(np.histogram(np.abs(rng.standard_normal(200_000)), bins=2048, range=(0, 6))[0])
    # post-ReLU: spike at 0, exponential body, sparse far tail
    x = np.concatenate([np.zeros(50_000), rng.exponential(0.5, 100_000), rng.uniform(5, 10, 30)])
    out.append(np.histogram(x, bins=2048, range=(0, 10))[0])
    # sparse histogram with many empty bins (integer-valued data)
    out.append(np.histogram(rng.poisson(40, 50_000), bins=2048, range=(0, 120))[0])
    # pure noise counts
    out.append(rng.integers(0, 50, 2048) * (rng.random(2048) < 0.7))
    # uniform
    out.append(np.histogram(rng.uniform(0, 1, 100_000), bins=2048, range=(0, 1.0))[0])
    return out


@pytest.mark.parametrize("k", range(5))
def test_entropy_matches_literal_reference(k):
    hist = _random_histograms()[k]
    ref_kl, ref_i = _reference_entropy(hist)
    cands, kl = entropy_divergences(hist)
    ours = dict(zip(cands.tolist(), kl.tolist()))
    assert set(ours) == set(ref_kl)
    # every divergence agrees (inf where the reference is inf)
    for i, d in ref_kl.items():
        if math.isinf(d):
            assert math.isinf(ours[i]), i
        else:
            assert ours[i] == pytest.approx(d, rel=1e-7, abs=1e-9), i
    # the search amax_entropy runs: candidates end after the last non-empty bin (a candidate's
    # divergence does not depend on where the search stops: the reference's are those above)
    stop = int(np.nonzero(hist)[0].max()) + 1
    ref_kl = {i: d for i, d in ref_kl.items() if i <= stop}
    ref_i = _last_minimum(ref_kl)
    cands, kl = entropy_divergences(hist, stop=stop)
    our_i = int(cands[len(kl) - 1 - int(np.argmin(kl[::-1]))])
    # the chosen threshold agrees within one histogram bin, or is an exact tie under the reference
    assert abs(our_i - ref_i) <= 1 or ref_kl[our_i] - ref_kl[ref_i] <= 1e-12


def test_entropy_threshold_semantics():
    rng = np.random.default_rng(8)
    o = _obs(rng.standard_normal(300_000))
    hist, width = o.histogram(2048)
    cands, kl = entropy_divergences(hist, stop=int(np.nonzero(hist)[0].max()) + 1)
    m = int(cands[len(kl) - 1 - int(np.argmin(kl[::-1]))])
    assert compute_amax(o, "entropy") == (m + 0.5) * width          # GTC 2017: (m + 0.5) * bin width
    h2 = hist.copy()
    h2[0] = h2[1]
    c2, kl2 = entropy_divergences(h2, stop=int(np.nonzero(h2)[0].max()) + 1)
    m2 = int(c2[len(kl2) - 1 - int(np.argmin(kl2[::-1]))])
    assert compute_amax(o, "entropy", reference="pytorch-quantization") == m2 * width


# --- weights and scale ------------------------------------------------------------
def test_weight_amax_per_channel():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w[3, 1, 2, 0] = -7.5
    a = weight_amax_per_channel(w, 0)
    assert a.shape == (8,) and a.dtype == np.float32 and a[3] == 7.5
    assert np.array_equal(a, np.abs(w).reshape(8, -1).max(axis=1))
    b = weight_amax_per_channel(w, -3)
    assert b.shape == (3,) and np.array_equal(b, np.abs(w).max(axis=(0, 2, 3)))
    with pytest.raises(AlgorithmError):
        weight_amax_per_channel(w, 4)
    with pytest.raises(AlgorithmError):
        weight_amax_per_channel(np.float32(1.0), 0)
    w[0, 0, 0, 0] = np.nan
    with pytest.raises(AlgorithmError):
        weight_amax_per_channel(w, 0)


def test_entropy_is_scale_equivariant_across_many_tensors():
    """The entropy search depends on the histogram's shape only: scaling a tensor by a power of
    two (exact in float32) scales its amax by the same factor, for Gaussian and ReLU'd tensors of
    several spreads; amax stays in (0, absmax] and clips some of them. (Its speed over 450 such
    tensors is ``benchmarks/amax_speed.py``'s.)"""
    rng = np.random.default_rng(10)
    clipped = 0
    for k in range(42):
        x = rng.standard_normal(5000) * (1 + k % 7)
        if k % 3 == 0:
            x = np.maximum(x, 0)
        o = _obs(x, f"t{k}")
        a = compute_amax(o, "entropy")
        assert 0 < a <= o.absmax, k
        assert compute_amax(_obs(x * 2), "entropy") == 2 * a, k
        assert compute_amax(_obs(x / 4), "entropy") == a / 4, k
        clipped += a < o.absmax
    assert clipped > 21


def test_entropy_discounts_the_relu_zero_spike():
    """ReLU6-like tensor: 80% exact zeros, the rest spread up to 6. The literal search is
    dominated by the zero spike and picks its first candidate (128 of 2048 bins, about 0.5);
    the default (zero bin given its neighbour's count, as NVIDIA's PTQ code does) keeps the
    range near the max, as it must for accuracy."""
    rng = np.random.default_rng(3)
    x = np.concatenate([np.zeros(800_000, np.float32),
                        np.clip(rng.exponential(1.5, 200_000), 0, 6).astype(np.float32)])
    o = _obs(x)
    width = o.histogram(2048)[1]
    literal = compute_amax(o, "entropy", zero_bin="keep", saturation="ignore", spikes="ignore")
    assert literal == pytest.approx(128.5 * width)          # the pathology, pinned
    default = compute_amax(o, "entropy")
    assert 4.0 < default <= 6.0
    with pytest.raises(CalibError, match="zero_bin"):
        compute_amax(o, "entropy", zero_bin="drop")


def _fixture_observer(i: int) -> TensorObserver:
    from pathlib import Path

    z = np.load(Path(__file__).parent / "fixtures" / "effnet_relu6_observers.npz")
    bins, exp, count, nan, inf = (int(v) for v in z[f"t{i}_meta"])
    lo, hi = (float(v) for v in z[f"t{i}_range"])
    return TensorObserver.from_state({"name": str(z[f"t{i}_name"]), "bins": bins, "exp": exp,
                                      "hist": z[f"t{i}_hist"], "count": count, "nan_count": nan,
                                      "inf_count": inf, "min": lo, "max": hi})


def test_entropy_keeps_a_saturation_spike_but_clips_a_thin_tail(gauss_outliers):
    """Real ReLU6 output (EfficientNet-Lite0 block 14, 247 ImageNet calibration images;
    fixture saved from calib.collect): a pile of values at exactly 6 on top of a thin tail.
    The literal KL search clips it to about 3.4, moving every saturated value; the default
    keeps the max. Isolated far outliers above empty bins are still clipped."""
    o = _fixture_observer(0)
    assert o.max == pytest.approx(6.0)
    assert compute_amax(o, "entropy", saturation="ignore") < 4.0
    assert compute_amax(o, "entropy") == pytest.approx(6.0)
    # block 0's ReLU6 output: literal entropy already keeps 6; both agree
    b0 = _fixture_observer(1)
    assert compute_amax(b0, "entropy") == compute_amax(b0, "entropy", saturation="ignore") == pytest.approx(6.0)
    # a tail of 30 isolated values at 60 is not a saturation spike
    assert compute_amax(gauss_outliers, "entropy") < 8.0


def _background_comb(seed=5):
    """|x| like an early activation on rendered text lines: 16 channels, each constant over the
    white background (75% of the values: one spike per channel at 0.2 .. 1.6) plus a text
    response spread up to ~14."""
    rng = np.random.default_rng(seed)
    spikes = [np.full(47_000, v, np.float32) for v in np.linspace(0.2, 1.6, 16)]
    text = np.abs(rng.standard_normal(250_000) * 1.5).astype(np.float32)
    tail = rng.uniform(1.6, 14.0, 2_000).astype(np.float32)
    return np.concatenate(spikes + [text, tail])


def test_highest_spike_finds_point_masses_only():
    h = np.zeros(2048)
    h[100:900] = 50
    h[400] = 5000          # a point mass
    h[1500:1510] = 3       # isolated sparse tail: too few values to be a spike
    assert highest_spike(h) == 400
    h[400] = 50
    assert highest_spike(h) == -1
    h[0] = 10**6           # bin 0 (exact zeros) never counts
    assert highest_spike(h) == -1


def test_entropy_never_clips_a_spike_in_the_range():
    """Per-channel background constants make a comb of spikes; the literal KL search smears
    each spike over its level (a cost growing with the candidate) and so clips whole spikes.
    The default keeps every spike inside the range and still clips the thin tail."""
    o = _obs(_background_comb())
    literal = compute_amax(o, "entropy", spikes="ignore")
    default = compute_amax(o, "entropy")
    assert literal < 1.6                      # clips spikes (whole channels' backgrounds)
    assert 1.6 < default < o.absmax           # above the highest spike, thin tail still clipped
    x = _background_comb()
    assert np.mean(x > default) < np.mean(x > literal)
    with pytest.raises(CalibError, match="spikes"):
        compute_amax(o, "entropy", spikes="drop")


def test_spike_protection_leaves_smooth_histograms_alone(gauss_outliers):
    rng = np.random.default_rng(11)
    for x in (rng.standard_normal(200_000), np.maximum(rng.standard_normal(200_000), 0),
              rng.laplace(size=200_000)):
        o = _obs(x.astype(np.float32))
        assert compute_amax(o, "entropy") == compute_amax(o, "entropy", spikes="ignore")
    assert compute_amax(gauss_outliers, "entropy") == compute_amax(gauss_outliers, "entropy", spikes="ignore")
