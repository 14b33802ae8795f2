"""The `calibrate` pipeline (issue "GPU-free calibration") against its acceptance list, on real data.

* EfficientNet-Lite0 and SqueezeNet 1.1 calibrated (entropy, TensorRT placement) on the stable
  ``calib`` split of the 500 shared ImageNet photographs: the INT8 Q/DQ model run by ONNX Runtime
  keeps top-1 on the disjoint ``eval`` split within 1.0 / 2.0 points of FP32 -- checked in the
  summary and recomputed independently from the written ``<stem>.int8.onnx``.
* PP-OCRv4 det: INT8 probability maps keep cosine >= 0.99 with FP32 on held-out line images.
* Determinism: batch size, sample order and source type (folder vs iterable of feed dicts) do not
  change a byte of the cache or the Q/DQ model; the seed does change the sample choice.
* The cache reads back bit-identically; its sidecar checks against the right model only.

The two 500-image runs are module-scoped fixtures shared by all tests that need them. The
``slow`` tests (opt-in, tests/README.md) repeat claims that a default test here or elsewhere covers.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil

import numpy as np
import pytest

from calib.backends.onnxruntime import OrtEngine
from calib.cache import check_provenance, read_cache, read_sidecar
from calib.datasets import Preprocess, open_dataset, split_of
from calib.errors import CacheMismatchError
from calib.model import Model
from calib.pipeline import calibrate

# (model file, preset, largest allowed top-1 drop in points)
IMAGENET_MODELS = {
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "efficientnet-lite", 1.0),
    "squeezenet": ("squeezenet1_1_fp32.onnx", "caffe", 2.0),
}


def _metric(summary: dict, name: str) -> dict:
    (cand,) = summary["held_out"]["report"]["candidates"]
    for m in cand["metrics"]:
        if m["name"] == name:
            return m
    raise AssertionError(f"metric {name} not in the held-out report: {[m['name'] for m in cand['metrics']]}")


def _f32_bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def _top1_correct(engine: OrtEngine, ds) -> tuple[list[str], np.ndarray]:
    """Ids and per-sample correctness (argmax of the single output == label) over *ds*."""
    ids, correct = [], []
    for b in ds.batches(batch_size=16):
        (out,) = engine.run(b.feed).values()
        pred = out.reshape(len(b.ids), -1).argmax(axis=1)
        ids += b.ids
        correct.append(pred == b.labels)
    return ids, np.concatenate(correct)


# --------------------------------------------------------------------------- 500-image runs
@pytest.fixture(scope="module")
def imagenet_run(request, tmp_path_factory, models_dir, imagenet_dir, imagenet_classes):
    """One full calibration per model (default algorithm and target), plus an independent
    top-1 evaluation of the written INT8 model and of FP32 over the eval split."""
    runs = {}

    def get(key: str) -> dict:
        if key in runs:
            return runs[key]
        fname, preset, tol = IMAGENET_MODELS[key]
        model = models_dir / fname
        out = tmp_path_factory.mktemp(f"cal_{key}")
        res = calibrate(model, imagenet_dir, preprocess=preset, classes=imagenet_classes, out=out,
                        progress=False)
        ds = open_dataset(imagenet_dir, Model.load(model), preset, classes=imagenet_classes)
        eval_ds = ds.split("eval")
        ids_fp32, ok_fp32 = _top1_correct(OrtEngine(model, name="fp32"), eval_ds)
        ids_int8, ok_int8 = _top1_correct(OrtEngine(res.paths["qdq"], name="int8", precision="int8"), eval_ds)
        assert ids_fp32 == ids_int8 == eval_ds.ids
        runs[key] = dict(result=res, out=out, model=model, preset=preset, tol=tol, ds=ds,
                         eval_ids=ids_fp32, ok_fp32=ok_fp32, ok_int8=ok_int8)
        return runs[key]

    return get


@pytest.mark.parametrize("key", list(IMAGENET_MODELS))
def test_imagenet_int8_top1_within_tolerance_of_fp32(imagenet_run, key):
    r = imagenet_run(key)
    s = r["result"].summary
    n_eval = len(r["eval_ids"])
    # the summary evaluated the whole eval split (~half of 500) and calibrated on the rest
    assert s["held_out"]["samples"] == n_eval and 200 <= n_eval <= 300
    assert s["calibration_samples"] == len(r["ds"]) - n_eval
    assert s["algorithm"] == "entropy" and s["target"] == "tensorrt"

    top1 = _metric(s, "top1")
    fp32_acc, int8_acc = r["ok_fp32"].mean(), r["ok_int8"].mean()
    # the summary's numbers are exactly what running the written files gives
    assert top1["samples"] == n_eval
    assert top1["reference"]["estimate"] == pytest.approx(fp32_acc, abs=1e-12)
    assert top1["candidate"]["estimate"] == pytest.approx(int8_acc, abs=1e-12)
    mc = top1["mcnemar"]
    assert mc["reference_only_correct"] == int(np.sum(r["ok_fp32"] & ~r["ok_int8"]))
    assert mc["candidate_only_correct"] == int(np.sum(r["ok_int8"] & ~r["ok_fp32"]))
    # labels really are wired (FP32 on this sample: EfficientNet-Lite0 ~89%, SqueezeNet ~60%)
    assert fp32_acc > 0.5
    # the acceptance criterion
    drop_pts = 100 * (fp32_acc - int8_acc)
    assert drop_pts <= r["tol"], f"{key}: INT8 {100 * int8_acc:.2f}% vs FP32 {100 * fp32_acc:.2f}%"
    # the printed line carries the held-out agreement
    agree = _metric(s, "top1_agreement")["candidate"]["estimate"]
    assert any(ln.startswith(f"held-out ({n_eval} samples)") and "top1_agreement" in ln for ln in s["lines"])
    assert 0.85 <= agree <= 1.0
    assert "warning" not in s["held_out"] and not any(ln.startswith("warning:") for ln in s["lines"])
    print(f"{key}: FP32 top-1 {100 * fp32_acc:.2f}%, INT8 {100 * int8_acc:.2f}% "
          f"({n_eval} held-out), agreement {100 * agree:.2f}%")


@pytest.mark.parametrize("key", list(IMAGENET_MODELS))
def test_calibration_and_eval_splits_are_disjoint(imagenet_run, key):
    r = imagenet_run(key)
    ds = r["ds"]
    calib_ids, eval_ids = ds.split("calib").ids, ds.split("eval").ids
    assert not set(calib_ids) & set(eval_ids)
    assert sorted(calib_ids + eval_ids) == sorted(ds.ids) and len(ds.ids) == 500
    assert r["eval_ids"] == eval_ids
    assert all(split_of(i) == "eval" for i in eval_ids) and all(split_of(i) == "calib" for i in calib_ids)
    # the sidecar records exactly the calibration split's ids as what was calibrated on
    data = read_sidecar(r["result"].paths["cache"])["data"]
    assert data["split"] == "calib" and data["count"] == len(calib_ids)
    assert data["ids_sha256"] == hashlib.sha256("\n".join(calib_ids).encode()).hexdigest()


def test_cache_reads_back_bit_identical_and_checks_provenance(imagenet_run, models_dir):
    r = imagenet_run("efficientnet_lite0")
    res = r["result"]
    cache = read_cache(res.paths["cache"])
    assert cache.algorithm == "EntropyCalibration2" and cache.version == 100900
    assert sorted(cache.scales) == sorted(res.scales) and len(cache.scales) > 100
    names = sorted(res.scales)
    np.testing.assert_array_equal(_f32_bits([cache.scales[n] for n in names]),
                                  _f32_bits([res.scales[n] for n in names]))
    # scales are amax / 127 of the result's amax (tensors without a range are left out)
    for n in names:
        assert res.scales[n] == res.amax[n] / 127.0 and res.amax[n] > 0
    assert set(res.amax) - set(res.scales) == set(res.summary.get("unranged_tensors", []))
    # the cache covers the model's input and every quantized activation of the written Q/DQ model
    assert "input" in cache.scales and "logits" in cache.scales

    check_provenance(res.paths["sidecar"], r["model"], cache=cache)
    with pytest.raises(CacheMismatchError) as ei:
        check_provenance(res.paths["sidecar"], models_dir / "squeezenet1_1_fp32.onnx", cache=cache)
    msg = str(ei.value)
    assert "model hash differs" in msg and "efficientnet_lite0" in msg and "squeezenet1_1_fp32" in msg
    assert "missing from this model" in msg and "\n" not in msg


# --------------------------------------------------------------------------- determinism
N_DET = 40   # images for the determinism runs (keeps them to seconds)


@pytest.fixture(scope="module")
def det_images(tmp_path_factory, imagenet_dir):
    """A folder with N_DET of the shared photographs (same file names: ids decide splits)."""
    d = tmp_path_factory.mktemp("det_imgs")
    for p in sorted(imagenet_dir.iterdir())[::500 // N_DET][:N_DET]:
        shutil.copy(p, d / p.name)
    return d


def _run(model, data, out, **kw):
    kw.setdefault("preprocess", "efficientnet-lite")
    res = calibrate(model, data, out=out, evaluate=False, progress=False, **kw)
    return res.paths["cache"].read_bytes(), res.paths["qdq"].read_bytes(), res


def test_cache_and_qdq_independent_of_batch_size_order_and_source(tmp_path, efficientnet_path, det_images):
    m = Model.load(efficientnet_path)
    cache16, qdq16, res = _run(m, det_images, tmp_path / "bs16", batch_size=16)
    cache5, qdq5, _ = _run(m, det_images, tmp_path / "bs5", batch_size=5)
    assert cache16 == cache5 and qdq16 == qdq5

    # The same calibration samples as an iterable of single-sample feed dicts, in shuffled order.
    # Iterable ids are positions, so the calibration samples go to positions the split rule puts
    # in "calib" and the held-out ones fill the "eval" positions.
    ds = open_dataset(det_images, m, "efficientnet-lite")
    calib_ids = ds.split("calib").ids
    assert len(calib_ids) == res.summary["calibration_samples"] >= 10
    feeds = {}
    for b in ds.batches(batch_size=8):
        for k, sid in enumerate(b.ids):
            feeds[sid] = {"input": b.feed["input"][k]}
    calib_feeds = [feeds[i] for i in calib_ids]
    other_feeds = [feeds[i] for i in ds.split("eval").ids]
    random.Random(1).shuffle(calib_feeds)
    random.Random(2).shuffle(other_feeds)
    items, k = [], 0
    while calib_feeds:
        # (not evaluated here: the held-out positions may repeat held-out samples)
        items.append(calib_feeds.pop() if split_of(str(k)) == "calib" else other_feeds[k % len(other_feeds)])
        k += 1
    assert sum(split_of(str(i)) == "calib" for i in range(len(items))) == len(calib_ids)
    cache_it, qdq_it, res_it = _run(m, items, tmp_path / "iter", batch_size=3, preprocess=None)
    assert res_it.summary["calibration_samples"] == len(calib_ids)
    assert cache_it == cache16 and qdq_it == qdq16


def test_same_seed_same_bytes_other_seed_other_samples(tmp_path, efficientnet_path, imagenet_dir):
    m = Model.load(efficientnet_path)
    a = _run(m, imagenet_dir, tmp_path / "a", samples=12, seed=0)
    b = _run(m, imagenet_dir, tmp_path / "b", samples=12, seed=0)
    c = _run(m, imagenet_dir, tmp_path / "c", samples=12, seed=7)
    assert a[0] == b[0] and a[1] == b[1]
    # a different seed draws other calibration samples: the test can see a difference
    sa, sc = (json.loads(r[2].paths["sidecar"].read_text())["data"] for r in (a, c))
    assert sa["count"] == sc["count"] == 12 and sa["ids_sha256"] != sc["ids_sha256"]
    assert a[0] != c[0]


# --------------------------------------------------------------------------- PP-OCRv4 det
DET_RESIZE = 160   # line images are 80 px high; the preset's 736 upscales each to ~0.7-2 Mpx (too slow for CI)
DET_SAMPLES = 48
# Calibrated one image per batch: RapidOCR/PaddleOCR run the detector on one image at a time, so
# the zero (mid-grey) padding of mixed-size batches is input the deployed model never sees; it
# adds its own constant responses to every histogram.
DET_CALIB_BATCH = 1


def _det_run(tmp_path_factory, shared_model, ocr_lines_dir, algorithm: str, smooth=0.75) -> dict:
    model = Model.load(shared_model("ppocrv4_det"))
    pre = Preprocess.preset("paddleocr-det", resize=DET_RESIZE)
    ds = open_dataset(ocr_lines_dir, model, pre)
    res = calibrate(model, None, dataset=ds, samples=DET_SAMPLES, batch_size=DET_CALIB_BATCH, evaluate=False,
                    out=tmp_path_factory.mktemp(f"det_{algorithm}_{smooth}"), progress=False, algorithm=algorithm,
                    smooth=smooth)
    eval_ds = ds.split("eval").subset(limit=DET_SAMPLES, seed=0)
    fp32 = OrtEngine(model, name="fp32")
    int8 = OrtEngine(res.paths["qdq"], name="int8", precision="int8")
    cos = []
    for b in eval_ds.batches(batch_size=1):   # one image per run: no padding in the maps compared
        (ref,) = fp32.run(b.feed).values()
        (got,) = int8.run(b.feed).values()
        assert ref.shape == got.shape and ref.shape[1] == 1
        r, g = ref.ravel().astype(np.float64), got.ravel().astype(np.float64)
        cos.append(float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g))))
    return dict(result=res, ds=ds, eval_ids=eval_ds.ids, cos=np.array(cos))


@pytest.fixture(scope="module")
def ppocr_det_run(tmp_path_factory, shared_model, ocr_lines_dir):
    """The default algorithm (entropy), channel smoothing on (the default)."""
    return _det_run(tmp_path_factory, shared_model, ocr_lines_dir, "entropy")


@pytest.fixture(scope="module")
def ppocr_det_max_run(tmp_path_factory, shared_model, ocr_lines_dir):
    """max calibration, channel smoothing on."""
    return _det_run(tmp_path_factory, shared_model, ocr_lines_dir, "max")


@pytest.fixture(scope="module")
def ppocr_det_max_runs(ppocr_det_max_run, tmp_path_factory, shared_model, ocr_lines_dir):
    """max calibration with and without channel smoothing."""
    return {0.75: ppocr_det_max_run, None: _det_run(tmp_path_factory, shared_model, ocr_lines_dir, "max", smooth=None)}


@pytest.mark.slow
def test_ppocr_det_calibrates_on_held_out_lines(ppocr_det_run):
    """Slow: the default test below checks the detector's calibration the same way (with max);
    entropy's spike protection is test_algorithms', and its artifacts are pinned."""
    r = ppocr_det_run
    res = r["result"]
    assert res.summary["calibration_samples"] == DET_SAMPLES
    assert not set(r["eval_ids"]) & set(r["ds"].split("calib").ids)
    assert len(r["cos"]) == DET_SAMPLES and np.all(np.isfinite(r["cos"]))
    assert read_cache(res.paths["cache"]).scales.keys() == res.scales.keys()
    print(f"PP-OCRv4 det INT8 (entropy) vs FP32 probability-map cosine on {len(r['cos'])} held-out lines: "
          f"mean {r['cos'].mean():.4f}, min {r['cos'].min():.4f}")
    # regression floor for entropy's spike protection: the literal search clipped whole channels'
    # background responses here (mean 0.69 at 160 px, 0.00 at the preset's 736); protected 0.95,
    # with channel smoothing 0.97
    assert r["cos"].mean() >= 0.95 and r["cos"].min() >= 0.85, (r["cos"].mean(), r["cos"].min())


def test_ppocr_det_probability_map_cosine_at_least_0_99(ppocr_det_max_run):
    """The acceptance bar, met by max calibration of the channel-smoothed Q/DQ model.

    Entropy keeps 0.97 here (above): on this detector its KL search clips the strong, rare
    responses that mark text (thresholds at 0.3-0.6 of the range on the sensitive tensors).
    Across other calibration subsets (seeds 1-3, 32 lines) max + smoothing gave 0.992-0.993,
    and 0.994 at the preset's 736 px (16 lines)."""
    r = ppocr_det_max_run
    cos, res = r["cos"], r["result"]
    assert res.summary["calibration_samples"] == DET_SAMPLES and len(cos) == DET_SAMPLES
    assert not set(r["eval_ids"]) & set(r["ds"].split("calib").ids)
    assert read_cache(res.paths["cache"]).scales.keys() == res.scales.keys()
    assert res.summary["smoothing"]["tensors"] and len(res.smoothing) == 27
    assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f} (min {cos.min():.4f}) over {len(cos)} lines"


