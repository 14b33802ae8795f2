"""TensorObserver: exact, order- and batch-size-independent, mergeable histograms."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from calib.algorithms import compute_amax
from calib.stats import EXP_MIN, TensorObserver, dump_observers, load_observers


def _data(seed=0, n=50_000):
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(n) * 0.01, rng.standard_normal(n) * 3.0, rng.exponential(20.0, n // 10),
             np.zeros(1000), -rng.uniform(0, 1e-30, 100)]
    return np.concatenate(parts).astype(np.float32)


def _observe(chunks, **kw):
    o = TensorObserver("t", **kw)
    for c in chunks:
        o.update(c)
    return o


AMAX_CASES = [("max", {}), ("percentile", {"percentile": 99.9}), ("percentile", {"percentile": 99.9999}),
              ("entropy", {}), ("mse", {})]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_order_and_batch_size_independence(seed):
    x = _data(seed)
    rng = np.random.default_rng(100 + seed)
    a = _observe(np.array_split(x, 7))
    # shuffled and re-batched with very uneven sizes, largest values last
    y = x.copy()
    rng.shuffle(y)
    cuts = np.sort(rng.choice(np.arange(1, y.size), size=40, replace=False))
    b = _observe(np.split(y, cuts))
    z = np.sort(np.abs(x)) * np.sign(x[np.argsort(np.abs(x))])   # ascending |x|: the range grows many times
    c = _observe(np.array_split(z, 300))
    for o in (b, c):
        assert o.same_as(a)
        for alg, params in AMAX_CASES:
            va, vo = compute_amax(a, alg, **params), compute_amax(o, alg, **params)
            assert np.float64(va).tobytes() == np.float64(vo).tobytes(), alg


def test_histogram_is_exact_floor_of_abs_over_width():
    x = _data(3)
    o = _observe(np.array_split(x, 5))
    w = o.width
    assert o.exp > EXP_MIN and math.log2(w) == o.exp
    ref = np.bincount(np.floor(np.abs(x.astype(np.float64)) / w).astype(np.int64), minlength=o.bins)
    assert np.array_equal(ref, o.hist)
    # the width is the smallest power of two whose bins hold the max
    assert o.absmax < o.bins * w and o.absmax >= o.bins * w / 2
    assert o.hist.sum() == x.size == o.count


def test_merge_equals_single_observer():
    x = _data(4)
    whole = _observe([x])
    parts = np.array_split(x, 3)
    # each worker sees a different range (the small-valued part grows less)
    obs = [_observe([np.sort(p)]) for p in parts]
    merged = TensorObserver("t")
    for o in obs:
        merged.merge(o)
    assert merged.same_as(whole)
    merged2 = obs[2].copy().merge(obs[0]).merge(obs[1])
    assert merged2.same_as(whole)


def test_large_then_small_equals_small_then_large():
    small = np.full(100, 1e-3, np.float32)
    big = np.array([1e4], np.float32)
    a = _observe([small, big])
    b = _observe([big, small])
    assert a.same_as(b)
    assert a.hist[0] == 100 and a.hist.sum() == 101


def test_nan_inf_counted_not_fatal():
    o = TensorObserver("x")
    o.update(np.array([1.0, np.nan, -np.inf, np.inf, -2.0], np.float32))
    o.update(np.array([np.nan, np.nan], np.float32))
    assert (o.count, o.nan_count, o.inf_count) == (2, 3, 2)
    assert o.min == -2.0 and o.max == 1.0 and o.absmax == 2.0
    assert o.hist.sum() == 2
    assert compute_amax(o, "max") == 2.0


def test_dtypes_and_empty():
    o = TensorObserver()
    o.update(np.array([], np.float32))
    assert o.count == 0 and o.absmax == 0.0
    o.update(np.arange(-5, 6, dtype=np.int64).reshape(11, 1))
    o.update(np.array([0.5], np.float16))
    o.update(np.array([True, False]))
    assert o.count == 14 and o.min == -5 and o.max == 5
    with pytest.raises(TypeError):
        o.update(np.array(["a"]))


def test_zeros_only():
    o = _observe([np.zeros((4, 4), np.float32)])
    assert o.exp == EXP_MIN and o.hist[0] == 16 and o.absmax == 0.0
    assert compute_amax(o, "entropy") == 0.0


def test_histogram_2048_has_max_in_upper_half():
    x = _data(5)
    o = _observe([x])
    counts, width = o.histogram(2048)
    assert counts.sum() == x.size and counts.size == 2048
    top = int(np.nonzero(counts)[0].max())
    assert 1024 <= top < 2048
    assert top == int(o.absmax // width)


def test_large_tensor_chunked_path_matches_small_path():
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(1_300_000) * 5).astype(np.float32)
    a = _observe([x])                       # one update: chunked path
    b = _observe(np.array_split(x, 40))     # small updates: direct path
    assert a.same_as(b)


def test_pickle_and_state_round_trip():
    o = _observe([_data(6)])
    p = pickle.loads(pickle.dumps(o))
    assert p.same_as(o) and p.name == o.name
    q = TensorObserver.from_state(o.state())
    assert q.same_as(o)


def test_observers_round_trip_as_plain_arrays_without_pickle():
    """Histogram, range-only, empty and non-finite-counting observers, under any tensor name, in
    order; what is read is exactly what was written, and nothing but NumPy arrays is accepted."""
    import io

    hist = _observe([_data(1), np.array([np.nan, np.inf, -np.inf], np.float32)])
    ranged = _observe([_data(2)], histogram=False)
    small = _observe([np.arange(5, dtype=np.float32)], bins=4096)
    obs = {"/layer1/Relu_output_0": hist, "b:0.x": ranged, "empty": TensorObserver("empty"), "4096": small}
    arrays = hist.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    assert TensorObserver.from_arrays(arrays, "x").same_as(hist)
    back = load_observers(dump_observers(obs))
    assert list(back) == list(obs) and all(back[k].same_as(o) and back[k].name == k for k, o in obs.items())
    assert (back["/layer1/Relu_output_0"].nan_count, back["/layer1/Relu_output_0"].inf_count) == (1, 2)
    assert not back["b:0.x"].has_histogram and back["4096"].bins == 4096 and back["empty"].count == 0
    assert load_observers(dump_observers({})) == {}
    buf = io.BytesIO()
    np.savez(buf, format=np.asarray("calib-observers-1"), names=np.asarray(["a"], dtype=object))
    for bad in (b"", b"not an archive", dump_observers(obs)[:200], buf.getvalue(), pickle.dumps(obs)):
        with pytest.raises(ValueError):
            load_observers(bad)
    with pytest.raises(ValueError, match="lack the field .exp."):
        TensorObserver.from_arrays({k: v for k, v in arrays.items() if k != "exp"})


def test_bins_must_be_power_of_two():
    with pytest.raises(ValueError):
        TensorObserver(bins=3000)
    with pytest.raises(ValueError):
        TensorObserver(bins=1024)
    with pytest.raises(ValueError):
        TensorObserver().merge(TensorObserver(bins=4096))


@pytest.mark.parametrize("seed", [0, 1])
def test_add_zeros_equals_updating_zeros(seed):
    rng = np.random.default_rng(seed)
    cases = [np.array([], np.float32), _data(seed, 2000), np.abs(_data(seed, 2000)) + 1.0,
             -np.abs(_data(seed, 2000)) - 1e-3, np.array([np.nan, 3.0, -np.inf], np.float32),
             np.array([np.nan], np.float32)]
    for x in cases:
        for n in (0, 1, 17, 300_000):
            a = _observe(np.array_split(x, 3) if x.size else [x])
            a.add_zeros(n)
            parts = list(np.array_split(x, 3)) + [np.zeros(n, np.float32)]
            rng.shuffle(parts)
            b = _observe(parts)
            assert a.same_as(b), (x[:3], n)
            assert (a.min, a.max) == (b.min, b.max)
    with pytest.raises(ValueError):
        TensorObserver().add_zeros(-1)


def test_renamed_is_an_independent_exact_copy():
    o = _observe([_data(7)])
    r = o.renamed("other")
    assert r.name == "other" and o.name == "t" and r.same_as(o)
    r.update(np.array([1e6], np.float32))
    assert not r.same_as(o) and o.same_as(_observe([_data(7)]))


def test_range_only_observer_matches_ranges_and_refuses_histograms():
    """histogram=False (max calibration) keeps exactly the same range and counts, holds no
    histogram, and says so clearly when a histogram algorithm asks for one."""
    from calib.algorithms import compute_amax
    from calib.errors import AlgorithmError

    rng = np.random.default_rng(11)
    parts = [rng.normal(0, s, 5000).astype(np.float32) for s in (0.5, 3.0, 1.0)]
    parts[1][7] = np.nan
    full, ranged = TensorObserver("t"), TensorObserver("t", histogram=False)
    for p in parts:
        full.update(p)
        ranged.update(p)
    for k in ("min", "max", "count", "nan_count", "absmax"):
        assert getattr(ranged, k) == getattr(full, k), k
    assert not ranged.hist.any()
    assert compute_amax(ranged, "max") == compute_amax(full, "max")
    for alg in ("entropy", "percentile", "mse"):
        with pytest.raises(AlgorithmError, match="histogram"):
            compute_amax(ranged, alg)
    back = TensorObserver.from_state(ranged.state())
    assert back.same_as(ranged) and not back.has_histogram and not back.same_as(full)
    mixed = full.copy().merge(ranged)        # a range-only part makes the merge range-only
    assert not mixed.has_histogram and mixed.count == 2 * full.count and mixed.max == full.max


# -- binning backends: the optional numba kernel counts exactly what NumPy counts -------------
def _kernel_data(seed):
    rng = np.random.default_rng(seed)
    n = 300_000
    x = (rng.standard_normal(n) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    x[rng.random(n) < 0.3] = 0.0                                   # ReLU-like zeros
    x[rng.random(n) < 0.05] = np.float32(6.0)                      # saturated ReLU6 values
    x[:7] = [-0.0, 1e-42, -1e-38, 3e38 / 1e30, np.float32(2.0) ** -120, 1.0, -1.0]   # subnormal, tiny
    return x


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_numba_kernel_counts_exactly_what_numpy_counts(seed, monkeypatch):
    import calib.stats as st

    pytest.importorskip("numba")
    monkeypatch.delenv("CALIB_NUMBA", raising=False)
    monkeypatch.setattr(st, "_kernel", None)
    assert st._binning_kernel() is not None
    x = _kernel_data(seed)
    parts = [x[:70_000], x[70_000:71_000], x[71_000:], x * np.float32(8.0), x[::3].copy()]   # exp grows
    fast = _observe(parts)
    monkeypatch.setattr(st, "_kernel", False)                      # the NumPy path
    slow = _observe(parts)
    assert fast.same_as(slow) and fast.hist.sum() == fast.count
    monkeypatch.setattr(st, "_NUMBA_SLICE", 4099)                  # many kernel calls per update
    monkeypatch.setattr(st, "_kernel", None)
    assert _observe(parts).same_as(slow)


def test_numba_can_be_turned_off(monkeypatch):
    import calib.stats as st

    monkeypatch.setenv("CALIB_NUMBA", "0")
    monkeypatch.setattr(st, "_kernel", None)
    assert st._binning_kernel() is None
    x = _kernel_data(5)
    assert _observe([x]).same_as(_observe(np.array_split(x, 3)))


def test_add_range_equals_update_for_finite_values():
    x = _data(8)
    a = _observe(np.array_split(x, 4), histogram=False)
    b = TensorObserver("t", histogram=False)
    for c in np.array_split(x, 4):
        b.add_range(c.min(), c.max(), c.size)
    b.add_range(1.0, -1.0 + 3.0, 0)                                # nothing
    assert a.same_as(b)
    with pytest.raises(ValueError):
        b.add_range(np.nan, 1.0, 3)
    with pytest.raises(ValueError):
        b.add_range(2.0, 1.0, 3)
    with pytest.raises(ValueError):
        TensorObserver("h").add_range(0.0, 1.0, 3)                 # a histogram needs the values


def test_pending_sub_histograms_flush_exactly(monkeypatch):
    """The kernel's int32 counts carry over between updates: reading the histogram midway, a
    width that grows later, or the overflow guard firing on every call change nothing."""
    import calib.stats as st

    pytest.importorskip("numba")
    monkeypatch.delenv("CALIB_NUMBA", raising=False)
    monkeypatch.setattr(st, "_kernel", None)
    x = _kernel_data(7)
    parts = [x[:100_000], x[100_000:] * np.float32(0.5), x * np.float32(30.0), x[:40_000]]
    ref = _observe(parts)
    o = TensorObserver("t")
    seen = []
    for p in parts:
        o.update(p)
        seen.append(int(o.hist.sum()))                 # a read flushes the pending counts
    assert o.same_as(ref) and seen == list(np.cumsum([p.size for p in parts]))
    monkeypatch.setattr(st, "_PENDING_MAX", 50_000)    # a flush before every kernel call
    monkeypatch.setattr(st, "_NUMBA_SLICE", 40_000)
    assert _observe(parts).same_as(ref)
    back = pickle.loads(pickle.dumps(ref))
    assert back.same_as(ref) and back._pending is None


# -- ClipSplitObserver: x and clip(x, 0, hi) from one pass, exactly -----------------------------
def _split_parts(seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(200_000) * 4.0).astype(np.float32)
    x[rng.random(x.size) < 0.1] = 0.0
    x[:5] = [-0.0, 6.0, np.float32(6.0) + np.float32(2.0) ** -20, 1e-42, -1e-42]   # at, just above hi
    return [x[:60_000],                               # both signs
            np.abs(x[60_000:100_000]) * np.float32(0.01),  # small positives only
            -np.abs(x[100_000:140_000]) * np.float32(50.0),  # negatives only, far beyond the positives
            x[140_000:] * np.float32(3.0),            # wider: every width grows
            x[:1000].copy()]                          # NumPy-sized update


def _clip_ref(parts, hi):
    x, c = TensorObserver("x"), TensorObserver("c")
    for p in parts:
        x.update(p)
        c.update(np.minimum(np.maximum(p, np.float32(0.0)), np.float32(hi)))
    return x, c


@pytest.mark.parametrize("hi", [6.0, math.inf, 0.5, float(np.float32(1e30))])
@pytest.mark.parametrize("kernel", [True, False])
def test_clip_split_observer_gives_both_observers_exactly(hi, kernel, monkeypatch):
    import calib.stats as st
    from calib.stats import ClipSplitObserver

    if kernel:
        pytest.importorskip("numba")
        monkeypatch.delenv("CALIB_NUMBA", raising=False)
    monkeypatch.setattr(st, "_split_kernel", None if kernel else False)
    monkeypatch.setattr(st, "_kernel", None if kernel else False)
    parts = _split_parts(int(hi) % 7 if math.isfinite(hi) else 3)
    ref_x, ref_c = _clip_ref(parts, hi)
    s = ClipSplitObserver("x", hi)
    for p in parts:
        s.update(p)
    assert (st._split_binning_kernel() is not None) == kernel
    assert s.observer().same_as(ref_x) and s.observer("y").name == "y"
    c = s.clipped("c")
    assert c.same_as(ref_c) and c.name == "c" and c.min == 0.0 and c.max == min(hi, ref_x.max)
    for alg in ("entropy", "percentile", "mse", "max"):
        assert compute_amax(c, alg) == compute_amax(ref_c, alg)
    # any order, any batching: the same statistics
    allx = np.concatenate(parts)
    t = ClipSplitObserver("x", hi)
    for p in np.array_split(allx[::-1].copy(), 7):
        t.update(p)
    assert t.observer().same_as(ref_x) and t.clipped("c").same_as(ref_c)
    # counts: negatives land in bin 0 of the clipped tensor, values above hi in hi's bin
    n_neg = int((allx < 0).sum())
    n_zero = int((allx == 0).sum())
    assert c.hist[0] >= n_neg + n_zero and c.count == allx.size


def test_clip_split_observer_float16_and_bad_input():
    from calib.stats import ClipSplitObserver

    x = (np.random.default_rng(1).standard_normal(70_000) * 5).astype(np.float16)
    s = ClipSplitObserver("x", 6.0).update(x)
    ref_x, ref_c = _clip_ref([x.astype(np.float32)], 6.0)
    assert s.observer().same_as(ref_x) and s.clipped("c").same_as(ref_c)
    empty = ClipSplitObserver("e", 6.0)
    assert empty.observer().same_as(TensorObserver("e")) and empty.clipped("c").same_as(TensorObserver("c"))
    with pytest.raises(ValueError, match="finite"):
        ClipSplitObserver("x", 6.0).update(np.array([1.0, np.nan], np.float32))
    with pytest.raises(TypeError):
        ClipSplitObserver("x", 6.0).update(np.ones(3, np.float64))
    for bad in (0.0, -1.0, 0.1):                      # not > 0, or not a float32 value
        with pytest.raises(ValueError, match="upper bound"):
            ClipSplitObserver("x", bad)
