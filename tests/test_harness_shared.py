"""The harness on the real models and data in ../shared (subsampled to keep CI short).

INT8 candidates are made the way calib makes them: statistics on the "calib" split,
percentile amax, calib.qdq Q/DQ export; evaluation runs on the disjoint "eval" split.
"""
import json
import math

import pytest


def _int8(model, ds, batch_size=8, target="tensorrt"):
    from calib import qdq
    from calib.algorithms import compute_amax_all
    from calib.collect import collect_statistics

    tensors = qdq.required_tensors(model, target=target)
    obs = collect_statistics(model, ds.batches(batch_size=batch_size), tensors, progress=False)
    amax = compute_amax_all(obs, "percentile", percentile=99.99)
    return qdq.quantize_model(model, amax, target=target)


@pytest.fixture(scope="module")
def effnet(data_dir, models_dir):
    from calib.datasets import open_dataset
    from calib.model import Model

    m = Model.load(models_dir / "efficientnet_lite0.onnx")
    ds = open_dataset(data_dir / "imagenet-sample", m, "efficientnet-lite", classes=data_dir / "imagenet1k_classes.tsv")
    calib_ds = ds.split("calib").subset(limit=48, seed=0)
    # 64 held-out photos: the attributed pass runs both models unfused at ONNX Runtime's basic level
    # (~75 ms a photo each on 2 cores); held-out top-1 on the whole eval split is test_calibrate's
    return m, _int8(m, calib_ds), ds.split("eval").subset(limit=64, seed=0)


def test_efficientnet_int8_report_with_intervals_mcnemar_and_layers(effnet, tmp_path):
    from calib.backends.onnxruntime import OrtEngine
    from calib.harness import evaluate

    m, q, eval_ds = effnet
    out = tmp_path / "effnet"
    rep = evaluate(OrtEngine(m, name="fp32"), [OrtEngine(q, name="int8")], eval_ds, attribute=True, out=out,
                   batch_size=16, resamples=1000)
    assert rep.task == "classification" and rep.samples == 64
    top1 = rep.metric("top1")
    # FP32 on the easy sample images is around 88%; the interval brackets the estimate
    assert 0.75 < top1.reference["estimate"] <= 1.0
    d = top1.difference
    assert d["low"] <= d["estimate"] <= d["high"] and d["high"] - d["low"] > 0
    mc = top1.mcnemar
    assert 0.0 <= mc["p_value"] <= 1.0 and mc["discordant"] >= 0
    if d["low"] <= 0 <= d["high"]:
        assert "cannot distinguish" in top1.verdict or "rule of three" in top1.verdict
    assert rep.metric("top1_agreement").candidate["estimate"] > 0.8
    assert rep.metric("kl_divergence").extra["outputs"].startswith("logits")
    # per-layer SQNR along the network, worst tensors named in the report
    att = rep.attributions["int8"]
    assert len(att.layers) > 50
    drops = att.jumps(5)
    assert drops and all(l.tensor for l in drops)
    md = (out / "report.md").read_text()
    for l in drops:
        assert f"`{l.tensor}`" in md
    data = json.loads((out / "report.json").read_text())
    assert data["candidates"][0]["attribution"]["largest_drops"][0]["tensor"] == drops[0].tensor
    assert (out / "layers_int8.png").stat().st_size > 10_000
    assert "McNemar" in rep.summary_line()


def test_squeezenet_softmax_outputs_detected(data_dir, models_dir):
    """SqueezeNet outputs softmax [N,1000,1,1]: KL must not apply a second softmax. FP16 vs FP32."""
    from calib.datasets import open_dataset
    from calib.harness import compare, engine
    from calib.model import Model

    m = Model.load(models_dir / "squeezenet1_1_fp32.onnx")
    ds = open_dataset(data_dir / "imagenet-sample", m, "caffe", classes=data_dir / "imagenet1k_classes.tsv",
                      limit=24, seed=1)
    rep = compare(engine(m, name="fp32"), [engine(models_dir / "squeezenet1_1_fp16.onnx", name="fp16")],
                  ds.batches(batch_size=8), resamples=500)
    assert rep.task == "classification"
    kl = rep.metric("kl_divergence")
    assert kl.extra["outputs"].startswith("probabilities")
    assert 0.0 <= kl.candidate["estimate"] < 0.01
    assert rep.metric("top1_agreement").candidate["estimate"] > 0.9


@pytest.fixture(scope="module")
def ocr_rec(data_dir, models_dir):
    from calib.datasets import open_dataset
    from calib.model import Model

    m = Model.load(models_dir / "ppocrv4_rec.onnx")
    ds = open_dataset(data_dir / "ocr-lines", m, "paddleocr")
    return m, _int8(m, ds.split("calib").subset(limit=24, seed=0)), ds.split("eval").subset(limit=80, seed=0)


def test_ppocr_rec_int8_cer_against_labels(data_dir, ocr_rec, tmp_path):
    from calib.backends.onnxruntime import OrtEngine
    from calib.harness import evaluate

    m, q, eval_ds = ocr_rec
    rep = evaluate(OrtEngine(m, name="fp32"), [OrtEngine(q, name="int8")], eval_ds,
                   labels=data_dir / "ocr-lines" / "labels.tsv", out=tmp_path / "rec", batch_size=8, resamples=1000)
    assert rep.task == "ctc" and rep.samples == 80
    cer = rep.metric("cer")
    # FP32 RapidOCR scored about 3% CER on similar lines: the decoding (metadata characters) is right
    assert cer.reference["estimate"] < 0.10
    assert cer.difference["low"] <= cer.difference["estimate"] <= cer.difference["high"]
    line = rep.metric("line_accuracy")
    assert line.reference["estimate"] > 0.5 and line.mcnemar is not None
    assert 0.0 <= rep.metric("ctc_agreement").candidate["estimate"] <= 1.0
    assert "cer" in (tmp_path / "rec" / "report.md").read_text()


def test_ppocr_det_map_agreement(data_dir, models_dir):
    from calib.datasets import Preprocess, open_dataset
    from calib.harness import compare, engine
    from calib.model import Model

    m = Model.load(models_dir / "ppocrv4_det.onnx")
    pre = Preprocess.preset("paddleocr-det", resize=96)   # line images: small maps keep CI fast
    ds = open_dataset(data_dir / "ocr-lines", m, pre)
    q = _int8(m, ds.split("calib").subset(limit=16, seed=0))
    rep = compare(engine(m, name="fp32"), [engine(q, name="int8")],
                  ds.split("eval").subset(limit=32, seed=0).batches(batch_size=8), resamples=500)
    assert rep.task == "dense"
    iou = rep.metric("iou@0.3")
    assert 0.5 < iou.candidate["estimate"] <= 1.0
    assert iou.candidate["low"] <= iou.candidate["estimate"] <= iou.candidate["high"]
    assert 0.0 < rep.metric("max_abs_error").candidate["estimate"] <= 1.0    # probability maps
    assert math.isfinite(rep.metric("sqnr").candidate["estimate"])
    assert "p99" in rep.metric("abs_error_percentiles").extra["percentiles"]
