"""Captured intermediate tensors at ONNX Runtime's optimisation levels: values, time, cache.

Part 1, per model (EfficientNet-Lite0, SqueezeNet 1.1, PP-OCRv4 det and rec): every tensor that
``collect_statistics`` captures, at ``basic``, ``extended`` and ``all``. Prints how many tensors
differ bitwise from ``basic`` (statistics were computed at ``basic`` before 2026-11, at ``all``
since), the largest
difference relative to the tensor's max |x|, how many observers differ, and the time per
sample of the bare model at ``all`` and at ``basic`` and of the capture session at each level.

Part 2 (EfficientNet-Lite0, the calibration benchmark's 240 samples): what collecting at
``all`` (now the default) instead of ``basic`` changes in the calibration cache: how many of the scales
(float32 ``amax / 127``, the cache's hex) differ, and by how much, per algorithm.

Part 3 (EfficientNet-Lite0, the same samples): the floor of max calibration if ONNX Runtime did
all of it itself: a ReduceMin and a ReduceMax on every tensor range-only collection captures,
only scalars coming out, against a bare pass, at ``all`` and at ``basic``.

    python benchmarks/capture_levels.py                  # all three parts
    python benchmarks/capture_levels.py --part 1 --models efficientnet_lite0
"""
from __future__ import annotations

import argparse
import time
import warnings
from types import SimpleNamespace

import numpy as np

from _common import SHARED
from _quiet import wait_quiet

MODELS = {
    "efficientnet_lite0": ("efficientnet-lite", "imagenet-sample", 16, 4),
    "squeezenet1_1_fp32": ("caffe", "imagenet-sample", 16, 1),
    "ppocrv4_det": ("paddleocr-det", "imagenet-sample", 4, 1),
    "ppocrv4_rec": ("paddleocr-rec", "ocr-lines", 16, 1),
}


def _time(eng, feeds, reps=3) -> float:
    best = float("inf")
    for _ in range(reps):
        wait_quiet(30)
        t0 = time.perf_counter()
        for f in feeds:
            eng.run(f)
        best = min(best, time.perf_counter() - t0)
    return best


