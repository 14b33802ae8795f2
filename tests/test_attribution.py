"""Per-layer attribution the search can trust: masked tensors, smoothed tensors, bounded memory.

On real graphs: paraphrase-MiniLM-L3-v2 (its additive attention mask as exported, float32.min,
and rewritten to -inf), PP-OCRv4 rec (27 tensors smoothed by the default calibrate) and PP-OCRv4
det at 736 px (about 0.9 GB of float tensors per image) for the memory bound.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from calib.harness import LayerAccumulator, compare, smoothing_factors
from calib.harness.capture import plan_captures, tensor_bytes
from calib.model import Model

F32_MIN = float(np.finfo(np.float32).min)


# --------------------------------------------------------------------------- the sums, by hand
def _chain_model() -> Model:
    """x -> Relu -> h -> Softmax -> y (only the graph is used: names and producers)."""
    import onnx.helper as oh

    g = oh.make_graph([oh.make_node("Relu", ["x"], ["h"], name="relu"),
                       oh.make_node("Softmax", ["h"], ["y"], name="softmax")], "g",
                      [oh.make_tensor_value_info("x", 1, [None, 8])], [oh.make_tensor_value_info("y", 1, [None, 8])])
    return Model.from_proto(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]))


def _sqnr(r, c) -> float:
    r, c = np.asarray(r, np.float64), np.asarray(c, np.float64)
    return 10 * math.log10(np.sum(r * r) / np.sum((c - r) ** 2))


@pytest.mark.parametrize("sentinel", [-np.inf, F32_MIN, -1e9, np.nan])
def test_masked_entries_are_left_out_whatever_the_candidate_holds_there(sentinel):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(4, 8)).astype(np.float32)
    c = (r + rng.normal(scale=0.05, size=r.shape)).astype(np.float32)
    mask = rng.random(r.shape) < 0.4
    rm, cm = r.copy(), c.copy()
    rm[mask] = sentinel
    cm[mask] = np.where(rng.random(mask.sum()) < 0.5, -np.inf, -65504.0)   # anything: -inf, an FP16 stand-in
    acc = LayerAccumulator("c", _chain_model(), [("h", "h")])
    acc.update({"h": rm}, {"h": cm})
    layer = acc.result().layers[0]
    assert layer.masked == mask.sum() and layer.elements == (~mask).sum() and layer.nonfinite == 0
    assert layer.sqnr_db == pytest.approx(_sqnr(r[~mask], c[~mask]), abs=1e-3)


def test_candidate_non_finite_where_the_reference_is_finite_is_an_infinite_error():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 8)).astype(np.float32)
    h, y = np.maximum(x, 0), rng.random((4, 8)).astype(np.float32)
    bad_h = h.copy()
    bad_h[0, 0] = np.nan
    acc = LayerAccumulator("c", _chain_model(), [("x", "x"), ("h", "h"), ("y", "y")])
    acc.update({"x": x, "h": h, "y": y}, {"x": x + 0.01, "h": bad_h, "y": np.full_like(y, np.nan)})
    att = acc.result()
    by = {l.tensor: l for l in att.layers}
    assert by["h"].sqnr_db == -math.inf and by["h"].nonfinite == 1
    assert by["y"].sqnr_db == -math.inf and by["y"].nonfinite == y.size
    # the node that breaks is the largest drop (clamped to [-100, 100] dB), the broken one after it is not
    assert att.jumps(1)[0].tensor == "h" and by["h"].drop_db == pytest.approx(by["x"].sqnr_db + 100)
    assert by["y"].drop_db == 0
    assert any("non-finite candidate values" in n for n in att.notes)


def test_large_values_take_the_float64_path_with_the_same_result():
    """Sums of squares past 1e16 (here 2e6 entries near 1e5) leave float32's fast path; the result
    is the float64 one."""
    rng = np.random.default_rng(2)
    r = (rng.normal(size=(2, 1_000_000)) * 1e5).astype(np.float32)
    c = (r * (1 + rng.normal(scale=1e-3, size=r.shape))).astype(np.float32)
    acc = LayerAccumulator("c", _chain_model(), [("h", "h")])
    acc.update({"h": r}, {"h": c})
    layer = acc.result().layers[0]
    assert layer.masked == 0 and layer.sqnr_db == pytest.approx(_sqnr(r, c), abs=1e-3)


def test_capture_plan_micro_batches_first_then_chunks():
    mib = 2 ** 20
    sizes = [10 * mib] * 10                                       # 100 MiB per sample
    assert plan_captures(sizes, 1, 256 * mib).samples == 1 and len(plan_captures(sizes, 1, 256 * mib).chunks) == 1
    p = plan_captures([mib] * 10, 16, 256 * mib)                  # 10 MiB per sample: 12 fit in 128 MiB
    assert len(p.chunks) == 1 and p.samples == 12
    p = plan_captures(sizes, 16, 64 * mib)                        # one sample does not fit 32 MiB
    assert p.samples == 1 and [len(c) for c in p.chunks] == [3, 3, 3, 1] and p.largest == 30 * mib
    assert sorted(i for c in p.chunks for i in c) == list(range(10))
    p = plan_captures([100 * mib, mib], 4, 64 * mib)              # a tensor larger than the budget: alone
    assert p.chunks == ((0,), (1,)) and p.samples == 1
    assert plan_captures(sizes, 8, 256 * mib, step=2).samples == 2   # a multiple of a fixed batch


# --------------------------------------------------------------------------- MiniLM's attention mask
def _minus_inf_mask(model: Model) -> Model:
    """The exported mask ``(1 - mask) * float32.min`` rewritten as ``Where(mask == 0, -inf, 0)``
    (``(1 - mask) * -inf`` would be NaN where mask == 1), under the same output name."""
    import onnx
    import onnx.helper as oh
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    g = proto.graph
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"}
    k, mul = next((k, n) for k, n in enumerate(g.node) if n.op_type == "Mul"
                  and any(i in consts and consts[i].size == 1 and consts[i].item() == F32_MIN for i in n.input))
    sub = next(n for n in g.node if n.op_type == "Sub" and n.output[0] in mul.input)
    mask = sub.input[1]                                 # the float mask, 1 where attended
    minus_inf = numpy_helper.from_array(np.array(-np.inf, np.float32))
    new = [oh.make_node("Constant", [], ["mask.zero"], value=numpy_helper.from_array(np.array(0, np.float32))),
           oh.make_node("Constant", [], ["mask.minus_inf"], value=minus_inf),
           oh.make_node("Equal", [mask, "mask.zero"], ["mask.padded"], name="mask.padded"),
           oh.make_node("Where", ["mask.padded", "mask.minus_inf", "mask.zero"], [mul.output[0]], name=mul.name)]
    del g.node[k]
    for j, n in enumerate(new):
        g.node.insert(k + j, n)
    onnx.checker.check_model(proto)
    return Model.from_proto(proto)


@pytest.fixture(scope="module")
def minilm(minilm_path, minilm_tokens):
    """{variant: (FP32 model, its INT8 Q/DQ model)} and the eval samples."""
    import calib
    from calib.datasets import open_dataset

    out = {}
    exported = Model.load(minilm_path)
    for variant, model in (("float32.min", exported), ("-inf", _minus_inf_mask(exported))):
        ds = open_dataset(minilm_tokens, model, limit=96)
        with warnings.catch_warnings():    # calibrate says that the -inf mask is left out of its statistics
            warnings.filterwarnings("ignore", "4 tensor.s. held non-finite values", RuntimeWarning)
            res = calib.calibrate(model, dataset=ds.split("calib"), write=False, progress=False, evaluate=False,
                                  bias_correction=False)
        out[variant] = (model, res.qdq_model)
    return out, open_dataset(minilm_tokens, exported, limit=96).split("eval")


@pytest.mark.parametrize("variant", ["-inf", "float32.min"])
def test_masked_attention_scores_have_finite_sqnr_and_do_not_blame_the_softmax(minilm, variant):
    models, ds = minilm
    model, q = models[variant]
    rep = compare(model, [q], ds.batches(batch_size=16), attribute=True, resamples=200)
    att = rep.attributions[rep.candidate_names[0]]
    by = {l.tensor: l for l in att.layers}
    softmax = [l for l in att.layers if l.op == "Softmax"]
    assert len(softmax) == 3                                         # one per attention block
    producers = model.producers()
    for s in softmax:
        scores = by[producers[s.tensor].input[0]]                    # scores + mask
        assert scores.op == "Add" and scores.masked > 0
        # the masked scores compare on their unmasked entries: a real INT8 figure, not inf/nan/+700 dB
        assert 10 < scores.sqnr_db < 60
        assert s.drop_from == scores.tensor and abs(s.drop_db) < 3    # the Softmax adds next to no error
    assert all(not math.isnan(l.sqnr_db) for l in att.layers)
    top = att.jumps(3)
    assert top[0].op != "Softmax" and all(l.op != "Softmax" for l in top)
    assert any("masked entries" in n for n in att.notes)


def test_minus_inf_and_float32_min_masks_give_the_same_attribution(minilm):
    models, ds = minilm
    sq = {}
    for variant, (model, q) in models.items():
        rep = compare(model, [q], ds.batches(batch_size=16), attribute=True, resamples=200)
        producers = model.producers()
        softmax = [n.output[0] for n in model.nodes if n.op_type == "Softmax"]
        wanted = set(softmax) | {producers[t].input[0] for t in softmax}     # the masked scores and their Softmax
        sq[variant] = {l.tensor: l.sqnr_db for l in rep.attributions[rep.candidate_names[0]].layers
                       if l.tensor in wanted}
    assert len(sq["-inf"]) == 6 and sq["-inf"].keys() == sq["float32.min"].keys()
    for t, v in sq["-inf"].items():
        assert v == pytest.approx(sq["float32.min"][t], abs=0.5)


def test_bounded_captures_give_the_unbounded_result(minilm):
    """A 1 MiB budget splits MiniLM's captures into chunks of tensors run one sample at a time:
    the same SQNRs and metrics as one run per batch."""
    models, ds = minilm
    model, q = models["float32.min"]
    ds = ds.subset(limit=24, seed=0)
    reps = [compare(model, [q], ds.batches(batch_size=8), attribute=True, resamples=200, attribute_memory=m)
            for m in (2 ** 30, 2 ** 20)]
    assert any("one run per batch" in n for n in reps[0].notes)
    assert any("chunk(s) of tensors, 1 sample(s) per run" in n and "one run" not in n for n in reps[1].notes)
    a, b = (r.attributions[r.candidate_names[0]] for r in reps)
    assert [l.tensor for l in a.layers] == [l.tensor for l in b.layers] and a.samples == b.samples == len(ds)
    for x, y in zip(a.layers, b.layers):
        # (a tensor without a batch axis, position embeddings, is counted once per run)
        assert x.masked / x.elements == pytest.approx(y.masked / y.elements)
        assert (x.sqnr_db == y.sqnr_db) if math.isinf(x.sqnr_db) else x.sqnr_db == pytest.approx(y.sqnr_db, abs=0.01)
    cos = [r.metric("cosine").candidate["estimate"] for r in reps]
    assert cos[0] == pytest.approx(cos[1], abs=1e-6)


# --------------------------------------------------------------------------- smoothing undone
@pytest.fixture(scope="module")
def rec(shared_model, ocr_lines_dir):
    """PP-OCRv4 rec, its default calibrate result (27 tensors smoothed) and held-out lines."""
    import calib
    from calib.datasets import open_dataset

    model = Model.load(shared_model("ppocrv4_rec"))
    ds = open_dataset(ocr_lines_dir, model, "paddleocr-rec", limit=48)
    res = calib.calibrate(model, dataset=ds, samples=16, batch_size=8, write=False, progress=False, evaluate=False,
                          bias_correction=False)
    return model, res, ds.split("eval").subset(limit=8, seed=0)


def test_smoothing_factors_are_read_off_the_qdq_model(rec):
    model, res, _ = rec
    assert len(res.smoothing) == 27
    found = smoothing_factors(model, res.qdq_model)
    assert found.keys() == res.smoothing.keys()
    for t, s in res.smoothing.items():
        np.testing.assert_allclose(found[t], s, rtol=1e-6)
    assert smoothing_factors(model, model) == {}                 # nothing smoothed, nothing found


def test_smoothed_float_graph_compares_equal_once_the_factors_are_undone(rec):
    """calib.smooth's FP32 rewrite computes the same function: with the factors undone (read off
    the graph, or passed as CalibrationResult.smoothing) every smoothed tensor is equal to its
    reference up to float rounding; compared as it is, it is not."""
    from calib.smooth import apply

    model, res, ds = rec
    smoothed = apply(model, res.smoothing)
    sq = {}
    for how, arg in (("read", None), ("given", res.smoothing), ("not undone", False)):
        rep = compare(model, [smoothed], ds.batches(batch_size=4), attribute=True, resamples=200, smoothing=arg)
        layers = {l.tensor: l for l in rep.attributions[rep.candidate_names[0]].layers}
        assert res.smoothing.keys() <= layers.keys()
        sq[how] = {t: layers[t].sqnr_db for t in res.smoothing}
        assert all(layers[t].unsmoothed == (arg is not False) for t in res.smoothing)
    assert min(sq["read"].values()) > 100 and min(sq["given"].values()) > 100
    assert max(sq["not undone"].values()) < 30


def test_qdq_attribution_undoes_smoothing_on_the_real_model(rec):
    """In the INT8 model a smoothed tensor's error is measured in its reference's units. Compared
    as they are, the smoothed tensors and the Mul outputs their chains start from (also divided by
    the factors) lose tens of dB at once and fill the largest drops; undone, no such Mul (which
    adds no quantization) is among the largest drops, and every smoothed tensor compares better
    (its own INT8 error, from its quantization, remains)."""
    model, res, ds = rec
    producers = model.producers()
    muls = {i for t in res.smoothing for i in producers[t].input if i in producers and producers[i].op_type == "Mul"}
    chains = set(res.smoothing) | muls
    assert len(muls) == len(res.smoothing)
    sq, top = {}, {}
    for how, arg in (("undone", None), ("as is", False)):
        rep = compare(model, [res.qdq_model], ds.batches(batch_size=4), attribute=True, resamples=200, smoothing=arg)
        att = rep.attributions[rep.candidate_names[0]]
        layers = {l.tensor: l for l in att.layers}
        sq[how] = {t: layers[t].sqnr_db for t in res.smoothing}
        top[how] = {l.tensor for l in att.jumps(5)}
        assert all(layers[t].unsmoothed == (arg is None) for t in chains if t in layers)
    assert len(top["as is"] & muls) >= 3 and not top["undone"] & muls
    assert all(sq["undone"][t] > sq["as is"][t] for t in res.smoothing)


# --------------------------------------------------------------------------- memory
_PEAK = """
import sys
from calib.cli import main
rc = main(sys.argv[1:])
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("VmHWM_KB", peak, file=sys.stderr)
sys.exit(rc)
"""


def test_attribution_stays_under_1_5_gb_on_the_detector_at_736_px(shared_dir, tmp_path):
    """PP-OCRv4 det at 736 x 736 holds about 0.9 GB of float tensors per image in each engine:
    capturing all of them for a batch of 2 would hold over 3 GB. `calib evaluate --attribute`
    (a subprocess, peak resident memory from /proc) stays under 1.5 GB."""
    from calib.cli import main
    from calib.harness.attribution import float_activations

    det = shared_dir / "models" / "ppocrv4_det.onnx"
    images = ["--data", str(shared_dir / "data" / "imagenet-sample"), "--preset", "paddleocr-det",
              "--resize", "736", "--crop", "736"]
    assert main(["calibrate", "--model", str(det), *images, "--limit", "4", "--algorithm", "max",
                 "--no-bias-correction", "--no-eval", "--out", str(tmp_path)]) == 0
    model = Model.load(det)
    per_image = tensor_bytes(model, {"x": np.zeros((1, 3, 736, 736), np.float32)})
    unbounded = 2 * 2 * sum(per_image[t] for t in float_activations(model) if t in per_image)
    assert unbounded > 3 * 2 ** 30

    out = tmp_path / "report"
    p = subprocess.run([sys.executable, "-c", _PEAK, "evaluate", "--model", str(det), "--candidate",
                        str(tmp_path / "ppocrv4_det.int8.onnx"), *images, "--limit", "2", "--batch-size", "2",
                        "--attribute", "--no-plots", "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    peak = int(next(l for l in p.stderr.splitlines() if l.startswith("VmHWM_KB")).split()[1]) * 1024
    assert peak < 1.5 * 2 ** 30, f"peak resident memory {peak / 2 ** 30:.2f} GiB"
    rep = json.loads((out / "report.json").read_text())
    att = rep["candidates"][0]["attribution"]
    assert att["samples"] == 2 and len(att["layers"]) > 300
    assert {"masked", "nonfinite", "unsmoothed"} <= att["layers"][0].keys()
    assert sum(l["unsmoothed"] for l in att["layers"]) >= 27          # det's smoothed tensors, read off the graph
    assert any("chunk(s) of tensors" in n for n in rep["notes"])
