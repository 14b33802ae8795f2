"""NVIDIA Model Optimizer's ONNX INT8 PTQ on the CPU, as a peer in calib's benchmarks.

Run with the Python of Model Optimizer's own virtual environment (it needs torch, whose wheels
calib's environment should not carry), never with calib's; this script imports nothing of calib:

    python3 -m venv .venv-modelopt && .venv-modelopt/bin/pip install 'torch==2.13.0+cpu' \\
        nvidia-modelopt==0.47.0 'onnx~=1.21.0' 'onnxruntime~=1.24.2' 'onnx-graphsurgeon>=0.6.1' \\
        'onnxslim>=0.1.76' 'onnxconverter-common~=1.16.0' 'polygraphy>=0.53.4' ml_dtypes lief cppimport onnxscript

(``calibration.MODELOPT_SETUP`` holds the same line.) After the package itself come its ``[onnx]``
extra's requirements less ``onnxruntime-gpu`` and ``cupy-cuda12x``: on the CPU the plain
``onnxruntime`` of the same version does the work. torch (>= 2.8) is a hard requirement, imported
by ``modelopt.onnx.quantization``, though nothing of it runs here; ``2.13.0+cpu`` is the CPU
build, which pip finds in this machine's local wheel folder: PyPI's Linux torch is the CUDA build
and brings several GB of CUDA libraries (it works too, just larger).

    .venv-modelopt/bin/python benchmarks/modelopt_worker.py MODEL.onnx CALIB.npz OUT.onnx \\
        --method entropy --threads 2 --batch-size 16

``CALIB.npz`` holds the preprocessed calibration inputs, input name -> array ``[N, ...]``; they
are fed ``--batch-size`` samples a step (``calibration_shapes``). The call is
``modelopt.onnx.quantization.quantize(quantize_mode="int8", calibration_method=METHOD,
calibration_eps=["cpu"], high_precision_dtype=HP)`` with Model Optimizer's defaults otherwise:
its TensorRT-oriented Q/DQ placement (inputs of Conv, Gemm, MatMul, pooling, Add, ...; no output
quantization; on EfficientNet-Lite0 all 49 Conv, 9 Add, the Gemm and the GlobalAveragePool),
per-channel int8 weights (kept FP32 behind a Q/DQ pair), symmetric int8 activations through
ONNX Runtime's calibrators as Model Optimizer patches them: ``entropy`` = Entropy (128 bins,
histograms merged batch by batch), ``max`` = MinMax (amax = max(|min|, |max|)). Its default
``high_precision_dtype`` is ``fp16`` (every non-quantized float tensor cast to FP16, as TensorRT
would run it); ``--high-precision fp32`` (the default here) keeps them FP32 like the other rows of
the benchmarks, so only calibration and Q/DQ placement differ.

Only the ``quantize`` call is timed (the data are in memory before the clock starts; the call
includes Model Optimizer's graph analysis and writing OUT.onnx, as ``quantize_static``'s rows
do). Model Optimizer's calibration sessions get ``--threads`` intra-op threads (it builds its own
``SessionOptions`` without a thread count; the class is wrapped here to set one). Prints one JSON
line on stdout: seconds, samples, peak RSS of this process (``ru_maxrss``) in MiB, version,
settings and the op types whose inputs were quantized; Model Optimizer's own log goes to stderr.
"""
from __future__ import annotations

import sys
from pathlib import Path

# run as a script, this folder leads sys.path: keep calib's benchmark modules (calibration.py,
# evaluate.py, ...) from shadowing packages of this environment
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402


def _limit_ort_threads(threads: int) -> None:
    """Model Optimizer creates its ONNX Runtime sessions from a bare ``ort.SessionOptions()``;
    give every such object *threads* intra-op threads."""
    import onnxruntime as ort

    base = ort.SessionOptions

    class SessionOptions(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.intra_op_num_threads = threads

    ort.SessionOptions = SessionOptions


def _quantized_ops(path: str) -> dict:
    """Op types with at least one input fed by a DequantizeLinear, and how many of each."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    ops = Counter(n.op_type for n in m.graph.node
                  if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dq_out.intersection(n.input))
    return dict(sorted(ops.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="FP32 ONNX model (copied to a scratch folder first: Model Optimizer "
                                  "writes intermediate files beside its input)")
    ap.add_argument("data", help=".npz of preprocessed calibration inputs, input name -> [N, ...]")
    ap.add_argument("out", help="where to write the Q/DQ model")
    ap.add_argument("--method", choices=("entropy", "max"), default="entropy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="samples per calibration step")
    ap.add_argument("--high-precision", choices=("fp32", "fp16"), default="fp32",
                    help="high_precision_dtype: fp32 keeps the non-quantized parts FP32 "
                         "(Model Optimizer's own default is fp16)")
    a = ap.parse_args(argv)

    import numpy as np

    with np.load(a.data) as z:
        data = {k: np.ascontiguousarray(z[k]) for k in z.files}
    n = len(next(iter(data.values())))
    shapes = ",".join(f"{k}:" + "x".join(str(d) for d in (min(a.batch_size, n),) + v.shape[1:])
                      for k, v in data.items())
    out = str(Path(a.out).resolve())
    settings = dict(quantize_mode="int8", calibration_method=a.method, calibration_shapes=shapes,
                    calibration_eps=["cpu"], high_precision_dtype=a.high_precision, log_level="WARNING")

    with contextlib.redirect_stdout(sys.stderr):     # its logger writes to stdout
        import modelopt
        from modelopt.onnx.quantization import quantize

        _limit_ort_threads(a.threads)
        with tempfile.TemporaryDirectory(prefix="modelopt_src.") as tmp:
            src = str(Path(tmp) / Path(a.model).name)
            shutil.copyfile(a.model, src)
            t0 = time.perf_counter()
            quantize(src, calibration_data=data, output_path=out, **settings)
            seconds = time.perf_counter() - t0

    res = {"seconds": seconds, "samples": n,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
           "modelopt": modelopt.__version__, "settings": settings, "quantized_ops": _quantized_ops(out)}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
