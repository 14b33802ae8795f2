"""Harness runner, attribution mapping, reports and CLI on tiny synthetic ONNX models."""
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calib.backends.base import Engine, EngineInfo
from calib.backends.onnxruntime import OrtEngine
from calib.errors import OutputExistsError
from calib.harness import HarnessError, compare, detect_task, engine, evaluate, load_report, map_tensors
from calib.model import Model

RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(8, 16)).astype(np.float32)
W2 = RNG.normal(size=(16, 10)).astype(np.float32)


def mlp(w1=W1, w2=W2, qdq=None, names=True) -> Model:
    """x[N,8] -> MatMul -> h1 -> Relu -> h2 -> MatMul -> y[N,10].
    qdq="ort": Q/DQ on h2 named like ONNX Runtime's quantizer."""
    n = (lambda s: s) if names else (lambda s: "")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name=n("mm1")),
             helper.make_node("Relu", ["h1"], ["h2"], name=n("relu"))]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]
    h = "h2"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["h2", "s", "z"], ["h2_QuantizeLinear_Output"],
                                   name=n("h2_QuantizeLinear")),
                  helper.make_node("DequantizeLinear", ["h2_QuantizeLinear_Output", "s", "z"],
                                   ["h2_DequantizeLinear_Output"], name=n("h2_DequantizeLinear"))]
        h = "h2_DequantizeLinear_Output"
    nodes.append(helper.make_node("MatMul", [h, "W2"], ["y"], name=n("mm2")))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return Model.from_proto(m)


