"""Bias correction of the Q/DQ model (calib.qdq ``bias_probe`` / ``bias_shift``,
calib.collect.bias_shifts, calibrate's ``bias_correction``), on EfficientNet-Lite0 and the
bundled photos: the probe measures what it claims, the correction cancels it, and INT8 gets
closer to FP32 on held-out photos while the cache stays byte for byte the same."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from calib.collect import bias_shifts, collect_statistics
from calib.datasets import Preprocess, open_dataset
from calib.model import Model
from calib.pipeline import calibrate
from calib.plan import node_key
from calib.qdq import prepare, quantize_model

SAMPLES = 16


@pytest.fixture(scope="module")
def eff(efficientnet_path, imagenet_dir, imagenet_classes):
    model = Model.load(efficientnet_path)
    ds = open_dataset(imagenet_dir, model, Preprocess.preset("efficientnet-lite"), classes=imagenet_classes)
    probe_ds = ds.split("calib").subset(limit=SAMPLES, seed=0)
    obs = collect_statistics(model, probe_ds.batches(batch_size=8), progress=False, histogram=False)
    amax = {k: float(o.absmax) for k, o in obs.items()}
    return dict(model=model, prepared=prepare(model), ds=ds, probe_ds=probe_ds, amax=amax)


def _shifts(eff, target, **kw):
    probe = quantize_model(eff["prepared"], eff["amax"], target=target, bias_probe=True, **kw)
    outs = probe.quant_report.bias_probes
    return probe, bias_shifts(probe, eff["probe_ds"].batches(batch_size=1), outs, threads=2)


def _init(proto, name):
    return next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == name)


def _tap_means(x: np.ndarray, kernel, pads, strides) -> np.ndarray:
    """[C, kh, kw]: mean over samples and output positions of the input value each tap of a 2-D
    convolution reads (0 where it reads padding)."""
    n, c, h, w = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    out = np.empty((c, kernel[0], kernel[1]))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            win = xp[:, :, i:i + strides[0] * (ho - 1) + 1:strides[0], j:j + strides[1] * (wo - 1) + 1:strides[1]]
            out[:, i, j] = win.mean(axis=(0, 2, 3))
    return out


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_probe_measures_the_weights_mean_error(eff, target):
    """For the stem convolution, the probe's mean equals sum((w_q - w) * E[tap input]) computed
    here in NumPy from the dequantized input, the int8 weights and their scales."""
    probe, shifts = _shifts(eff, target)
    g = probe.proto.graph
    stem = next(n for n in g.node if n.op_type == "Conv")
    key = node_key(stem)
    assert key in shifts and key in probe.quant_report.bias_probes.values()
    prod = {o: n for n in g.node for o in n.output}
    wdq = prod[stem.input[1]]
    assert wdq.op_type == "DequantizeLinear"
    w_q = _init(probe.proto, wdq.input[0]).astype(np.float64) * _init(probe.proto, wdq.input[1])[:, None, None, None]
    w = next(numpy_helper.to_array(i) for i in eff["prepared"].proto.graph.initializer
             if i.name == next(n for n in eff["prepared"].proto.graph.node if n.op_type == "Conv").input[1])
    # the dequantized input: the stem reads the graph input through one Q/DQ pair
    xdq = prod[stem.input[0]]
    s, z = float(_init(probe.proto, xdq.input[1])), int(_init(probe.proto, xdq.input[2]))
    lo, hi = (-128, 127) if target == "tensorrt" else (0, 255)
    x = np.concatenate([b.feed["input"] for b in eff["probe_ds"].batches(batch_size=8)])
    x_dq = (np.clip(np.rint(x / s) + z, lo, hi) - z) * s
    attrs = {a.name: helper.get_attribute_value(a) for a in stem.attribute}
    taps = _tap_means(x_dq, w.shape[2:], attrs.get("pads", [0] * 4), attrs.get("strides", [1, 1]))
    want = ((w_q - w.astype(np.float64)) * taps[None]).sum(axis=(1, 2, 3))
    if target == "onnxruntime":   # the int32 bias (scale: input scale x weight scale) rounds too
        bdq = prod[stem.input[2]]
        b = next(numpy_helper.to_array(i) for i in eff["prepared"].proto.graph.initializer
                 if i.name == next(n for n in eff["prepared"].proto.graph.node if n.op_type == "Conv").input[2])
        want += _init(probe.proto, bdq.input[0]) * _init(probe.proto, bdq.input[1]).astype(np.float64) - b
    got = shifts[key].astype(np.float64)
    assert np.abs(want).max() > 1e-4                      # there is an error to measure
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-6 * np.abs(want).max())


def test_correction_cancels_the_error_it_measured(eff):
    """Probing the corrected model again on the same samples: the stem's error is gone (its
    input does not change) and every layer's is a small fraction of what it was."""
    _, before = _shifts(eff, "tensorrt")
    corrected, after = _shifts(eff, "tensorrt", bias_shift=before)
    rep = corrected.quant_report
    assert sorted(rep.bias_corrected) == sorted(before) and len(before) == 50
    assert set(after) == set(before)
    stem = node_key(next(n for n in eff["prepared"].proto.graph.node if n.op_type == "Conv"))
    assert np.abs(after[stem]).max() < 1e-3 * np.abs(before[stem]).max()
    b = np.concatenate([np.abs(v) for v in before.values()])
    a = np.concatenate([np.abs(v) for v in after.values()])
    assert a.mean() < 0.1 * b.mean(), (a.mean(), b.mean())


