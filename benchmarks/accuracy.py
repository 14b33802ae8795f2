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

Our four algorithms' Q/DQ models are what ``calibrate`` writes: bias-corrected on 64 of the
calibration photos (``calib.pipeline.build_qdq``); "calib entropy, no bias correction" is
entropy's without it (``--no-bias-correction``).

Every method calibrates on the same 240 photos per fold, as ``calibration.py`` does (ORT's
Entropy/Percentile calibrators need equal batches). ONNX Runtime's Entropy and Percentile peak
near 20 GB of RAM each. "MO entropy" and "MO max" are Model Optimizer's
``modelopt.onnx.quantization.quantize`` (int8, CPU execution provider, its own Q/DQ placement,
FP32 elsewhere), run by ``modelopt_worker.py`` in its own virtual environment
(``--modelopt-python``, default ``.venv-modelopt`` at the repo root; skipped, with a line saying
how to make it, when missing) on the same preloaded batches, and scored here like the others.
Takes about 6 minutes on this 2-core machine, plus about 1.5 for Model Optimizer's two methods;
about 3 minutes in all with ``--skip-ort-heavy`` (1.2 without Model Optimizer either).

Two controls for reading small gaps:

- ``--levels all,basic,none`` scores every INT8 model at each of ONNX Runtime's graph
  optimisation levels (FP32, the reference, always at ``all``). At ``none`` a Q/DQ model is run
  op by op as the ONNX standard defines it; at ``basic``/``all`` ONNX Runtime fuses Q/DQ
  patterns into its own integer kernels, which round differently. How much a method's score
  moves between levels is the part of a gap that belongs to the runtime, not to calibration.
  Each extra level adds about a minute.
- "calib Q/DQ, MO entropy's ranges, no bias correction" (with Model Optimizer) is our Q/DQ
  placement given Model Optimizer's entropy ranges, read from its model's QuantizeLinear
  scales, without our bias correction (Model Optimizer has none): set beside "calib entropy, no
  bias correction" it compares the two ranges in one placement.

    python benchmarks/accuracy.py [--model efficientnet_lite0] [--skip-ort-heavy] [--levels all] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from calibration import MODELOPT_METHODS, MODELS, _open, _preload, modelopt_python, modelopt_quantize, ort_quantize

OURS = ("entropy", "max", "percentile", "mse")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def _outputs(model, batches, threads: int, optimize: str = "all") -> np.ndarray:
    """Log-softmax outputs ``[view, sample, class]`` for the plain and the mirrored view."""
    from calib.backends.onnxruntime import OrtEngine

    eng = OrtEngine(model, threads=threads, optimize=optimize)
    views = []
    for flip in (False, True):
        ys = []
        for feed, labels in batches:
            f = {k: (np.ascontiguousarray(v[..., ::-1]) if flip else v) for k, v in feed.items()}
            ys.append(eng.run(f)[eng.output_names[0]].reshape(len(labels), -1))
        views.append(_log_softmax(np.concatenate(ys)))
    return np.stack(views)


