"""`calibrate` / `calib calibrate`: INT8 scales -> TensorRT cache, sidecar, Q/DQ model, summary."""
from __future__ import annotations

import json
import sys

from ..pipeline import ALGORITHMS, BIAS_PROBE_SAMPLES
from ..smooth import DEFAULT_ALPHA


def register(sub) -> None:
    from ..datasets import add_data_arguments

    p = sub.add_parser(
        "calibrate", help="compute INT8 scales; write a TensorRT cache and a Q/DQ model",
        description="Calibrate an ONNX model on representative data without a GPU. Writes "
                    "<stem>.cache (TensorRT's calibration cache format), <stem>.cache.json (provenance), "
                    "<stem>.int8.onnx (explicit Q/DQ model) and summary.json, then compares INT8 with "
                    "FP32 on a held-out split of the data.")
    p.add_argument("--model", required=True, help="FP32 ONNX model")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="entropy",
                   help="how activation ranges are chosen (default: entropy, as TensorRT's EntropyCalibration2); "
                        "auto scores every algorithm's INT8 model against FP32 on calibration samples and keeps the best")
    p.add_argument("--percentile", type=float, default=99.99,
                   help="with --algorithm percentile: the percentile of |x| kept (default 99.99)")
    p.add_argument("--samples", type=int, default=500,
                   help="calibration samples drawn from the calibration split (default 500, or all if fewer)")
    p.add_argument("--target", choices=("tensorrt", "onnxruntime"), default="tensorrt",
                   help="Q/DQ placement: as TensorRT fuses it (default), or for ONNX Runtime's integer CPU kernels")
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="precision plan: nodes it marks fp32/fp16 stay out of INT8 in the Q/DQ model")
    sm = p.add_mutually_exclusive_group()
    sm.add_argument("--smooth", type=float, default=DEFAULT_ALPHA, metavar="ALPHA",
                    help=f"channel smoothing of the Q/DQ model (SmoothQuant's alpha in [0, 1], default {DEFAULT_ALPHA:g}): "
                         "evens out the channels of tensors an affine op (Mul/Add, BatchNorm) produces, exactly")
    sm.add_argument("--no-smooth", dest="smooth", action="store_const", const=None,
                    help="no channel smoothing: the Q/DQ model keeps the model's own constants")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="keep the model's biases in the Q/DQ model (default: each INT8 Conv/Gemm's mean INT8 error "
                        f"per channel, measured layer by layer on up to {BIAS_PROBE_SAMPLES} calibration samples, is subtracted from "
                        "its bias; the cache is the same either way)")
    p.add_argument("--trt-version", type=int, default=None,
                   help="version field of the cache header, e.g. 100900 for TensorRT 10.9")
    p.add_argument("--out", default=None, help="output folder (default: next to the model)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out INT8 vs FP32 comparison")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_data_arguments(p, required=True)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..pipeline import calibrate
    from ..datasets import dataset_from_args
    from ..errors import CalibError
    from ..model import Model

    if args.samples is not None and args.samples < 1:
        raise CalibError("--samples must be at least 1")
    if args.smooth is not None and not 0.0 <= args.smooth <= 1.0:
        raise CalibError(f"--smooth must be within [0, 1], got {args.smooth:g}")
    model = Model.load(args.model)
    ds = dataset_from_args(args, model)
    res = calibrate(model, None, dataset=ds, algorithm=args.algorithm, percentile=args.percentile,
                    samples=args.samples, batch_size=args.batch_size, seed=args.seed, out=args.out,
                    force=args.force, target=args.target, trt_version=args.trt_version,
                    evaluate=not args.no_eval, threads=args.threads, progress=not args.json,
                    plan=args.plan, smooth=args.smooth, bias_correction=args.bias_correction)
    if args.json:
        json.dump(res.summary, sys.stdout, indent=2, sort_keys=True, default=str)
        print()
    else:
        for line in res.summary_lines():
            print(line)
    return 0
