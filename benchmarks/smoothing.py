"""Channel smoothing on PP-OCRv4's detector: probability-map cosine (INT8 Q/DQ vs FP32) on
held-out OCR lines, for each algorithm with and without smoothing.

    python benchmarks/smoothing.py                       # 160 px, 48 calibration / 48 held-out lines
    python benchmarks/smoothing.py --resize 736 --samples 16 --eval 12 --algorithms max
    python benchmarks/smoothing.py --seeds 1,2,3 --samples 32 --algorithms max,percentile --no-baseline
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from _common import SHARED


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resize", type=int, default=160)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--algorithms", default="entropy,max,percentile")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--alpha", type=float, default=0.75)
    ap.add_argument("--no-baseline", action="store_true", help="skip the runs without smoothing")
    ap.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                    help="Q/DQ models without bias correction (calibrate's --no-bias-correction)")
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    from calib.backends.onnxruntime import OrtEngine
    from calib.datasets import Preprocess, open_dataset
    from calib.model import Model
    from calib.pipeline import calibrate

    model = Model.load(SHARED / "models" / "ppocrv4_det.onnx")
    ds = open_dataset(SHARED / "data" / "ocr-lines", model, Preprocess.preset("paddleocr-det", resize=a.resize))
    feeds = [b.feed for b in ds.split("eval").subset(limit=a.eval, seed=0).batches(batch_size=1)]
    fp32 = OrtEngine(model)
    refs = [next(iter(fp32.run(f).values())).ravel().astype(np.float64) for f in feeds]

    print(f"PP-OCRv4 det at {a.resize} px: {a.samples} calibration lines, {len(feeds)} held-out lines, "
          f"batch 1; probability-map cosine INT8 (tensorrt Q/DQ, bias correction "
          f"{'on' if a.bias_correction else 'off'}) vs FP32\n")
    print("| algorithm | seed | smoothing | tensors smoothed | mean cosine | min cosine |")
    print("|---|---:|---|---:|---:|---:|")
    for alg in a.algorithms.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            for smooth in ((a.alpha,) if a.no_baseline else (None, a.alpha)):
                res = calibrate(model, None, dataset=ds, samples=a.samples, batch_size=1, seed=seed, evaluate=False,
                                progress=False, write=False, algorithm=alg, smooth=smooth,
                                bias_correction=a.bias_correction)
                engine = OrtEngine(res.qdq_model)
                cos = []
                for f, r in zip(feeds, refs):
                    g = next(iter(engine.run(f).values())).ravel().astype(np.float64)
                    cos.append(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))
                label = "off" if smooth is None else f"alpha {smooth:g}"
                print(f"| {alg} | {seed} | {label} | {len(res.smoothing)} | {np.mean(cos):.4f} | {np.min(cos):.4f} |",
                      flush=True)


if __name__ == "__main__":
    main()
