"""INT8 / FP32 latency in ONNX Runtime (CPU) for calib's two Q/DQ placements and for ONNX
Runtime's own ``quantize_static`` (QDQ, per channel), on EfficientNet-Lite0 and SqueezeNet 1.1.

    python benchmarks/latency.py [--repeats 30] [--threads N] [--calib-images 16]

Every model is run with the same session options (all graph optimisations, N intra-op
threads); the median of ``--repeats`` timed runs after ``--warmup`` runs is reported, and the
FP32 / INT8 runs are interleaved in rounds so load from other processes hits them alike.
SqueezeNet has a fixed batch of 1: "batch 16" there is 16 sequential batch-1 calls; its opset 7
file is converted to opset 13 for quantize_static (which otherwise writes an invalid model).
amax for calib comes from max calibration over ``--calib-images`` ImageNet sample photos;
quantize_static gets the same photos through a CalibrationDataReader (MinMax, QDQ, S8S8
defaults, per channel).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import SHARED

# model key -> (file, preset, fixed batch of 1)
MODELS = {
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "efficientnet-lite", False),
    "squeezenet1_1": ("squeezenet1_1_fp32.onnx", "caffe", True),
}


def feeds_of(dataset, batch_size):
    """Host batches from a calib dataset, decoded once."""
    return [dict(b.feed) for b in dataset.batches(batch_size=batch_size)]


def max_amax(model, feeds, threads):
    from calib.algorithms import compute_amax
    from calib.collect import collect_statistics

    obs = collect_statistics(model, feeds, threads=threads, progress=False)
    return {k: compute_amax(o, "max") for k, o in obs.items()}


def ort_quantize_static(src: Path, dst: Path, input_name: str, feeds):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def session(data, threads):
    import onnxruntime as ort

    from calib.backends.onnxruntime import session_options

    return ort.InferenceSession(data, session_options(threads, "all"), providers=["CPUExecutionProvider"])


def make_call(sess, input_name, x, fixed_batch1):
    if fixed_batch1:
        parts = [x[i:i + 1] for i in range(len(x))]
        return lambda: [sess.run(None, {input_name: p}) for p in parts]
    return lambda: sess.run(None, {input_name: x})


def measure(calls: dict, warmup: int, repeats: int) -> dict:
    """Median seconds per call; the variants are interleaved round by round."""
    for f in calls.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for k, f in calls.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--calib-images", type=int, default=16)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args(argv)

    from calib.datasets import open_dataset
    from calib.model import Model
    from calib.qdq import quantize_model

    if not (SHARED / "models").is_dir():
        print(f"error: the shared models and images are not at {SHARED} (set CALIB_SHARED)", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            fname, preset, fixed1 = MODELS[key]
            src = SHARED / "models" / fname
            model = Model.load(src)
            inp = model.inputs[0].name
            ds = open_dataset(SHARED / "data" / "imagenet-sample", model, preset)
            feeds = feeds_of(ds.split("calib").subset(limit=args.calib_images, seed=0), 1)
            bench = ds.split("eval").subset(limit=max(batches), seed=0)
            x_all = np.concatenate([f[inp] for f in feeds_of(bench, max(batches))])
            amax = max_amax(model, feeds, args.threads)
            variants = {"fp32": model.serialize()}
            for target in ("tensorrt", "onnxruntime"):
                variants[f"calib {target}"] = quantize_model(model, amax, target=target).serialize()
            dst = Path(tmp) / f"{key}_ort_qdq.onnx"
            qsrc = src
            if model.opset < 13:  # quantize_static writes per-channel DQ (axis) even below opset 13
                import onnx
                from onnx import version_converter

                qsrc = Path(tmp) / f"{key}_opset13.onnx"
                onnx.save(version_converter.convert_version(model.proto, 13), str(qsrc))
            ort_quantize_static(qsrc, dst, inp, feeds)
            variants["ORT quantize_static"] = dst.read_bytes()
            sessions = {k: session(v, args.threads) for k, v in variants.items()}
            for b in batches:
                x = x_all[:b]
                calls = {k: make_call(s, inp, x, fixed1 and b > 1) for k, s in sessions.items()}
                med = measure(calls, args.warmup, args.repeats)
                for k in variants:
                    if k == "fp32":
                        continue
                    note = " (16 x batch 1)" if fixed1 and b > 1 else ""
                    rows.append((key, f"{b}{note}", k, med["fp32"] * 1e3, med[k] * 1e3, med[k] / med["fp32"]))
    import onnxruntime as ort

    print(f"ONNX Runtime {ort.__version__} CPU, {args.threads} threads, median of {args.repeats} runs "
          f"after {args.warmup} warm-up, variants interleaved")
    hdr = ("model", "batch", "INT8 model", "FP32 ms", "INT8 ms", "INT8/FP32")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" for _ in hdr) + "|")
    for m, b, k, f, q, r in rows:
        print(f"| {m} | {b} | {k} | {f:.2f} | {q:.2f} | {r:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
