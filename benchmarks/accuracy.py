"""INT8 accuracy against the labels, ours against ONNX Runtime's quantize_static and NVIDIA Model
Optimizer's ONNX PTQ, with its noise.

The acceptance protocol (calibrate on 250 of the 500 ImageNet photos, score on the other 250)
leaves about 250 labelled predictions per model, and INT8 models differ from each other on a
handful of them: top-1 differences of 1-2 photos are chance. This script measures the same
thing with as much of the data as there is, and says how large chance is:

- both folds: calibrate on the ``calib`` split and score the ``eval`` split, then the reverse,
  so every one of the 500 photos is scored by a model that never saw it;
- two views of each photo: as preprocessed, and mirrored left-right (a label-preserving view
  of the same photograph), 1000 labelled predictions per method in all;
- for each method: top-1 against the labels, top-1 agreement with FP32, KL(FP32 || INT8) of
  the softmax outputs and the mean negative log-likelihood of the true label (continuous
  measures that move less by chance than top-1), and a paired bootstrap 95% interval (photos
  resampled, 2000 times) of its top-1 difference from our entropy.

Every method calibrates on the same 240 photos per fold, as ``calibration.py`` does (ORT's
Entropy/Percentile calibrators need equal batches). ONNX Runtime's Entropy and Percentile peak
near 20 GB of RAM each. "MO entropy" and "MO max" are Model Optimizer's
``modelopt.onnx.quantization.quantize`` (int8, CPU execution provider, its own Q/DQ placement,
FP32 elsewhere), run by ``modelopt_worker.py`` in its own virtual environment
(``--modelopt-python``, default ``.venv-modelopt`` at the repo root; skipped, with a line saying
how to make it, when missing) on the same preloaded batches, and scored here like the others.
Takes about 6 minutes on this 2-core machine, plus about 1.5 for Model Optimizer's two methods;
about 3 minutes in all with ``--skip-ort-heavy`` (1.2 without Model Optimizer either).

    python benchmarks/accuracy.py [--model efficientnet_lite0] [--skip-ort-heavy] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from calibration import (MODELOPT_METHODS, MODELS, _open, _preload, modelopt_python, modelopt_quantize,
                         ort_quantize)

OURS = ("entropy", "max", "percentile", "mse")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def _outputs(model, batches, threads: int) -> np.ndarray:
    """Log-softmax outputs ``[view, sample, class]`` for the plain and the mirrored view."""
    from calib.backends.onnxruntime import OrtEngine

    eng = OrtEngine(model, threads=threads)
    views = []
    for flip in (False, True):
        ys = []
        for feed, labels in batches:
            f = {k: (np.ascontiguousarray(v[..., ::-1]) if flip else v) for k, v in feed.items()}
            ys.append(eng.run(f)[eng.output_names[0]].reshape(len(labels), -1))
        views.append(_log_softmax(np.concatenate(ys)))
    return np.stack(views)


def fold(key: str, swap: bool, samples: int, batch: int, threads: int, ort_methods, mo_python=None) -> dict:
    """``{method: log-softmax [2, N, C]}`` plus ``labels`` and ``fp32`` for one fold."""
    from calib.algorithms import compute_amax
    from calib.collect import collect_statistics
    from calib.qdq import quantize_model

    cal_split, ev_split = ("eval", "calib") if swap else ("calib", "eval")
    model, cal = _open(key, cal_split, samples)
    _, ev = _open(key, ev_split)
    cal_b, ev_b = _preload(cal, batch), _preload(ev, batch)
    res = {"labels": np.concatenate([lab for _, lab in ev_b]), "fp32": _outputs(model, ev_b, threads)}
    obs = collect_statistics(model, (f for f, _ in cal_b), threads=threads, progress=False)
    for alg in OURS:
        amax = {k: float(compute_amax(o, alg)) for k, o in obs.items()}
        res[f"calib {alg}"] = _outputs(quantize_model(model, amax, target="tensorrt"), ev_b, threads)
    with tempfile.TemporaryDirectory() as tmp:
        for m in ort_methods:
            print(f"  ORT quantize_static {m} ...", file=sys.stderr, flush=True)
            path = ort_quantize(model, cal_b, m, Path(tmp) / f"{m}.onnx")
            res[f"ORT {m}"] = _outputs(path, ev_b, threads)
        for m in MODELOPT_METHODS if mo_python is not None else ():
            print(f"  Model Optimizer {m} ...", file=sys.stderr, flush=True)
            path = Path(tmp) / f"modelopt_{m}.onnx"
            modelopt_quantize(model, cal_b, m, path, mo_python, threads)
            res[f"MO {m}"] = _outputs(path, ev_b, threads)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="efficientnet_lite0")
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-ort-heavy", action="store_true", help="ORT MinMax only (Entropy/Percentile need ~20 GB)")
    ap.add_argument("--modelopt-python", default=None, metavar="PATH",
                    help="Python of Model Optimizer's virtual environment (default: .venv-modelopt at the repo root)")
    ap.add_argument("--skip-modelopt", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    ort_methods = ["MinMax"] if a.skip_ort_heavy else ["MinMax", "Entropy", "Percentile"]
    mo_python = None if a.skip_modelopt else modelopt_python(a.modelopt_python)

    folds = []
    for swap in (False, True):
        print(f"fold {'2 (swapped)' if swap else 1} ...", file=sys.stderr, flush=True)
        folds.append(fold(a.model, swap, a.samples, a.batch_size, a.threads, ort_methods, mo_python))
    labels = np.concatenate([f["labels"] for f in folds])               # [N] over both folds
    out = {k: np.concatenate([f[k] for f in folds], axis=1) for k in folds[0] if k != "labels"}
    n_views, n = out["fp32"].shape[:2]
    idx = np.arange(n)
    ref = out["fp32"]
    ref_top = ref.argmax(2)
    # per photo: correct views (0..2), for the paired bootstrap
    hits = {k: (v.argmax(2) == labels).sum(0) for k, v in out.items()}
    rng = np.random.default_rng(a.seed)
    draws = rng.integers(0, n, size=(2000, n))
    base = "calib entropy"
    rows = []
    for k, v in out.items():
        top1 = int(hits[k].sum())
        fold_top1 = [int((f[k][0].argmax(1) == f["labels"]).sum()) for f in folds]
        agree = int((v.argmax(2) == ref_top).sum())
        kl = float((np.exp(ref) * (ref - v)).sum(2).mean())
        nll = float(-v[:, idx, labels].mean())
        diff = (hits[k] - hits[base])[draws].sum(1) / (n_views * n) * 100
        lo, hi = np.percentile(diff, [2.5, 97.5])
        rows.append(dict(method=k, top1=top1, fold_top1=fold_top1, agreement=agree, kl=kl, nll=nll,
                         diff_pt=(top1 - int(hits[base].sum())) / (n_views * n) * 100, ci=[float(lo), float(hi)]))

    sizes = [len(f["labels"]) for f in folds]
    print(f"\nINT8 accuracy, {a.model}: both folds ({sizes[0]} + {sizes[1]} held-out photos, {a.samples} calibration "
          f"photos each) x 2 views (plain, mirrored) = {n_views * n} labelled predictions per method\n")
    print("| method | top-1, plain view, fold 1 / fold 2 | top-1, all | vs calib entropy, pt (95% CI) | "
          "agreement with FP32 | KL(FP32‖INT8) | NLL of the label |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vs = "" if r["method"] in (base, "fp32") else f"{r['diff_pt']:+.1f} ({r['ci'][0]:+.1f}, {r['ci'][1]:+.1f})"
        ag = "" if r["method"] == "fp32" else f"{r['agreement']}"
        kl = "" if r["method"] == "fp32" else f"{r['kl']:.5f}"
        name = "FP32" if r["method"] == "fp32" else r["method"]
        print(f"| {name} | {r['fold_top1'][0]} / {r['fold_top1'][1]} | {r['top1']} ({r['top1'] / (n_views * n) * 100:.1f}%) "
              f"| {vs} | {ag} | {kl} | {r['nll']:.4f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
