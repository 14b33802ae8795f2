"""Which algorithm suits which model, and does ``--algorithm auto`` find it?

For each shared model: calibrate with every algorithm (same calibration samples, channel smoothing
and bias correction on unless ``--no-bias-correction``, TensorRT Q/DQ placement), score each INT8
model against FP32 on held-out samples, and run ``--algorithm auto``, which chooses from calibration
samples only (it scores the candidates on up to 64 of them, with ranges fitted to the others). The
held-out metric is the one ``auto`` optimises (KL(FP32 || INT8) for classifiers, greedy CTC decode
agreement for the recogniser, output SQNR for the detector's probability map), with top-1 / decode
agreement or map IoU beside it. Auto's artifacts are byte for byte those of the algorithm it chose,
so its held-out score is that algorithm's.

    python benchmarks/algorithms.py                      # all five models, about 4 minutes
    python benchmarks/algorithms.py --models cls,rec
"""
from __future__ import annotations

import argparse
import sys
import warnings

from _common import SHARED

ALGS = ("entropy", "percentile", "mse", "max")
# key: (file, data folder, preset, preset overrides, calibration samples, held-out samples, batch)
MODELS = {
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "imagenet-sample", "efficientnet-lite", {}, 240, 250, 16),
    "squeezenet1_1": ("squeezenet1_1_fp32.onnx", "imagenet-sample", "caffe", {}, 240, 250, 16),
    "ppocr_cls": ("ppocr_mobile_v2_cls.onnx", "ocr-lines", "paddleocr-cls", {}, 100, 100, 16),
    "ppocrv4_rec": ("ppocrv4_rec.onnx", "ocr-lines", "paddleocr-rec", {}, 100, 100, 1),
    "ppocrv4_det": ("ppocrv4_det.onnx", "ocr-lines", "paddleocr-det", {"resize": 160}, 48, 48, 1),
}
SHORT = {"cls": "ppocr_cls", "rec": "ppocrv4_rec", "det": "ppocrv4_det", "eff": "efficientnet_lite0",
         "squeezenet": "squeezenet1_1"}
SECOND = {"kl_divergence": "top1_agreement", "ctc_agreement": "sqnr", "sqnr": "iou@0.3"}


def _metrics(summary) -> dict:
    ms = summary["held_out"]["report"]["candidates"][0]["metrics"]
    return {m["name"]: float(m["candidate"]["estimate"]) for m in ms if m.get("candidate")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                    help="Q/DQ models without bias correction (calibrate's --no-bias-correction)")
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from calib.datasets import Preprocess, open_dataset
    from calib.model import Model
    from calib.pipeline import calibrate

    rows = []
    for key in a.models.split(","):
        key = SHORT.get(key, key)
        fname, data, preset, over, ncal, nev, bs = MODELS[key]
        model = Model.load(SHARED / "models" / fname)
        kw = {"classes": SHARED / "data" / "imagenet1k_classes.tsv"} if data == "imagenet-sample" else {}
        ds = open_dataset(SHARED / "data" / data, model, Preprocess.preset(preset, **over), **kw)
        print(f"{key} ...", file=sys.stderr, flush=True)
        common = dict(dataset=ds, samples=ncal, eval_samples=nev, batch_size=bs, threads=a.threads,
                      progress=False, write=False, bias_correction=a.bias_correction)
        auto = calibrate(model, None, algorithm="auto", **common)
        sel = auto.summary["params"]["selection"]
        runs = {alg: calibrate(model, None, algorithm=alg, **common).summary for alg in ALGS}
        held = {alg: _metrics(runs[alg]) for alg in ALGS}
        rows.append((key, auto, sel, held, runs[sel["chosen"]]["timing_s"]["total"]))

    print("\nHeld-out INT8 vs FP32 per algorithm (TensorRT Q/DQ placement, channel smoothing on, bias correction "
          f"{'on' if a.bias_correction else 'off'}); "
          "**bold**: the algorithm auto chose from calibration samples alone; in brackets: the second metric\n")
    print("| model | calibration / held-out samples | held-out metric | " + " | ".join(ALGS)
          + " | auto chose | auto's selection scores | auto's run / its choice's run (s) |")
    print("|---|---|---|" + "---:|" * len(ALGS) + "---|---|---:|")
    for key, auto, sel, held, t_chosen in rows:
        metric = sel["metric"]
        second = SECOND.get(metric)
        cells = []
        for alg in ALGS:
            v = held[alg].get(metric, float("nan"))
            s = held[alg].get(second) if second else None
            txt = f"{v:.4g}" + (f" ({s:.3g})" if s is not None else "")
            cells.append(f"**{txt}**" if alg == sel["chosen"] else txt)
        ins = ", ".join(f"{alg} {sel['scores'][alg][metric]:.3g}" for alg in ALGS)
        n_ho = auto.summary["held_out"]["samples"]
        print(f"| {key} | {auto.summary['calibration_samples']} / {n_ho} | {metric} ({second}) | "
              + " | ".join(cells)
              + f" | {sel['chosen']} | {ins} | {auto.summary['timing_s']['total']:.1f} / {t_chosen:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