def data(n=96, batch=16, seed=1, labels=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (np.maximum(x @ W1, 0) @ W2).argmax(1)
    y = np.where(rng.random(n) < 0.2, rng.integers(0, 10, n), y)   # 80% "accurate" reference
    out = []
    for i in range(0, n, batch):
        ids = [f"s{j}" for j in range(i, min(n, i + batch))]
        out.append(({"x": x[i:i + batch]}, y[i:i + batch] if labels else None, ids))
    return out, x, y


class Counting(Engine):
    def __init__(self, inner):
        self.inner = inner
        self.info = EngineInfo(inner.info.name, "test")
        self.calls = 0
        self.samples = 0

    @property
    def inputs(self):
        return self.inner.inputs

    @property
    def output_names(self):
        return self.inner.output_names

    def run(self, feed):
        self.calls += 1
        self.samples += next(iter(feed.values())).shape[0]
        return self.inner.run(feed)


class OnceIterable:
    """Batches that count how often each is produced (decoded)."""

    def __init__(self, batches):
        self.items = batches
        self.produced = 0

    def __iter__(self):
        for b in self.items:
            self.produced += 1
            yield b


def test_one_pass_many_candidates_and_hand_checked_values():
    batches, x, y = data()
    ref = Counting(OrtEngine(mlp(), name="fp32"))
    noisy = mlp(w2=W2 + RNG.normal(scale=0.5, size=W2.shape).astype(np.float32))
    c1 = Counting(OrtEngine(noisy, name="noisy"))
    c2 = Counting(OrtEngine(mlp(qdq="ort"), name="qdq"))
    src = OnceIterable(batches)
    rep = compare(ref, [c1, c2], src, resamples=300)
    assert src.produced == len(batches)                      # each batch decoded once
    assert ref.calls == c1.calls == c2.calls == len(batches)  # ... and fed to every engine once
    assert rep.samples == 96 and rep.task == "classification"
    # hand-check top-1 and agreement
    r_logits = np.maximum(x @ W1, 0) @ W2
    c_logits = OrtEngine(noisy).run({"x": x})["y"]
    top1 = rep.metric("top1", "noisy")
    assert top1.reference["estimate"] == pytest.approx(np.mean(r_logits.argmax(1) == y))
    assert top1.candidate["estimate"] == pytest.approx(np.mean(c_logits.argmax(1) == y))
    assert top1.difference["estimate"] == pytest.approx(np.mean(c_logits.argmax(1) == y)
                                                        - np.mean(r_logits.argmax(1) == y))
    lo, hi = top1.difference["low"], top1.difference["high"]
    assert lo <= top1.difference["estimate"] <= hi
    b = int(np.sum((r_logits.argmax(1) == y) & (c_logits.argmax(1) != y)))
    c = int(np.sum((r_logits.argmax(1) != y) & (c_logits.argmax(1) == y)))
    assert (top1.mcnemar["reference_only_correct"], top1.mcnemar["candidate_only_correct"]) == (b, c)
    agree = rep.metric("top1_agreement", "noisy")
    assert agree.candidate["estimate"] == pytest.approx(np.mean(r_logits.argmax(1) == c_logits.argmax(1)))
    sq = rep.metric("sqnr", "noisy")
    signal = np.sum(r_logits.astype(np.float64) ** 2)
    expect = 10 * math.log10(signal / np.sum((c_logits - r_logits).astype(np.float64) ** 2))
    assert sq.candidate["estimate"] == pytest.approx(expect, abs=1e-3)
    # verdict wording never claims "no loss"
    for name in rep.candidate_names:
        for r in rep.metrics[name]:
            assert "no accuracy loss" not in r.verdict and "no loss" not in r.verdict
    line = rep.summary_line("noisy")
    assert line.startswith("noisy vs fp32 on 96 samples (classification)") and "95% CI" in line


def test_identical_candidate_says_data_cannot_distinguish():
    batches, _, _ = data()
    rep = compare(OrtEngine(mlp(), name="a"), [OrtEngine(mlp(), name="b")], batches, resamples=200)
    top1 = rep.metric("top1")
    assert top1.mcnemar["discordant"] == 0 and top1.mcnemar["p_value"] == 1.0
    assert "cannot distinguish" in top1.verdict and "rule of three" in top1.verdict
    assert rep.metric("sqnr").candidate["estimate"] == math.inf
    d = json.loads(rep.to_json())                       # strict JSON: inf written as a string
    sq = [m for m in d["candidates"][0]["metrics"] if m["name"] == "sqnr"][0]
    assert sq["candidate"]["estimate"] == "inf"


def test_significant_loss_is_called_a_loss():
    batches, _, _ = data(n=400)
    bad = mlp(w2=RNG.normal(size=W2.shape).astype(np.float32))   # unrelated weights
    rep = compare(OrtEngine(mlp(), name="fp32"), [OrtEngine(bad, name="bad")], batches, resamples=300)
    top1 = rep.metric("top1")
    assert top1.difference["high"] < 0
    assert top1.verdict.startswith("significant loss")
    assert top1.mcnemar["p_value"] < 1e-6


def test_batches_as_feeds_only_and_without_labels():
    batches, _, _ = data(labels=False)
    feeds = [b[0] for b in batches]
    rep = compare(mlp(), [mlp(qdq="ort")], feeds, resamples=200)
    names = [r.name for r in rep.metrics[rep.candidate_names[0]]]
    assert "top1" not in names and "top1_agreement" in names
    assert rep.has_labels is False


def test_attribution_mapping_ort_naming_and_structural():
    ref, cand = mlp(), mlp(qdq="ort")
    pairs = dict(map_tensors(ref, cand))
    assert pairs == {"h1": "h1", "h2": "h2_DequantizeLinear_Output", "y": "y"}
    # unnamed nodes: the structural Q -> DQ rule finds the same counterpart
    pairs = dict(map_tensors(mlp(names=False), mlp(qdq="ort", names=False)))
    assert pairs["h2"] == "h2_DequantizeLinear_Output"


def test_attribution_sqnr_per_tensor():
    batches, x, _ = data()
    rep = compare(OrtEngine(mlp(), name="fp32"), [OrtEngine(mlp(qdq="ort"), name="qdq")], batches,
                  attribute=True, resamples=200)
    att = rep.attributions["qdq"]
    by = {l.tensor: l for l in att.layers}
    assert [l.tensor for l in att.layers] == ["h1", "h2", "y"]
    assert by["h1"].sqnr_db == math.inf and by["h2"].sqnr_db < 60
    h2 = np.maximum(x @ W1, 0)
    q = np.clip(np.round(h2 / 0.05), -128, 127) * 0.05
    expect = 10 * math.log10(np.sum(h2.astype(np.float64) ** 2) / np.sum((q - h2).astype(np.float64) ** 2))
    assert by["h2"].sqnr_db == pytest.approx(expect, abs=0.05)
    assert att.jumps(1)[0].tensor == "h2"            # the error appears at the quantized tensor
    assert att.samples == 96
    # the candidate's metrics are unchanged by capturing
    plain = compare(OrtEngine(mlp(), name="fp32"), [OrtEngine(mlp(qdq="ort"), name="qdq")], batches, resamples=200)
    sqnr = rep.metric("sqnr").candidate["estimate"]
    assert plain.metric("sqnr").candidate["estimate"] == pytest.approx(sqnr, abs=1e-4)


def test_attribution_with_calib_qdq_model():
    qdq = pytest.importorskip("calib.qdq")
    ref = mlp()
    amax = {"x": 4.0, "h1": 20.0, "h2": 20.0}
    cand = qdq.quantize_model(ref, amax, target="tensorrt")
    pairs = dict(map_tensors(ref, cand))
    assert any(rt != ct for rt, ct in pairs.items())     # some tensor maps to its dequantized copy
    batches, _, _ = data(n=32)
    rep = compare(OrtEngine(ref, name="fp32"), [OrtEngine(cand, name="int8")], batches, attribute=True,
                  resamples=200)
    att = rep.attributions["int8"]
    assert att.layers and all(l.sqnr_db > 10 for l in att.layers)
    assert any(math.isfinite(l.sqnr_db) for l in att.layers)


def test_report_files_atomic_and_no_overwrite(tmp_path):
    batches, _, _ = data()
    out = tmp_path / "rep"
    rep = evaluate(mlp(), [OrtEngine(mlp(qdq="ort"), name="int8")], batches, attribute=True, out=out,
                   resamples=200)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["layers_int8.png", "metrics.png", "report.json", "report.md"]
    d = load_report(out / "report.json")
    assert d["schema"] == "calib-report" and d["version"] == 1
    assert d["candidates"][0]["attribution"]["largest_drops"][0]["tensor"] == "h2"
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "| top1 |" in md and "McNemar" in md and "`h2`" in md
    before = (out / "report.json").read_bytes()
    with pytest.raises(OutputExistsError):
        evaluate(mlp(), [mlp(qdq="ort")], batches, out=out, resamples=200)
    assert (out / "report.json").read_bytes() == before
    rep.write(out, force=True)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temp files left
    with pytest.raises(OutputExistsError):
        rep.write(out)


def test_task_detection():
    assert detect_task(np.zeros((2, 1000)), {}, np.array([1, 2]))[0] == "classification"
    p = np.full((2, 1000, 1, 1), 1e-3)
    assert detect_task(p, {}, None)[0] == "classification"          # SqueezeNet: already softmax
    assert detect_task(np.random.default_rng(0).normal(size=(2, 512)), {}, None)[0] == "embedding"
    assert detect_task(np.zeros((2, 1, 64, 64)), {}, None)[0] == "dense"
    assert detect_task(np.zeros((2, 40, 6625)), {"character": "a\nb"}, None)[0] == "ctc"
    assert detect_task(np.zeros((2, 3, 5)), {}, None)[0] == "tensor"


def test_explicit_task_and_user_metric(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import numpy as np\ndef mean_shift(ref, cand, labels):\n"
                 "    return np.abs(cand.mean(axis=1) - ref.mean(axis=1))\n")
    batches, _, _ = data()
    rep = compare(mlp(), [mlp(qdq="ort")], batches, task="tensor", extra_metrics=[f"{f}:mean_shift"],
                  resamples=200)
    names = [r.name for r in rep.metrics[rep.candidate_names[0]]]
    assert names[0] == "cosine" and "mean_shift" in names and "abs_error_percentiles" in names
    pct = rep.metric("abs_error_percentiles")
    assert pct.candidate is None and "p99" in pct.extra["percentiles"]
    with pytest.raises(HarnessError, match="unknown task"):
        compare(mlp(), [mlp()], batches, task="segmentation")


def test_text_labels_lookup(tmp_path):
    from calib.harness import read_text_labels

    tsv = tmp_path / "labels.tsv"
    tsv.write_text("a.png\thello world\nb.png\tx\ty\n")
    assert read_text_labels(tsv) == {"a.png": "hello world", "b.png": "x\ty"}


def test_engine_helper_and_name_clash(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(mlp().proto, str(p))
    e = engine(p)
    assert isinstance(e, OrtEngine) and e.info.name == "m"
    batches, _, _ = data(n=16)
    rep = compare(engine(p), [engine(p)], batches, resamples=100)
    assert rep.candidate_names == ["m#2"]


def test_cli_evaluate(tmp_path, capsys):
    pytest.importorskip("calib.datasets")
    from calib.cli import main

    ref, cand = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(mlp().proto, str(ref))
    onnx.save(mlp(qdq="ort").proto, str(cand))
    _, x, y = data(n=64)
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    out = tmp_path / "out"
    args = ["evaluate", "--model", str(ref), "--candidate", str(cand), "--candidate", f"again={cand}",
            "--data", str(tmp_path / "d.npz"), "--hdf5-map", "labels=labels", "--attribute",
            "--resamples", "200", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "int8 vs fp32 on 64 samples (classification)" in text and "again vs fp32" in text
    assert (out / "layers_int8.png").exists() and (out / "layers_again.png").exists()
    assert main(args) == 2                                  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--force", "--json", "--no-plots"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["schema"] == "calib-report" and [c["name"] for c in d["candidates"]] == ["int8", "again"]
    assert main(["evaluate", "--model", str(ref), "--candidate", str(cand), "--data", str(tmp_path / "d.npz"),
                 "--out", str(tmp_path / "o2"), "--metric", "no_such_metric"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_tensorrt_plan_without_tensorrt(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed")
    from calib.errors import TensorRTUnavailableError

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(TensorRTUnavailableError):
        engine(plan)


def test_primary_output_skips_integer_pass_through_outputs():
    """Scoring an int copy of the input would report a perfect candidate whatever it computes."""
    from calib.harness.runner import primary_output

    ids = np.arange(8, dtype=np.int64).reshape(2, 4)
    tokens = np.zeros((2, 4, 3), np.float32)
    pooled = np.zeros((2, 3), np.float32)
    outs = {"ids": ids, "mask": ids, "tokens": tokens, "pooled": pooled}
    assert primary_output(outs, list(outs))[0] == "pooled"
    assert primary_output({"ids": ids, "tokens": tokens}, ["ids", "tokens"])[0] == "tokens"
    assert primary_output({"logits": pooled}, ["logits"]) == ("logits", "first output")
    assert primary_output(outs, list(outs), "tokens") == ("tokens", "chosen")
    with pytest.raises(HarnessError, match="not an output"):
        primary_output(outs, list(outs), "nope")


def test_embedding_model_is_scored_on_its_sentence_embedding(minilm_path, minilm_tokens, tmp_path):
    """paraphrase-MiniLM-L3-v2 returns its int64 inputs first: the harness scores the pooled float
    output, so INT8's cosine is below 1 and the report says which output it scored."""
    import calib
    from calib.datasets import open_dataset
    from calib.model import Model

    model = Model.load(minilm_path)
    ds = open_dataset(minilm_tokens, model, limit=96)
    res = calib.calibrate(model, dataset=ds, out=tmp_path, progress=False, bias_correction=False)
    rep = res.summary["held_out"]["report"]
    assert rep["task"] == "embedding"
    assert "scored output '461'" in rep["task_reason"]
    cos = next(m for m in rep["candidates"][0]["metrics"] if m["name"] == "cosine")
    assert cos["spec"]["output"] == "461"
    assert 0.9 < cos["candidate"]["estimate"] < 0.9999