def activation_ranges(path) -> dict:
    """``{tensor: amax}`` of a Q/DQ model's per-tensor activation quantization (scale x 127 of each
    QuantizeLinear whose input is not a constant)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    out = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in consts and n.input[1] in consts:
            s = consts[n.input[1]]
            if s.size == 1:
                out[n.input[0]] = float(s.reshape(())) * 127.0
    return out


def fold(key: str, swap: bool, samples: int, batch: int, threads: int, ort_methods, mo_python=None,
         levels=("all",)) -> dict:
    """``{level: {method: log-softmax [2, N, C]}}`` plus ``labels`` and ``fp32`` for one fold."""
    from calib.algorithms import compute_amax
    from calib.collect import collect_statistics
    from calib.pipeline import bias_probe_samples, build_qdq
    from calib.qdq import prepare, quantize_model

    cal_split, ev_split = ("eval", "calib") if swap else ("calib", "eval")
    model, cal = _open(key, cal_split, samples)
    _, ev = _open(key, ev_split)
    cal_b, ev_b = _preload(cal, batch), _preload(ev, batch)
    fp32 = _outputs(model, ev_b, threads)
    res = {"labels": np.concatenate([lab for _, lab in ev_b]), "fp32": fp32,
           "levels": {lvl: {"fp32": fp32} for lvl in levels}}

    def score(name, m):
        for lvl in levels:
            res["levels"][lvl][name] = _outputs(m, ev_b, threads, lvl)

    obs = collect_statistics(model, (f for f, _ in cal_b), threads=threads, progress=False)
    ranges = {alg: {k: float(compute_amax(o, alg)) for k, o in obs.items()} for alg in OURS}
    prepared, probe_ds = prepare(model), bias_probe_samples(cal, 0)   # as calibrate does it
    for alg in OURS:
        score(f"calib {alg}", build_qdq(prepared, ranges[alg], probe_ds=probe_ds, threads=threads))
    score("calib entropy, no bias correction", quantize_model(prepared, ranges["entropy"], target="tensorrt"))
    with tempfile.TemporaryDirectory() as tmp:
        for m in ort_methods:
            print(f"  ORT quantize_static {m} ...", file=sys.stderr, flush=True)
            path = ort_quantize(model, cal_b, m, Path(tmp) / f"{m}.onnx")
            score(f"ORT {m}", path)
        for m in MODELOPT_METHODS if mo_python is not None else ():
            print(f"  Model Optimizer {m} ...", file=sys.stderr, flush=True)
            path = Path(tmp) / f"modelopt_{m}.onnx"
            modelopt_quantize(model, cal_b, m, path, mo_python, threads)
            score(f"MO {m}", path)
            if m == "entropy":
                # its ranges where it has them (the Pad outputs it quantizes are the same values as
                # the Clip outputs our placement quantizes after folding the Pads), ours elsewhere
                theirs = activation_ranges(path)
                producers = model.producers()
                for t in list(theirs):
                    p = producers.get(t)
                    if p is not None and p.op_type == "Pad":
                        theirs.setdefault(p.input[0], theirs[t])
                score("calib Q/DQ, MO entropy's ranges, no bias correction",
                      quantize_model(prepared, {**ranges["entropy"], **theirs}, target="tensorrt"))
    return res


def _rows(folds, level: str, seed: int):
    """Per method: top-1 (all, and per fold on the plain view), agreement, KL, NLL and the paired
    bootstrap interval of its top-1 difference from our entropy, at ONNX Runtime *level*."""
    labels = np.concatenate([f["labels"] for f in folds])               # [N] over both folds
    out = {k: np.concatenate([f["levels"][level][k] for f in folds], axis=1) for k in folds[0]["levels"][level]}
    n_views, n = out["fp32"].shape[:2]
    idx = np.arange(n)
    ref = out["fp32"]
    ref_top = ref.argmax(2)
    # per photo: correct views (0..2), for the paired bootstrap
    hits = {k: (v.argmax(2) == labels).sum(0) for k, v in out.items()}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(2000, n))
    base = "calib entropy"
    rows = []
    for k, v in out.items():
        top1 = int(hits[k].sum())
        fold_top1 = [int((f["levels"][level][k][0].argmax(1) == f["labels"]).sum()) for f in folds]
        agree = int((v.argmax(2) == ref_top).sum())
        kl = float((np.exp(ref) * (ref - v)).sum(2).mean())
        nll = float(-v[:, idx, labels].mean())
        diff = (hits[k] - hits[base])[draws].sum(1) / (n_views * n) * 100
        lo, hi = np.percentile(diff, [2.5, 97.5])
        rows.append(dict(method=k, level=level, top1=top1, fold_top1=fold_top1, agreement=agree, kl=kl, nll=nll,
                         diff_pt=(top1 - int(hits[base].sum())) / (n_views * n) * 100, ci=[float(lo), float(hi)]))
    return rows, n_views * n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="efficientnet_lite0")
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-ort-heavy", action="store_true", help="ORT MinMax only (Entropy/Percentile need ~20 GB)")
    ap.add_argument("--skip-ort", action="store_true",
                    help="no ORT quantize_static rows (it writes an invalid model for SqueezeNet 1.1's opset 7)")
    ap.add_argument("--modelopt-python", default=None, metavar="PATH",
                    help="Python of Model Optimizer's virtual environment (default: .venv-modelopt at the repo root)")
    ap.add_argument("--skip-modelopt", action="store_true")
    ap.add_argument("--levels", default="all",
                    help="comma-separated ONNX Runtime optimisation levels to score the INT8 models at "
                         "(all, extended, basic, none); the first one gives the main table")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    levels = [x.strip() for x in a.levels.split(",") if x.strip()]
    bad = [x for x in levels if x not in ("all", "extended", "basic", "none")]
    if not levels or bad:
        ap.error(f"--levels: unknown level(s) {', '.join(bad) or '(none given)'}; "
                 "choose from all, extended, basic, none")
    ort_methods = [] if a.skip_ort else ["MinMax"] if a.skip_ort_heavy else ["MinMax", "Entropy", "Percentile"]
    mo_python = None if a.skip_modelopt else modelopt_python(a.modelopt_python)

    folds = []
    for swap in (False, True):
        print(f"fold {'2 (swapped)' if swap else 1} ...", file=sys.stderr, flush=True)
        folds.append(fold(a.model, swap, a.samples, a.batch_size, a.threads, ort_methods, mo_python, levels))
    by_level = {lvl: _rows(folds, lvl, a.seed) for lvl in levels}
    rows, total = by_level[levels[0]]

    sizes = [len(f["labels"]) for f in folds]
    print(f"\nINT8 accuracy, {a.model}: both folds ({sizes[0]} + {sizes[1]} held-out photos, {a.samples} calibration "
          f"photos each) x 2 views (plain, mirrored) = {total} labelled predictions per method; INT8 models run by "
          f"ONNX Runtime at optimisation level '{levels[0]}'\n")
    print("| method | top-1, plain view, fold 1 / fold 2 | top-1, all | vs calib entropy, pt (95% CI) | "
          "agreement with FP32 | KL(FP32‖INT8) | NLL of the label |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vs = "" if r["method"] in ("calib entropy", "fp32") else \
            f"{r['diff_pt']:+.1f} ({r['ci'][0]:+.1f}, {r['ci'][1]:+.1f})"
        ag = "" if r["method"] == "fp32" else f"{r['agreement']}"
        kl = "" if r["method"] == "fp32" else f"{r['kl']:.5f}"
        name = "FP32" if r["method"] == "fp32" else r["method"]
        print(f"| {name} | {r['fold_top1'][0]} / {r['fold_top1'][1]} | {r['top1']} ({r['top1'] / total * 100:.1f}%) "
              f"| {vs} | {ag} | {kl} | {r['nll']:.4f} |")
    if len(levels) > 1:
        print(f"\nThe same INT8 models at each ONNX Runtime optimisation level: top-1 / agreement with FP32 "
              f"(of {total}), KL(FP32‖INT8)\n")
        print("| method | " + " | ".join(f"level '{lvl}'" for lvl in levels) + " | top-1 range |")
        print("|---|" + "---:|" * (len(levels) + 1))
        for i, r in enumerate(rows):
            if r["method"] == "fp32":
                continue
            cells = [by_level[lvl][0][i] for lvl in levels]
            t = [c["top1"] for c in cells]
            print(f"| {r['method']} | " + " | ".join(f"{c['top1']} / {c['agreement']}, {c['kl']:.5f}" for c in cells)
                  + f" | {min(t)}-{max(t)} |")
    if a.json:
        Path(a.json).write_text(json.dumps([r for lvl in levels for r in by_level[lvl][0]], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
