"""collect_statistics on the real EfficientNet-Lite0 with real ImageNet photographs."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto

from calib.algorithms import compute_amax
from calib.backends.onnxruntime import OrtEngine
from calib.collect import collect_statistics
from calib.errors import CalibError, EmptyDatasetError
from calib.model import Model


def _decode(paths):
    """The documented EfficientNet-Lite0 preprocessing, done directly with Pillow (fallback)."""
    from PIL import Image

    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BICUBIC)
        w, h = im.size
        l, t = (w - 224) // 2, (h - 224) // 2
        a = np.asarray(im.crop((l, t, l + 224, t + 224)), np.float32)
        out.append(((a - 127.0) / 128.0).transpose(2, 0, 1))
    return np.stack(out)


@pytest.fixture(scope="module")
def model(efficientnet_path):
    return Model.load(efficientnet_path)


@pytest.fixture(scope="module")
def images(model, imagenet_dir):
    try:
        from calib.datasets import open_dataset

        ds = open_dataset(imagenet_dir, model, "efficientnet-lite", limit=8, seed=0)
        x = np.concatenate([b.feed["input"] for b in ds.batches(batch_size=8)])
    except (ImportError, CalibError, TypeError, AttributeError):
        x = _decode(sorted(imagenet_dir.glob("*.JPEG"))[:8])
    assert x.shape == (8, 3, 224, 224) and x.dtype == np.float32
    return x


@pytest.fixture(scope="module")
def float_tensors(model, images):
    """Every float tensor of the model (by running it once with every activation captured)."""
    outs = OrtEngine(model, capture=model.activation_tensors()).run({"input": images[:1]})
    return ["input"] + [k for k in model.activation_tensors() if outs[k].dtype.kind == "f"]


def test_all_float_tensors_observed_with_finite_amax(model, images, float_tensors):
    """Every float tensor observed; every algorithm gives an amax in [0, absmax] for each, max
    the absmax itself (their speed over these observers is ``benchmarks/amax_speed.py``'s)."""
    feeds = [{"input": images[:4]}, {"input": images[4:]}]
    obs = collect_statistics(model, feeds, progress=False)
    assert list(obs) == float_tensors                 # topological order, inputs first, no int tensors
    assert len(obs) > 100
    assert all(o.count > 0 and o.nonfinite == 0 for o in obs.values())
    assert obs["input"].count == images.size
    assert obs["input"].max == float(images.max()) and obs["input"].min == float(images.min())
    assert obs["logits"].count == 8 * 1000
    for alg in ("entropy", "max", "percentile", "mse"):
        amax = {k: compute_amax(o, alg) for k, o in obs.items()}
        assert all(np.isfinite(v) and 0 <= v <= obs[k].absmax for k, v in amax.items()), alg
        clipped = sum(v < obs[k].absmax for k, v in amax.items())
        assert (clipped == 0) if alg == "max" else (clipped > 0), (alg, clipped)
    # ReLU6 (Clip 0..6) outputs: max within [0, 6]
    clip = [k for k in obs if "Clip" in k]
    assert clip and all(0.0 <= obs[k].min and obs[k].max <= 6.0 for k in clip)


def test_same_statistics_whatever_batching_and_threads(model, images):
    # captured at ONNX Runtime's ``all`` level (NCHWc convolutions): still the same values for
    # any batch size and thread count
    a = collect_statistics(model, [{"input": images}], progress=False, workers=0, run_batch=None, threads=1)
    b = collect_statistics(model, [{"input": images[i:i + 3]} for i in range(0, 8, 3)],
                           progress=False, workers=2, run_batch=1, threads=2)
    assert list(a) == list(b)
    for k in a:
        assert a[k].same_as(b[k]), k
        assert compute_amax(a[k], "entropy") == compute_amax(b[k], "entropy")


def test_explicit_tensors_and_batch_objects(model, images):
    class B:
        def __init__(self, x):
            self.feed = {"input": x}

    names = ["/_conv_stem/Conv_output_0", "logits"]
    obs = collect_statistics(model, (B(images[i:i + 2]) for i in range(0, 4, 2)), names, progress=True)
    assert list(obs) == names and obs["logits"].count == 4000
    with pytest.raises(CalibError, match="unknown tensors"):
        collect_statistics(model, [{"input": images[:1]}], ["no_such_tensor"], progress=False)


def _tiny(path):
    g = oh.make_graph([oh.make_node("Log", ["x"], ["l"]), oh.make_node("Shape", ["l"], ["s"]),
                       oh.make_node("Relu", ["l"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                       oh.make_tensor_value_info("s", TensorProto.INT64, [2])])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), path)
    return Model.load(path)


def test_nonfinite_activations_are_counted_and_reported(tmp_path):
    m = _tiny(tmp_path / "t.onnx")
    x = np.array([[1.0, 0.0, -1.0], [2.0, 3.0, 4.0]], np.float32)     # log: -inf and nan
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        obs = collect_statistics(m, [{"x": x}], progress=False)
    assert list(obs) == ["x", "l", "y"]                                 # int64 shape tensor skipped
    assert obs["l"].nan_count == 1 and obs["l"].inf_count == 1 and obs["l"].count == 4
    assert any("non-finite" in str(i.message) and "'l'" in str(i.message) for i in w)
    assert compute_amax(obs["l"], "max") == pytest.approx(np.log(4.0))


def test_empty_and_bad_batches(tmp_path):
    m = _tiny(tmp_path / "t.onnx")
    with pytest.raises(EmptyDatasetError):
        collect_statistics(m, [], progress=False)
    with pytest.raises(CalibError):
        collect_statistics(m, [[1, 2, 3]], progress=False)
    with pytest.raises(CalibError):
        collect_statistics(m, [{"wrong": np.zeros((1, 3), np.float32)}], progress=False)


# -- derived observers: bit-identical to capturing and histogramming the tensor itself ----------
def _same_observers(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].same_as(b[k]), k
        assert a[k].name == b[k].name == k


def test_derived_observers_identical_on_efficientnet(model, images):
    from calib.collect import default_tensors, plan_clip_splits, plan_derivations, plan_ranges

    plan = plan_derivations(model, default_tensors(model))
    pads = [k for k, d in plan.items() if d.kind == "pad"]
    assert len(pads) == 17 and all(model.producers()[k].op_type == "Pad" for k in pads)
    ranges = plan_ranges(model, [t for t in default_tensors(model) if t not in plan])
    assert len(plan_clip_splits(ranges)) == 33        # every ReLU6 output: not captured, not binned
    feeds = [{"input": images[:3]}, {"input": images[3:8]}]
    direct = collect_statistics(model, feeds, progress=False, derive=False)
    derived = collect_statistics(model, feeds, progress=False, derive=True, workers=1, run_batch=2)
    _same_observers(direct, derived)
    assert all(k in derived for k in pads)           # the padded tensors are still reported
    for alg in ("entropy", "max", "percentile", "mse"):
        for k in pads + list(plan_clip_splits(ranges)):
            assert compute_amax(direct[k], alg) == compute_amax(derived[k], alg)


def _chains(path, opset=17):
    """Value-preserving chains: Transpose -> Pad -> Reshape, Pad -> Pad, Concat of derived
    tensors, Identity/Dropout/Flatten/Squeeze/Unsqueeze, plus ops that must NOT be derived:
    Pad with value 1, reflect Pad, Relu, MaxPool, a Pad after a Reshape (shape unknown)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    inits = [
        oh.make_tensor("pads_a", i64, [8], [0, 0, 1, 2, 0, 0, 3, 0]),
        oh.make_tensor("shape_r", i64, [2], [0, -1]),
        oh.make_tensor("one", f, [], [1.0]),
        oh.make_tensor("zero", f, [], [0.0]),
        oh.make_tensor("ax0", i64, [1], [0]),
        oh.make_tensor("pads_b", i64, [6], [0, 1, 0, 0, 0, 2]),
        oh.make_tensor("shape_3d", i64, [3], [0, 3, -1]),
        oh.make_tensor("half", i64, [1], [4]),
    ]
    nodes = [
        oh.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
        # pads computed by a constant subgraph (ConstantOfShape + Concat), as PyTorch exports them
        oh.make_node("ConstantOfShape", ["half"], ["zeros4"], value=oh.make_tensor("v", i64, [1], [0])),
        oh.make_node("Constant", [], ["ones4"], value=oh.make_tensor("c", i64, [4], [0, 0, 1, 1])),
        oh.make_node("Concat", ["zeros4", "ones4"], ["pads_c"], axis=0),
        oh.make_node("Pad", ["t", "pads_a", "zero"], ["tp"], mode="constant"),
        oh.make_node("Pad", ["tp", "pads_c"], ["tpp"]),                     # Pad -> Pad, value absent
        oh.make_node("Reshape", ["tpp", "shape_r"], ["r"]),
        oh.make_node("Identity", ["r"], ["r_id"]),
        oh.make_node("Relu", ["x"], ["relu"]),
        oh.make_node("Transpose", ["t"], ["tt"], perm=[0, 1, 3, 2]),
        oh.make_node("Concat", ["x", "tt", "relu"], ["cat"], axis=1),
        oh.make_node("Pad", ["cat", "pads_a"], ["cat_p"]),                 # Pad of a Concat
        oh.make_node("Pad", ["x", "pads_a", "one"], ["p_one"]),            # value 1: not derivable
        oh.make_node("Pad", ["x", "pads_a"], ["p_refl"], mode="reflect"),  # not derivable
        oh.make_node("MaxPool", ["tp"], ["mp"], kernel_shape=[2, 2]),      # not derivable
        oh.make_node("Flatten", ["mp"], ["mp_flat"], axis=1),
        oh.make_node("Dropout", ["mp_flat"], ["mp_drop"]),
        oh.make_node("Unsqueeze", ["mp_drop", "ax0"], ["mp_u"]),
        oh.make_node("Squeeze", ["mp_u", "ax0"], ["mp_s"]),
        oh.make_node("Reshape", ["relu", "shape_3d"], ["relu3"]),
        oh.make_node("Pad", ["relu3", "pads_b"], ["relu3_p"]),             # input shape unknown: captured
        oh.make_node("Concat", ["r_id", "mp_s"], ["y"], axis=1),
    ]
    outs = [oh.make_tensor_value_info(n, f, None) for n in ("y", "cat_p", "p_one", "p_refl", "relu3_p")]
    g = oh.make_graph(nodes, "chains", [oh.make_tensor_value_info("x", f, ["N", 3, 4, 5])], outs, initializer=inits)
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8), path)
    return Model.load(path)


def test_derived_observers_identical_on_synthetic_chains(tmp_path):
    from calib.collect import default_tensors, plan_derivations

    m = _chains(tmp_path / "chains.onnx")
    plan = plan_derivations(m, default_tensors(m))
    kinds = {k: d.kind for k, d in plan.items()}
    assert {k: kinds.get(k) for k in ("t", "tt", "tp", "tpp", "r", "r_id", "cat", "cat_p", "mp_flat", "mp_drop",
                                      "mp_u", "mp_s", "relu3", "y")} == {
        "t": "alias", "tt": "alias", "tp": "pad", "tpp": "pad", "r": "alias", "r_id": "alias", "cat": "concat",
        "cat_p": "pad", "mp_flat": "alias", "mp_drop": "alias", "mp_u": "alias", "mp_s": "alias",
        "relu3": "alias", "y": "concat"}
    for k in ("relu", "p_one", "p_refl", "mp", "relu3_p"):
        assert k not in plan, k
    assert plan["tp"].pads.tolist() == [0, 0, 1, 2, 0, 0, 3, 0]
    assert plan["tpp"].pads.tolist() == [0, 0, 0, 0, 0, 0, 1, 1]    # from the constant subgraph
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3, 4, 5)).astype(np.float32) * np.float32(3.0)
    x[0, 0, 0, 0] = np.nan
    x[1, 2, 3, 4] = -np.inf
    x[2] = 0.0
    x[3] = np.abs(x[3]) + np.float32(0.5)                             # a positive-only sample
    feeds = [{"x": x[:1]}, {"x": x[1:4]}, {"x": x[4:]}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        direct = collect_statistics(m, feeds, progress=False, derive=False)
        for kw in ({"workers": 0, "run_batch": None}, {"workers": 2, "run_batch": 2}, {"run_batch": 1}):
            _same_observers(direct, collect_statistics(m, feeds, progress=False, **kw))
        pos = collect_statistics(m, [{"x": x[3:4]}], progress=False)     # zeros extend min down to 0
        assert pos["x"].min > 0 and pos["tp"].min == 0.0 and pos["cat_p"].min == 0.0
        _same_observers(collect_statistics(m, [{"x": x[3:4]}], progress=False, derive=False), pos)
        # explicit tensors: a derived tensor whose source is not observed is captured itself
        names = ["tpp", "r", "tp", "y"]
        _same_observers(collect_statistics(m, feeds, names, progress=False, derive=False),
                        collect_statistics(m, feeds, names, progress=False))
    assert direct["tp"].nan_count == 1 and direct["tp"].inf_count == 1
    assert direct["tp"].count == 7 * 3 * 9 * 6 - 2
