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
import glob
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("CALIB_SHARED", "/work/shared"))


def _resize_crop(path, method, size=256, crop=224):
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), method)
    w, h = im.size
    left, top = (w - crop) // 2, (h - crop) // 2
    return np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.float32)


def effnet_batch(paths):
    from PIL import Image

    return np.stack([((_resize_crop(p, Image.BICUBIC) - 127.0) / 128.0).transpose(2, 0, 1)
                     for p in paths]).astype(np.float32)


def squeezenet_batch(paths):
    from PIL import Image

    mean = np.array([104, 117, 123], np.float32)
    return np.stack([(_resize_crop(p, Image.BILINEAR)[..., ::-1] - mean).transpose(2, 0, 1)
                     for p in paths]).astype(np.float32)


MODELS = {
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "input", effnet_batch, False),
    "squeezenet1_1": ("squeezenet1_1_fp32.onnx", "data_0", squeezenet_batch, True),
}


def max_amax(model, feeds, threads):
    from calib.backends.onnxruntime import OrtEngine

    tensors = [t.name for t in model.inputs] + model.activation_tensors()
    eng = OrtEngine(model, capture=tensors, threads=threads)
    amax = {}
    for f in feeds:
        for k, v in eng.run(f).items():
            if v.dtype.kind == "f" and v.size:
                amax[k] = max(amax.get(k, 0.0), float(np.abs(v).max()))
    return amax


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

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


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

    from calib.model import Model
    from calib.qdq import quantize_model

    images = sorted(glob.glob(str(SHARED / "data" / "imagenet-sample" / "*.JPEG")))
    if len(images) < 32:
        print(f"error: need ImageNet sample photos under {SHARED / 'data' / 'imagenet-sample'}", file=sys.stderr)
        return 2
    calib_paths = images[::7][:args.calib_images]
    bench_paths = images[1::7]
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            fname, inp, prep, fixed1 = MODELS[key]
            src = SHARED / "models" / fname
            model = Model.load(src)
            feeds = [{inp: prep([p])} for p in calib_paths]
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
                x = prep(bench_paths[:b])
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