@pytest.mark.slow
def test_ppocr_det_smoothing_is_what_makes_max_work_and_leaves_the_cache_alone(ppocr_det_max_runs):
    """Slow: that smoothing leaves the cache alone is pinned (test_artifacts_pinned's rec-ort and
    rec-ort-nosmooth share one cache); what it buys here, the default test above requires."""
    on, off = ppocr_det_max_runs[0.75], ppocr_det_max_runs[None]
    # without smoothing one channel sets each tensor's scale (0.81 measured)
    assert off["cos"].mean() < 0.9 < on["cos"].mean()
    assert off["result"].summary["smoothing"] is None and not off["result"].smoothing
    # the cache describes the unmodified model TensorRT parses: byte for byte the same
    assert on["result"].paths["cache"].read_bytes() == off["result"].paths["cache"].read_bytes()
    assert on["result"].paths["qdq"].read_bytes() != off["result"].paths["qdq"].read_bytes()
    assert "tensors smoothed" in on["result"].qdq_model.quant_report.summary()


@pytest.mark.slow
def test_poor_held_out_fidelity_is_called_out_with_what_to_try(tmp_path, shared_model, ocr_lines_dir):
    """PP-OCRv4 rec with entropy: its KL search clips the rare large activations the recogniser
    depends on (0% of held-out lines decode as FP32 does; max gives about 60%): the summary says so.
    Slow: test_calibrate_auto checks the same warning on the direction classifier."""
    model = Model.load(shared_model("ppocrv4_rec"))
    ds = open_dataset(ocr_lines_dir, model, "paddleocr-rec")
    res = calibrate(model, None, dataset=ds, samples=32, eval_samples=32, batch_size=8, progress=False, write=False)
    agree = _metric(res.summary, "ctc_agreement")["candidate"]["estimate"]
    assert agree < 0.85
    warn = [ln for ln in res.summary["lines"] if ln.startswith("warning:")]
    assert len(warn) == 1 and "ctc_agreement" in warn[0] and "--algorithm auto" in warn[0]
    assert res.summary["held_out"]["warning"] in warn[0]