def test_bias_shift_only_touches_biases(eff):
    """The corrected model is the uncorrected one with new bias initializers (named
    ``<bias>_corrected``), each the old bias minus its shift."""
    plain = quantize_model(eff["prepared"], eff["amax"], target="tensorrt")
    shift = {k: np.full(v.shape, 0.25, np.float32) for k, v in _shifts(eff, "tensorrt")[1].items()}
    fixed = quantize_model(eff["prepared"], eff["amax"], target="tensorrt", bias_shift=shift)
    pn, fn = plain.proto.graph.node, fixed.proto.graph.node
    assert [(n.op_type, n.name) for n in pn] == [(n.op_type, n.name) for n in fn]
    changed = 0
    for a, b in zip(pn, fn):
        if list(a.input) != list(b.input):
            assert a.op_type in ("Conv", "Gemm") and list(a.input[:2]) == list(b.input[:2])
            assert b.input[2] == a.input[2] + "_corrected"
            np.testing.assert_array_equal(_init(fixed.proto, b.input[2]),
                                          (_init(plain.proto, a.input[2]).astype(np.float64) - 0.25).astype(np.float32))
            changed += 1
    assert changed == 50 == len(fixed.quant_report.bias_corrected)
    # a shift of the wrong length or not finite is ignored, not applied
    key = next(iter(shift))
    bad = quantize_model(eff["prepared"], eff["amax"], target="tensorrt",
                         bias_shift={key: np.zeros(3, np.float32), "no such node": np.zeros(1)})
    assert bad.serialize() == plain.serialize()


# slow for onnxruntime: its probe is checked above, and its corrected Q/DQ model is pinned
# (test_artifacts_pinned's effnet-ort, bias correction on); the end-to-end gain is tensorrt's
@pytest.mark.parametrize("target", ["tensorrt", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_calibrate_with_bias_correction_is_closer_to_fp32_and_keeps_the_cache(tmp_path, eff, target):
    runs = {}
    for on in (True, False):
        runs[on] = calibrate(eff["model"], None, dataset=eff["ds"], samples=64, eval_samples=64, batch_size=16,
                             target=target, out=tmp_path / str(on), progress=False, bias_correction=on)
    on, off = runs[True], runs[False]
    assert on.paths["cache"].read_bytes() == off.paths["cache"].read_bytes()
    assert on.summary["bias_correction"] == {"layers": 50, "samples": 64}
    assert off.summary["bias_correction"] is None

    def metric(res, name):
        ms = res.summary["held_out"]["report"]["candidates"][0]["metrics"]
        return next(m["candidate"]["estimate"] for m in ms if m["name"] == name)

    # measured: KL(FP32 || INT8) 0.0082 -> 0.0035, SQNR +3.2 dB (entropy, 247 calibration photos);
    # here (64 and 64 held-out) 0.0088 -> 0.0044, +3.3 dB
    assert metric(on, "kl_divergence") < 0.75 * metric(off, "kl_divergence")
    assert metric(on, "sqnr") > metric(off, "sqnr") + 1.0
    written = json.loads(on.paths["summary"].read_text())
    assert written["bias_correction"]["layers"] == 50


def _tiny(opset: int) -> Model:
    """Conv (no bias) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (no C): the shapes bias
    correction must add a bias to, at an opset where ReduceMean takes its axes as an input."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    fc = (rng.standard_normal((8, 5)) * 0.3).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
         helper.make_node("Flatten", ["p"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc")],
        "tiny", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    return Model.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8))


@pytest.mark.parametrize("opset", [13, 18])
def test_layers_without_a_bias_get_one(opset):
    m = _tiny(opset)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.random((2, 3, 12, 12), np.float32) + 0.5} for _ in range(4)]   # E[x] far from 0
    obs = collect_statistics(m, feeds, progress=False, histogram=False)
    amax = {k: float(o.absmax) for k, o in obs.items()}
    probe = quantize_model(m, amax, target="tensorrt", bias_probe=True)
    assert sorted(probe.quant_report.bias_probes.values()) == ["conv", "fc"]
    shifts = bias_shifts(probe, feeds, probe.quant_report.bias_probes)
    assert shifts["conv"].shape == (8,) and shifts["fc"].shape == (5,)
    fixed = quantize_model(m, amax, target="tensorrt", bias_shift=shifts)
    nodes = {n.name: n for n in fixed.proto.graph.node}
    for name in ("conv", "fc"):
        assert len(nodes[name].input) == 3
        np.testing.assert_array_equal(_init(fixed.proto, nodes[name].input[2]), -shifts[name])
    # fed in another order and other batches, the same shifts to the bit
    again = bias_shifts(probe, [{"x": np.concatenate([f["x"] for f in feeds[::-1]])}], probe.quant_report.bias_probes)
    for k in shifts:
        np.testing.assert_array_equal(again[k], shifts[k])
