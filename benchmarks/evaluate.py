"""Benchmark: evaluating two candidates against the reference in ONE pass vs three plain passes.

The harness decodes every batch once and feeds it to the reference and both candidates,
then computes metrics and bootstrap intervals. The baseline is what one would do without
it: three separate inference passes (reference, candidate 1, candidate 2), each decoding
the data again, with no metrics at all. The claim checked: harness time < 1.2 x baseline.

    python benchmarks/evaluate.py [--images 200] [--batch-size 16] [--repeat 1] [--json]

Model: EfficientNet-Lite0 (FP32) from ../shared beside the repository ($CALIB_SHARED); candidates: Q/DQ INT8 for the TensorRT
placement and for the ONNX Runtime placement (same percentile-99.99 amax from 32 calibration
images, not timed). Engines are built before timing; decoding runs in the reader's worker
threads in both cases.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("CALIB_SHARED", Path(__file__).resolve().parents[1].parent / "shared")).resolve()


def plain_pass(engine, ds, batch_size: int) -> float:
    t0 = time.perf_counter()
    for b in ds.batches(batch_size=batch_size):
        engine.run(b.feed)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1, help="repeat each measurement, keep the fastest")
    ap.add_argument("--attribute", action="store_true", help="also time the one pass with per-layer SQNR")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from calib import qdq
    from calib.algorithms import compute_amax_all
    from calib.backends.onnxruntime import OrtEngine, default_threads
    from calib.collect import collect_statistics
    from calib.datasets import open_dataset
    from calib.harness import compare
    from calib.model import Model

    m = Model.load(SHARED / "models" / "efficientnet_lite0.onnx")
    full = open_dataset(SHARED / "data" / "imagenet-sample", m, "efficientnet-lite",
                        classes=SHARED / "data" / "imagenet1k_classes.tsv")
    calib_ds = full.split("calib").subset(limit=32, seed=0)
    ds = full.split("eval").subset(limit=args.images, seed=0)
    amax_by_target = {}
    for target in ("tensorrt", "onnxruntime"):
        tensors = qdq.required_tensors(m, target=target)
        obs = collect_statistics(m, calib_ds.batches(batch_size=16), tensors, progress=False)
        amax_by_target[target] = compute_amax_all(obs, "percentile", percentile=99.99)
    ref = OrtEngine(m, name="fp32")
    c1 = OrtEngine(qdq.quantize_model(m, amax_by_target["tensorrt"], target="tensorrt"), name="int8-trt-qdq")
    c2 = OrtEngine(qdq.quantize_model(m, amax_by_target["onnxruntime"], target="onnxruntime"),
                   name="int8-ort-qdq")
    n = len(ds)

    def best(fn):
        times = []
        for _ in range(max(1, args.repeat)):
            times.append(fn())
        return min(times)

    rows = []
    separate = {}
    for e in (ref, c1, c2):
        separate[e.info.name] = best(lambda e=e: plain_pass(e, ds, args.batch_size))
        rows.append((f"plain pass: {e.info.name}", separate[e.info.name]))
    baseline = sum(separate.values())
    rows.append(("three plain passes (baseline)", baseline))

    report = None

    def harness():
        nonlocal report
        t0 = time.perf_counter()
        report = compare(ref, [c1, c2], ds, batch_size=args.batch_size)
        return time.perf_counter() - t0

    one = best(harness)
    rows.append(("calib.harness.compare: one pass, 2 candidates, metrics + bootstrap", one))
    if args.attribute:
        def with_layers():
            t0 = time.perf_counter()
            compare(ref, [c1, c2], ds, batch_size=args.batch_size, attribute=True)
            return time.perf_counter() - t0
        rows.append(("same with --attribute (per-layer SQNR, captures all tensors)", best(with_layers)))

    ratio = one / baseline
    result = {"images": n, "batch_size": args.batch_size, "threads": default_threads(), "cpus": os.cpu_count(),
              "rows": [{"what": w, "seconds": s, "images_per_s": n / s} for w, s in rows],
              "ratio_harness_to_baseline": ratio, "claim": "ratio < 1.2", "ok": ratio < 1.2,
              "harness_timing": report.timing, "summary": report.summary_lines()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"EfficientNet-Lite0, {n} images, batch {args.batch_size}, {default_threads()} ORT threads, "
              f"{os.cpu_count()} CPUs, best of {args.repeat}")
        print()
        print("| what | seconds | images/s |")
        print("| --- | ---: | ---: |")
        for w, s in rows:
            print(f"| {w} | {s:.2f} | {n / s:.1f} |")
        print()
        print(f"harness / baseline = {ratio:.2f} (claim: < 1.2) -> {'OK' if ratio < 1.2 else 'NOT MET'}")
        t = report.timing
        print(f"inside the one pass: waiting for data {t['decode_s']:.2f} s, engines "
              + ", ".join(f"{k} {v:.2f} s" for k, v in t["engines_s"].items())
              + f", metrics {t['metrics_s']:.2f} s, bootstrap {t['statistics_s']:.2f} s")
        for line in report.summary_lines():
            print(line)
    return 0 if ratio < 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