def part1(names, threads):
    from calib.backends.onnxruntime import OrtEngine
    from calib.collect import captured_tensors
    from calib.datasets import open_dataset
    from calib.model import Model
    from calib.stats import TensorObserver

    print("| model | captured | bare all ms/sample | bare basic | capture basic | capture extended | capture all "
          "| extended: tensors differing | all: tensors differing | all: max rel. diff | all: observers differing |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        pre, data, n, bs = MODELS[name]
        m = Model.load(SHARED / "models" / f"{name}.onnx")
        ds = open_dataset(SHARED / "data" / data, m, pre, limit=n, seed=0)
        feeds = [b.feed for b in ds.batches(batch_size=bs, progress=False)]
        cap = captured_tensors(m)
        outs, times = {}, {}
        for lvl in ("basic", "extended", "all"):
            eng = OrtEngine(m, capture=cap, optimize=lvl, threads=threads)
            outs[lvl] = [eng.run(f) for f in feeds]
            times[f"capture {lvl}"] = _time(eng, feeds)
            del eng
        for lvl in ("all", "basic"):
            eng = OrtEngine(m, optimize=lvl, threads=threads)
            eng.run(feeds[0])
            times[f"bare {lvl}"] = _time(eng, feeds)
        diff = {}
        for lvl in ("extended", "all"):
            nt = nd = nobs = 0
            worst = 0.0
            for t in cap:
                if outs["basic"][0][t].dtype != np.float32:
                    continue
                nt += 1
                o1, o2 = TensorObserver(t), TensorObserver(t)
                differs = False
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for r1, r2 in zip(outs["basic"], outs[lvl]):
                        a, b = r1[t], r2[t]
                        if not np.array_equal(a.view(np.uint32), b.view(np.uint32)):
                            differs = True
                            scale = float(np.nanmax(np.abs(a))) or 1.0
                            worst = max(worst, float(np.nanmax(np.abs(a.astype(np.float64) - b))) / scale)
                        o1.update(a)
                        o2.update(b)
                nd += differs
                nobs += not o1.same_as(o2)
            diff[lvl] = (nd, nt, worst, nobs)
        b = times["bare all"]
        ms = " | ".join(f"{times[k] * 1000 / n:.2f} ({times[k] / b:.2f}x)"
                        for k in ("bare basic", "capture basic", "capture extended", "capture all"))
        e, a = diff["extended"], diff["all"]
        print(f"| {name} | {len(cap)} | {b * 1000 / n:.2f} | {ms} | {e[0]}/{e[1]} | {a[0]}/{a[1]} | {a[2]:.1e} | "
              f"{a[3]}/{a[1]} |", flush=True)


def part2(threads, samples):
    from calib.algorithms import compute_amax
    from calib.collect import collect_statistics
    from calibration import _open  # this folder is on sys.path

    model, cal = _open("efficientnet_lite0", "calib", samples)
    feeds = [b.feed for b in cal.batches(batch_size=16, progress=False)]
    obs = {lvl: collect_statistics(model, feeds, threads=threads, progress=False, optimize=lvl)
           for lvl in ("basic", "all")}
    print(f"\nCache scales (float32 amax/127) collected at 'all' against 'basic', EfficientNet-Lite0, "
          f"{len(cal)} samples, {len(obs['basic'])} tensors")
    print("| algorithm | scales differing | median rel. change (differing) | max rel. change |")
    print("|---|---:|---:|---:|")
    for alg, kw in (("max", {}), ("entropy", {}), ("percentile", {"percentile": 99.99}), ("mse", {})):
        rel = []
        for k in obs["basic"]:
            s0 = np.float32(compute_amax(obs["basic"][k], alg, **kw) / 127)
            s1 = np.float32(compute_amax(obs["all"][k], alg, **kw) / 127)
            if s0.tobytes() != s1.tobytes():
                rel.append(abs(float(s1) - float(s0)) / max(float(s0), 1e-30))
        med = f"{np.median(rel):.1e}" if rel else "-"
        mx = f"{max(rel):.1e}" if rel else "-"
        print(f"| {alg} | {len(rel)}/{len(obs['basic'])} | {med} | {mx} |", flush=True)


def part3(threads, samples):
    import onnx
    import onnxruntime as ort

    from calib.backends.onnxruntime import OrtEngine, session_options
    from calib.collect import captured_tensors
    from calibration import _open  # this folder is on sys.path

    model, cal = _open("efficientnet_lite0", "calib", samples)
    feeds = [b.feed for b in cal.batches(batch_size=16, progress=False)]
    cap = captured_tensors(model, histogram=False)    # Relu/Clip outputs follow from their inputs' ranges
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for i, t in enumerate(cap):
        for op in ("ReduceMin", "ReduceMax"):     # no axes: the whole tensor, keepdims=0: a scalar
            proto.graph.node.append(onnx.helper.make_node(op, [t], [f"__{op}_{i}"], keepdims=0))
            proto.graph.output.append(onnx.ValueInfoProto(name=f"__{op}_{i}"))
    times = {}
    bare = OrtEngine(model, optimize="all", threads=threads)
    bare.run(feeds[0])
    times["bare"] = _time(bare, feeds)
    for lvl in ("all", "basic"):
        sess = ort.InferenceSession(proto.SerializeToString(), sess_options=session_options(threads, lvl),
                                    providers=["CPUExecutionProvider"])
        eng = SimpleNamespace(run=lambda f, s=sess: s.run(None, f))     # what _time calls
        eng.run(feeds[0])
        times[lvl] = _time(eng, feeds)
    print(f"\nMax calibration done inside ONNX Runtime (EfficientNet-Lite0, {len(cal)} samples, "
          f"{len(cap)} tensors reduced to their min and max), time over a bare pass at 'all'")
    print("| level | s | / bare pass |")
    print("|---|---:|---:|")
    print(f"| bare pass, all | {times['bare']:.2f} | 1.00 |")
    for lvl in ("all", "basic"):
        print(f"| in-graph ReduceMin/ReduceMax, {lvl} | {times[lvl]:.2f} | {times[lvl] / times['bare']:.2f} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--part", choices=["1", "2", "3", "all"], default="all")
    a = ap.parse_args()
    if a.part in ("1", "all"):
        part1([m for m in a.models.split(",") if m], a.threads)
    if a.part in ("2", "all"):
        part2(a.threads, a.samples)
    if a.part in ("3", "all"):
        part3(a.threads, a.samples)


if __name__ == "__main__":
    main()
