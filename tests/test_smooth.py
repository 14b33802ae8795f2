"""Channel smoothing (calib.smooth): sites, factors, exactness of the rewrite on real models,
and its use by calibrate / the CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx.helper as oh
import pytest
from onnx import TensorProto, numpy_helper

from calib import smooth
from calib.backends.onnxruntime import OrtEngine
from calib.datasets import Preprocess, open_dataset
from calib.model import Model
from calib.qdq import prepare, quantize_model


def _out(model, feed) -> np.ndarray:
    (y,) = list(OrtEngine(model).run(feed).values())[:1]
    return np.asarray(y, np.float64)


def _random_factors(sites, seed=0):
    rng = np.random.default_rng(seed)
    return {s.tensor: np.exp(rng.uniform(-2.0, 2.0, s.channels)).astype(np.float32) for s in sites}


# --------------------------------------------------------------------------- sites on real models
def test_sites_of_the_shared_models(shared_model):
    det = smooth.find_sites(Model.load(shared_model("ppocrv4_det")))
    kinds = sorted({(s.kind, s.producer) for s in det})
    assert kinds == [("conv", "affine"), ("conv", "batchnorm")]
    assert sum(s.producer == "affine" for s in det) == 26
    # the learnable affine (Mul, Add) after every hardswish feeding a convolution
    assert "p2o.Add.35" in {s.tensor for s in det}
    rec = smooth.find_sites(Model.load(shared_model("ppocrv4_rec")))
    assert {s.kind for s in rec} == {"conv", "last"}       # MatMul inputs after LayerNorm's affine
    # ImageNet classifiers: Clip/Relu/Concat/Pool feed their convolutions, nothing to absorb 1/s
    assert smooth.find_sites(Model.load(shared_model("efficientnet_lite0"))) == []
    assert smooth.find_sites(Model.load(shared_model("squeezenet1_1_fp32"))) == []
    sq = smooth.find_sites(Model.load(shared_model("squeezenet1_1_fp32")), producers=("weights",))
    assert len(sq) == 8 and all(s.producer == "weights" for s in sq)   # squeeze conv -> Relu -> expands


def test_a_prepared_model_has_the_same_sites_and_rewrite(shared_model):
    m = Model.load(shared_model("ppocrv4_rec"))
    p = prepare(m)
    sites = smooth.find_sites(m)
    again = smooth.find_sites(p)
    assert [s.weight_colmax.tobytes() for s in again] == [s.weight_colmax.tobytes() for s in sites]
    assert [(s.tensor, s.kind, s.channels, s.rank, s.producer, s.consumers) for s in again] == \
        [(s.tensor, s.kind, s.channels, s.rank, s.producer, s.consumers) for s in sites]
    factors = _random_factors(sites)
    assert smooth.apply(p, factors).serialize() == smooth.apply(m, factors).serialize()
    assert p.serialize() == prepare(m).serialize()      # applying did not touch it


def test_calibrate_prepares_the_model_once(monkeypatch, shared_model, ocr_lines_dir):
    import calib.preparation
    from calib.pipeline import calibrate

    calls = []
    fold = calib.preparation.fold_batchnorm
    monkeypatch.setattr(calib.preparation, "fold_batchnorm", lambda G: calls.append(1) or fold(G))
    m = Model.load(shared_model("ppocrv4_det"))
    ds = open_dataset(ocr_lines_dir, m, Preprocess.preset("paddleocr-det", resize=96))
    res = calibrate(m, None, dataset=ds, samples=2, batch_size=1, algorithm="max", evaluate=False,
                    progress=False, write=False)
    assert len(res.smoothing) == 27 and len(calls) == 1


@pytest.mark.parametrize("name,preset,all_producers", [
    ("ppocrv4_det", "paddleocr-det", True),
    ("ppocrv4_rec", "paddleocr-rec", True),
    ("squeezenet1_1_fp32", "caffe", True),
])
def test_rewrite_is_exact_on_real_models_and_images(name, preset, all_producers, shared_model,
                                                    ocr_lines_dir, imagenet_dir):
    m = Model.load(shared_model(name))
    producers = ("affine", "batchnorm", "weights") if all_producers else smooth.PRODUCERS
    sites = smooth.find_sites(m, producers=producers)
    assert sites
    factors = _random_factors(sites)          # e**-2 .. e**2 per channel: far from a no-op
    sm = smooth.apply(m, factors)
    pre = Preprocess.preset(preset, resize=160) if name == "ppocrv4_det" else preset
    data = imagenet_dir if name.startswith("squeeze") else ocr_lines_dir
    b = next(iter(open_dataset(data, m, pre).subset(limit=2, seed=0).batches(batch_size=1)))
    ref, got = _out(prepare(m), b.feed), _out(sm, b.feed)
    # float32 rounding through ~60 layers with factors of e**+-2: well under 0.1% of the output range
    assert np.abs(got - ref).max() <= 1e-3 * max(np.abs(ref).max(), 1e-3)
    # and the rewrite did change the constants
    assert sm.serialize() != prepare(m).serialize()


# --------------------------------------------------------------------------- synthetic graphs
def _affine_conv_model(extra_consumer: bool = False, pads=(1, 1, 1, 1), group=4):
    """x -> Conv -> Mul(a) -> Add(b) -> t -> Conv(group) -> y ; optionally t also -> Relu -> z."""
    rng = np.random.default_rng(1)
    w0 = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w0")
    w1 = numpy_helper.from_array(rng.standard_normal((8, 4 // group, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1")
    a = numpy_helper.from_array(np.array([0.5, 3.0, 0.1, 20.0], np.float32).reshape(1, 4, 1, 1), "a")
    c = numpy_helper.from_array(np.float32(0.25), "c")
    nodes = [oh.make_node("Conv", ["x", "w0"], ["h"], name="conv0"),
             oh.make_node("Mul", ["h", "a"], ["ha"], name="mul"),
             oh.make_node("Add", ["ha", "c"], ["t"], name="add"),
             oh.make_node("Conv", ["t", "w1", "b1"], ["y"], name="conv1", pads=list(pads), group=group)]
    outputs = [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_consumer:
        nodes.append(oh.make_node("Relu", ["t"], ["z"], name="relu"))
        outputs.append(oh.make_tensor_value_info("z", TensorProto.FLOAT, None))
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])], outputs,
                      initializer=[w0, w1, b1, a, c])
    return Model.from_proto(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)], ir_version=8))


@pytest.mark.parametrize("group", [1, 2, 4])
def test_affine_site_exact_for_every_conv_grouping(group):
    m = _affine_conv_model(group=group)
    (site,) = smooth.find_sites(m)
    assert (site.tensor, site.kind, site.channels, site.producer) == ("t", "conv", 4, "affine")
    f = {"t": np.array([0.1, 2.0, 0.5, 8.0], np.float32)}
    x = {"x": np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(_out(smooth.apply(m, f), x), _out(m, x), rtol=1e-5, atol=1e-5)
    # the smoothed tensor holds t / s, channel by channel
    probe, names = smooth.observed(m, [site], f)
    (name,) = names.values()
    e = OrtEngine(probe, capture=[name, "t"])
    o = e.run(x)
    np.testing.assert_allclose(o[name], o["t"] / f["t"].reshape(1, 4, 1, 1), rtol=1e-6)


def test_a_tensor_with_a_non_weighted_consumer_is_not_a_site():
    assert smooth.find_sites(_affine_conv_model(extra_consumer=True)) == []
    with pytest.raises(Exception, match="not a smoothing site"):
        quantize_model(_affine_conv_model(extra_consumer=True), {"t": 1.0, "x": 1.0},
                       smooth={"t": np.ones(4, np.float32)})


def test_matmul_site_on_the_last_axis_is_exact():
    rng = np.random.default_rng(3)
    gamma = numpy_helper.from_array(rng.uniform(0.1, 5, 6).astype(np.float32), "gamma")
    beta = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "beta")
    w = numpy_helper.from_array(rng.standard_normal((6, 5)).astype(np.float32), "w")
    wt = numpy_helper.from_array(rng.standard_normal((5, 6)).astype(np.float32), "wt")
    nodes = [oh.make_node("Mul", ["x", "gamma"], ["xg"]), oh.make_node("Add", ["xg", "beta"], ["t"]),
             oh.make_node("MatMul", ["t", "w"], ["y"]),
             oh.make_node("Gemm", ["t2", "wt"], ["y2"], transB=1),
             oh.make_node("Reshape", ["t", "shape"], ["t2"])]
    shape = numpy_helper.from_array(np.array([-1, 6], np.int64), "shape")
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, None),
                       oh.make_tensor_value_info("y2", TensorProto.FLOAT, None)],
                      initializer=[gamma, beta, w, wt, shape])
    m = Model.from_proto(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)], ir_version=8))
    # t also feeds a Reshape: not a site; the Gemm's input t2 has no affine producer
    assert smooth.find_sites(m) == []
    nodes2 = nodes[:3]
    g2 = oh.make_graph(nodes2, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6])],
                       [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[gamma, beta, w])
    m2 = Model.from_proto(oh.make_model(g2, opset_imports=[oh.make_opsetid("", 13)], ir_version=8))
    (site,) = smooth.find_sites(m2)
    assert (site.kind, site.channels, site.rank) == ("last", 6, None)
    f = {"t": np.linspace(0.2, 4.0, 6).astype(np.float32)}
    x = {"x": rng.standard_normal((2, 3, 6)).astype(np.float32)}
    np.testing.assert_allclose(_out(smooth.apply(m2, f), x), _out(m2, x), rtol=1e-5, atol=1e-5)
    # the per-channel range probe gives one row per sample and the right maxima
    probe, names = smooth.range_probe(m2, [site])
    o = OrtEngine(probe).run(x)
    lo, hi = names["t"]
    t = OrtEngine(m2, capture=["t"]).run(x)["t"]
    np.testing.assert_allclose(smooth.channel_absmax(o[lo], o[hi], 6), np.abs(t).reshape(-1, 6).max(0), rtol=1e-6)


# --------------------------------------------------------------------------- factors
def _site(channels=4, colmax=None):
    return smooth.SmoothSite(tensor="t", kind="conv", channels=channels, rank=4, producer="affine",
                             weight_colmax=np.ones(channels) if colmax is None else np.asarray(colmax, float))


def test_factors_alpha_one_evens_channels_and_keeps_the_range():
    r = np.array([0.5, 2.0, 46.0, 1.0])
    (s,) = smooth.factors([_site()], {"t": r}, alpha=1.0).values()
    np.testing.assert_allclose(r / s, np.full(4, 46.0), rtol=1e-6)      # every channel now spans 46


def test_factors_alpha_balances_against_weights_and_zero_is_a_no_op():
    r, w = np.array([1.0, 4.0, 16.0, 64.0]), np.array([1.0, 1.0, 1.0, 8.0])
    (s,) = smooth.factors([_site(colmax=w)], {"t": r}, alpha=0.5).values()
    np.testing.assert_allclose(s / s[0], np.sqrt(r / r[0]) / np.sqrt(w / w[0]), rtol=1e-6)
    assert (r / s).max() == pytest.approx(64.0, rel=1e-6)
    (s0,) = smooth.factors([_site(colmax=np.ones(4))], {"t": r}, alpha=0.0).values()
    np.testing.assert_allclose(s0, np.ones(4), rtol=1e-6)


def test_factors_skip_dead_and_mismatched_tensors_and_cap_the_spread():
    assert smooth.factors([_site()], {"t": np.zeros(4)}) == {}
    assert smooth.factors([_site()], {"t": np.ones(5)}) == {}
    assert smooth.factors([_site()], {}) == {}
    (s,) = smooth.factors([_site()], {"t": np.array([0.0, 1e-12, 1.0, 1e6])}, alpha=1.0).values()
    assert np.all(s > 0) and s.max() / s.min() <= smooth.MAX_RATIO * (1 + 1e-6)
    with pytest.raises(ValueError, match="alpha"):
        smooth.factors([_site()], {"t": np.ones(4)}, alpha=1.5)


# --------------------------------------------------------------------------- CLI
def test_cli_rejects_a_bad_alpha_in_one_line_and_writes_nothing(tmp_path, shared_model, ocr_lines_dir, snapshot):
    model = tmp_path / "det.onnx"
    model.write_bytes(shared_model("ppocrv4_det").read_bytes())
    before = snapshot(tmp_path)
    p = subprocess.run([sys.executable, "-m", "calib", "calibrate", "--model", str(model), "--data",
                        str(ocr_lines_dir), "--preset", "paddleocr-det", "--smooth", "1.5"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "--smooth" in p.stderr
    assert snapshot(tmp_path) == before


def test_cli_no_smooth_and_smooth_reach_the_summary(tmp_path, shared_model, ocr_lines_dir):
    model = tmp_path / "det.onnx"
    model.write_bytes(shared_model("ppocrv4_det").read_bytes())
    runs = {}
    for flag in (["--no-smooth"], ["--smooth", "0.5"], ["--no-bias-correction"]):
        out = tmp_path / flag[0].strip("-")
        p = subprocess.run([sys.executable, "-m", "calib", "calibrate", "--model", str(model), "--data",
                            str(ocr_lines_dir), "--preset", "paddleocr-det", "--resize", "96", "--samples", "4",
                            "--batch-size", "1", "--no-eval", "--out", str(out), "--json", *flag],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        import json

        runs[flag[0]] = json.loads(p.stdout)
    assert runs["--no-smooth"]["smoothing"] is None
    sm = runs["--smooth"]["smoothing"]
    assert sm["alpha"] == 0.5 and sm["probe_samples"] == 4 and len(sm["tensors"]) == 27
    assert "27 tensors smoothed" in runs["--smooth"]["quantization"]["summary"]
    # bias correction: on unless --no-bias-correction, measured on the (4) calibration samples
    bc = runs["--smooth"]["bias_correction"]
    assert bc["samples"] == 4 and bc["layers"] > 50
    assert runs["--smooth"]["quantization"]["summary"].endswith(f"{bc['layers']} biases corrected")
    assert any(line.startswith(f"Q/DQ model: biases of {bc['layers']} layers corrected")
               for line in runs["--smooth"]["lines"])
    off = runs["--no-bias-correction"]
    assert off["bias_correction"] is None and "biases" not in off["quantization"]["summary"]
    assert not any("biases" in line for line in off["lines"])
