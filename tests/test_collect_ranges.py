"""Relu / Clip outputs derived from their inputs: ranges (max calibration) and histograms
(ClipSplitObserver), bit-identical to capturing them."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto

from calib.collect import collect_statistics, default_tensors, plan_clip_splits, plan_derivations, plan_ranges
from calib.model import Model


def _clips(path, opset=17):
    """x -> Mul -> Relu -> Clip(0, 6) -> Clip(2, 1) (lo > hi), Clip without bounds, Clip with a
    computed bound (not derivable), Pad of a derived tensor, LeakyRelu (not derived)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    inits = [oh.make_tensor("three", f, [], [3.0]), oh.make_tensor("zero", f, [], [0.0]),
             oh.make_tensor("six", f, [], [6.0]), oh.make_tensor("two", f, [], [2.0]),
             oh.make_tensor("one", f, [], [1.0]), oh.make_tensor("pads", i64, [4], [0, 1, 0, 2]),
             oh.make_tensor("idx1", i64, [], [1])]
    nodes = [
        oh.make_node("Mul", ["x", "three"], ["m"]),
        oh.make_node("Relu", ["m"], ["r"]),
        oh.make_node("Clip", ["r", "zero", "six"], ["c"]),
        oh.make_node("Clip", ["c", "two", "one"], ["c_bad"]),          # lo > hi: every value is hi
        oh.make_node("Clip", ["m"], ["c_none"]),                        # no bounds: identity
        oh.make_node("Clip", ["m", "", "one"], ["c_hi"]),               # upper bound only
        oh.make_node("Shape", ["x"], ["xs"]),
        oh.make_node("Gather", ["xs", "idx1"], ["x1"], axis=0),
        oh.make_node("Cast", ["x1"], ["five"], to=f),                   # 5.0, but not a constant
        oh.make_node("Clip", ["m", "zero", "five"], ["c_dyn"]),         # computed bound: captured
        oh.make_node("Pad", ["c", "pads"], ["c_pad"]),                  # zeros around a derived tensor
        oh.make_node("LeakyRelu", ["m"], ["lr"], alpha=0.1),
        oh.make_node("Relu", ["x"], ["rx"]),                            # from a graph input
        oh.make_node("Add", ["c_pad", "one"], ["y"]),
    ]
    outs = [oh.make_tensor_value_info(n, f, None) for n in ("y", "c_bad", "c_none", "c_hi", "c_dyn", "lr", "rx")]
    g = oh.make_graph(nodes, "clips", [oh.make_tensor_value_info("x", f, ["N", 5])], outs, initializer=inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8), path)
    return Model.load(path)


def _same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].same_as(b[k]), (k, a[k], b[k])


def test_plan_ranges_picks_relu_and_constant_clips(tmp_path):
    m = _clips(tmp_path / "c.onnx")
    wanted = default_tensors(m)
    plan = plan_derivations(m, wanted)
    ranges = plan_ranges(m, [t for t in wanted if t not in plan])
    assert {k: v[0] for k, v in ranges.items()} == {"r": "m", "c": "r", "c_bad": "c", "c_none": "m",
                                                    "c_hi": "m", "rx": "x"}
    assert ranges["c"][1:] == (0.0, 6.0) and ranges["c_bad"][1:] == (2.0, 1.0)
    assert ranges["c_hi"][1:] == (-float("inf"), 1.0) and ranges["r"][1:] == (0.0, float("inf"))
    # histograms: only clip(x, 0, hi > 0) of a source that is not derived itself, one per source
    assert plan_clip_splits(ranges) == {"r": ("m", 0.0, float("inf")), "rx": ("x", 0.0, float("inf"))}


@pytest.mark.parametrize("histogram", [False, True])
@pytest.mark.parametrize("poison", [False, True])
def test_range_derivation_is_exact_with_and_without_nonfinite_values(tmp_path, poison, histogram, monkeypatch):
    import calib.backends.onnxruntime as ort_backend
    import calib.collect as cc

    calls = []
    real = cc._Updater._recapture
    monkeypatch.setattr(cc._Updater, "_recapture", lambda self, deps, feed: (calls.append(1), real(self, deps, feed)))
    captured = []                                        # what each engine was asked to capture

    class Spy(ort_backend.OrtEngine):
        def __init__(self, *a, **kw):
            captured.append(set(kw.get("capture") or ()))
            super().__init__(*a, **kw)

    monkeypatch.setattr(ort_backend, "OrtEngine", Spy)
    m = _clips(tmp_path / "c.onnx")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((9, 5)) * 4).astype(np.float32)
    x[4] = np.abs(x[4])                                  # a positive-only sample
    if poison:                                           # non-finite values in some runs only
        x[1, 2] = np.nan
        x[6, 0] = np.inf
        x[7, 3] = -np.inf
    feeds = [{"x": x[:3]}, {"x": x[3:5]}, {"x": x[5:]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # 'five' holds one value per run: compare like with like (same runs)
        for rb in (None, 1, 4):
            ref = collect_statistics(m, feeds, progress=False, derive=False, histogram=histogram, workers=0,
                                     run_batch=rb)
            for kw in ({"workers": 0}, {"workers": 2}, {"workers": 1}):
                _same(ref, collect_statistics(m, feeds, progress=False, histogram=histogram, run_batch=rb, **kw))
        # explicit tensors (a derived output and its source named in any order)
        names = ["c", "m", "r", "c_pad", "rx"]
        _same(collect_statistics(m, feeds, names, progress=False, derive=False, histogram=histogram),
              collect_statistics(m, feeds, names, progress=False, histogram=histogram))
        # the derived outputs are captured only by the second engine, for the runs with NaN / Inf
        captured.clear()
        collect_statistics(m, feeds, progress=False, histogram=histogram, workers=0)
    derived = {"r", "rx"} if histogram else {"r", "c", "c_bad", "c_none", "c_hi", "rx"}
    assert not derived & captured[0] and "m" in captured[0]
    assert len(captured) == (2 if poison else 1) and (not poison or captured[1] == derived)
    assert ref["c"].max <= 6.0 and ref["c_bad"].min == ref["c_bad"].max == 1.0
    assert ref["r"].has_histogram == histogram and ref["r"].min == 0.0
    assert bool(calls) == poison                         # runs with NaN / Inf computed again, only those
    if poison:
        assert ref["m"].nan_count == 1 and ref["m"].inf_count == 2
        assert ref["c"].nonfinite == 1 and ref["c"].count == x.size - 1     # Clip(inf) = 6 counts
    else:
        assert all(o.nonfinite == 0 for o in ref.values())
        assert ref["c_pad"].count == 9 * 8 and ref["c_pad"].min == 0.0


def test_range_derivation_identical_on_efficientnet(efficientnet_path, imagenet_dir):
    from calib.datasets import open_dataset

    model = Model.load(efficientnet_path)
    ds = open_dataset(imagenet_dir, model, "efficientnet-lite", limit=6, seed=0)
    x = np.concatenate([b.feed["input"] for b in ds.batches(batch_size=6)])
    feeds = [{"input": x[:2]}, {"input": x[2:]}]
    wanted = default_tensors(model)
    plan = plan_derivations(model, wanted)
    ranges = plan_ranges(model, [t for t in wanted if t not in plan])
    assert len(ranges) == 33 and {model.producers()[k].op_type for k in ranges} == {"Clip"}
    _same(collect_statistics(model, feeds, progress=False, derive=False, histogram=False),
          collect_statistics(model, feeds, progress=False, histogram=False, run_batch=1))
