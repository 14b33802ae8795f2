"""Calibration benchmark: our GPU-free calibration against ONNX Runtime's quantize_static and
NVIDIA Model Optimizer's ONNX PTQ.

Prints, in one run on the same data and thread count:
  (a) calibration wall time over one bare FP32 pass over the same samples (max, entropy, ...);
  (b) peak RSS of a streaming calibration with 64, 256 and 500 samples (should be flat);
  (c) the peers side by side with ours: time, peak RSS, INT8 top-1, agreement and logit SQNR
      against FP32 on the held-out split, for ONNX Runtime's quantize_static (MinMax, Entropy,
      Percentile; QDQ, per-channel) and Model Optimizer's ``modelopt.onnx.quantization.quantize``
      (int8, entropy and max, CPU execution provider, its own Q/DQ placement; see
      ``modelopt_worker.py``);
  (d) INT8 over FP32 latency at batch 1 and 16 for both Q/DQ placements (see latency.py).

Every configuration runs in its own subprocess, which reports its own peak RSS (VmHWM), once
the machine's CPUs are idle (``_quiet.wait_quiet``, up to 2 minutes).
Samples for (a) and (c) are decoded once into memory by each worker before its clock starts,
so the times compare calibration work, not JPEG decoding. Model Optimizer needs torch and runs
in its own virtual environment (``--modelopt-python``, default ``.venv-modelopt`` at the repo
root; its rows are skipped, with a line saying how to make it, when it is missing): our worker
hands it the same preloaded calibration batches as an ``.npz``, it times its ``quantize`` call
and reports the peak RSS of its own process (calibration only: unlike the other rows' workers
it never holds the held-out split; importing torch and Model Optimizer adds about 0.35 GB to
it), and our worker scores the model it wrote exactly as it scores quantize_static's. Its two
rows add about a minute to a run (its entropy calibration alone takes about 30 s here);
``--quick --skip-ort --latency-repeats 0`` took 4 minutes on this 2-core machine.

    python benchmarks/calibration.py                 # EfficientNet-Lite0, calib/eval split of 500 images
    python benchmarks/calibration.py --quick         # fewer configurations, for a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, SHARED, peak_rss_mib
from _quiet import wait_quiet

MODELS = {
    "efficientnet_lite0": ("efficientnet_lite0.onnx", "efficientnet-lite"),
    "squeezenet1_1": ("squeezenet1_1_fp32.onnx", "caffe"),
}


# ---------------------------------------------------------------------------------------------
# worker side
def _open(model_key: str, split: str | None, limit: int | None = None):
    from calib.datasets import open_dataset
    from calib.model import Model

    fname, preset = MODELS[model_key]
    model = Model.load(SHARED / "models" / fname)
    ds = open_dataset(SHARED / "data" / "imagenet-sample", model, preset,
                      classes=SHARED / "data" / "imagenet1k_classes.tsv")
    if split:
        ds = ds.split(split)
    if limit is not None and limit < len(ds):
        ds = ds.subset(limit=limit, seed=0)
    return model, ds


def _preload(ds, batch_size):
    return [(b.feed, b.labels) for b in ds.batches(batch_size=batch_size)]


def _scores(model_or_path, reference, eval_batches, threads) -> dict:
    """Held-out top-1 against the labels; for an INT8 model also top-1 agreement with FP32 and
    the SQNR (dB) of its logits against FP32's, which move less by chance than top-1 does."""
    import numpy as np

    from calib.backends.onnxruntime import OrtEngine

    eng = OrtEngine(model_or_path, threads=threads)
    ref = OrtEngine(reference, threads=threads) if reference is not None else None
    hits = agree = n = 0
    sig = noise = 0.0
    for feed, labels in eval_batches:
        y = eng.run(feed)[eng.output_names[0]].reshape(len(labels), -1)
        hits += int((y.argmax(1) == labels).sum())
        n += len(labels)
        if ref is not None:
            r = ref.run(feed)[ref.output_names[0]].reshape(len(labels), -1)
            agree += int((y.argmax(1) == r.argmax(1)).sum())
            sig += float((r.astype(np.float64) ** 2).sum())
            noise += float(((y - r).astype(np.float64) ** 2).sum())
    out = {"top1": hits / max(n, 1)}
    if ref is not None:
        out.update(agreement=agree / max(n, 1), sqnr_db=10 * np.log10(sig / noise) if noise else float("inf"))
    return out


def ort_quantize(model, cal_batches, method: str, out: Path) -> Path:
    """ONNX Runtime's ``quantize_static`` as the benchmarks run it: QDQ, int8 symmetric
    activations, per-channel int8 weights, *method* (MinMax, Entropy, Percentile) over the
    preloaded ``(feed, labels)`` batches; writes *out* and returns it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(cal_batches)

        def get_next(self):
            nxt = next(self.it, None)
            return None if nxt is None else dict(nxt[0])

    quantize_static(str(model.path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={"ActivationSymmetric": True})
    return out


# Model Optimizer's environment: torch (CPU build) + nvidia-modelopt + the [onnx] extra less its GPU
# packages (onnxruntime-gpu -> onnxruntime of the same version, no cupy); see modelopt_worker.py
MODELOPT_PYTHON = ROOT / ".venv-modelopt" / "bin" / "python"
MODELOPT_SETUP = ("python3 -m venv .venv-modelopt && .venv-modelopt/bin/pip install 'torch==2.13.0+cpu' "
                  "nvidia-modelopt==0.47.0 'onnx~=1.21.0' 'onnxruntime~=1.24.2' 'onnx-graphsurgeon>=0.6.1' "
                  "'onnxslim>=0.1.76' 'onnxconverter-common~=1.16.0' 'polygraphy>=0.53.4' ml_dtypes lief "
                  "cppimport onnxscript")
MODELOPT_METHODS = ("entropy", "max")


def modelopt_python(path: str | None) -> Path | None:
    """The Python of Model Optimizer's environment, or None (after one line saying how to make it)."""
    # absolute (the worker runs elsewhere) but not resolve()d: a venv's python is a symlink to the
    # base interpreter, and following it would lose the environment
    p = Path(os.path.abspath(os.path.expanduser(path))) if path else MODELOPT_PYTHON
    if p.exists():
        return p
    print(f"Model Optimizer rows skipped: no {p}; make it at the repo root with: {MODELOPT_SETUP}",
          file=sys.stderr, flush=True)
    return None


def modelopt_quantize(model, cal_batches, method: str, out: Path, python, threads: int) -> dict:
    """Model Optimizer's ONNX INT8 PTQ (``modelopt_worker.py``, run by *python*) on the preloaded
    ``(feed, labels)`` batches, calibration *method* ``entropy`` or ``max``; writes *out* and returns
    the worker's report (``seconds`` of its quantize call, ``peak_rss_mib`` of its process, ...)."""
    import numpy as np

    names = list(cal_batches[0][0])
    npz = out.with_suffix(".calib.npz")
    np.savez(npz, **{k: np.concatenate([f[k] for f, _ in cal_batches]) for k in names})
    try:
        proc = subprocess.run([str(python), "-I", str(Path(__file__).resolve().parent / "modelopt_worker.py"),
                               str(model.path), str(npz), str(out), "--method", method,
                               "--threads", str(threads), "--batch-size", str(len(cal_batches[0][1]))],
                              capture_output=True, cwd=out.parent)
    finally:
        npz.unlink(missing_ok=True)
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"modelopt_worker.py exited {proc.returncode}: {last}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


class _Preloaded:
    """Decoded samples, one feed each, as :func:`calib.pipeline.build_qdq` reads a dataset."""

    def __init__(self, feeds):
        self.feeds = feeds

    def __len__(self):
        return len(self.feeds)

    def batches(self, batch_size=1, progress=False):
        return iter(self.feeds)


def worker(job: dict) -> dict:
    from calib.backends.onnxruntime import OrtEngine

    threads, bs, key = job["threads"], job["batch_size"], job["model"]
    kind = job["kind"]
    res: dict = {"job": job["name"]}
    if kind == "stream":  # (b): streaming calibration straight from the reader
        from calib.pipeline import calibrate

        model, ds = _open(key, None, job["samples"])
        t0 = time.perf_counter()
        calibrate(model, None, dataset=ds, algorithm=job["algorithm"], samples=None, batch_size=bs,
                  write=False, evaluate=False, threads=threads, progress=False)
        res["seconds"] = time.perf_counter() - t0
        res["samples"] = len(ds)
        return res

    cal_split, ev_split = ("eval", "calib") if job.get("swap") else ("calib", "eval")
    model, cal = _open(key, cal_split, job.get("samples"))
    _, ev = _open(key, ev_split)
    cal_batches = _preload(cal, bs)
    res["samples"] = len(cal)
    if kind == "fp32":
        eng = OrtEngine(model, threads=threads)
        eng.run(cal_batches[0][0])  # warm-up
        t0 = time.perf_counter()
        for feed, _ in cal_batches:
            eng.run(feed)
        res["seconds"] = time.perf_counter() - t0
        res.update(_scores(model, None, _preload(ev, bs), threads))
        return res
    if kind == "ours":
        from calib.algorithms import compute_amax
        from calib.collect import collect_statistics
        from calib.pipeline import bias_probe_samples, build_qdq
        from calib.qdq import prepare

        # the bias correction's samples, decoded before the clock starts like the others
        probe = _Preloaded([b.feed for b in bias_probe_samples(cal, 0).batches(batch_size=1)]) \
            if job.get("bias_correction", True) else None
        t0 = time.perf_counter()
        obs = collect_statistics(model, (f for f, _ in cal_batches), threads=threads, progress=False,
                                 histogram=job["algorithm"] != "max")
        params = {"percentile": job["percentile"]} if job["algorithm"] == "percentile" else {}
        amax = {k: float(compute_amax(o, job["algorithm"], **params)) for k, o in obs.items()}
        res["stats_seconds"] = time.perf_counter() - t0
        # the Q/DQ model as calibrate writes it (the peers' times include writing theirs)
        qdq = build_qdq(prepare(model), amax, probe_ds=probe, threads=threads)
        res["seconds"] = time.perf_counter() - t0
        res.update(_scores(qdq, model, _preload(ev, bs), threads))
        return res
    if kind == "ort":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            out = ort_quantize(model, cal_batches, job["method"], Path(tmp) / "ort_int8.onnx")
            res["seconds"] = time.perf_counter() - t0
            res.update(_scores(out, model, _preload(ev, bs), threads))
        return res
    if kind == "modelopt":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            rep = modelopt_quantize(model, cal_batches, job["method"], Path(tmp) / "modelopt_int8.onnx",
                                    job["python"], threads)
            # its time and peak RSS are those of Model Optimizer's process; the scoring is ours
            res.update(seconds=rep["seconds"], peak_rss_mib=rep["peak_rss_mib"], modelopt=rep["modelopt"],
                       quantized_ops=rep["quantized_ops"])
            res.update(_scores(Path(tmp) / "modelopt_int8.onnx", model, _preload(ev, bs), threads))
        return res
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# driver side
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--samples", type=int, default=240,
                    help="calibration samples for (a) and (c), a multiple of the batch size: ONNX Runtime's "
                         "Entropy/Percentile calibrators stack every batch's outputs and fail on a short last batch")
    ap.add_argument("--quick", action="store_true", help="skip ORT Entropy (the slowest, largest peer) and (b)")
    ap.add_argument("--skip-ort", action="store_true")
    ap.add_argument("--modelopt-python", default=None, metavar="PATH",
                    help=f"Python of Model Optimizer's virtual environment (default: "
                         f"{MODELOPT_PYTHON.relative_to(ROOT)} at the repo root; its rows are skipped when missing)")
    ap.add_argument("--skip-modelopt", action="store_true")
    ap.add_argument("--swap", action="store_true",
                    help="calibrate on the eval split and score the calib split (the second fold)")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--latency-repeats", type=int, default=30, help="(d): timed runs per variant (0 skips it)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        res = worker(json.loads(a.worker))
        res.setdefault("peak_rss_mib", peak_rss_mib())
        print(json.dumps(res))
        return

    base = {"model": a.model, "threads": a.threads, "batch_size": a.batch_size}
    fixed = dict(base, samples=a.samples, swap=a.swap)
    jobs = [dict(fixed, name="fp32 pass", kind="fp32")]
    for alg in ("max", "entropy", "percentile", "mse"):
        jobs.append(dict(fixed, name=f"calib {alg}", kind="ours", algorithm=alg, percentile=99.99))
    jobs.append(dict(fixed, name="calib entropy, no bias correction", kind="ours", algorithm="entropy",
                     bias_correction=False))
    if not a.skip_ort:
        for m in (["MinMax", "Percentile"] if a.quick else ["MinMax", "Entropy", "Percentile"]):
            jobs.append(dict(fixed, name=f"ORT quantize_static {m}", kind="ort", method=m))
    mo_python = None if a.skip_modelopt else modelopt_python(a.modelopt_python)
    if mo_python is not None:
        for m in MODELOPT_METHODS:
            jobs.append(dict(fixed, name=f"Model Optimizer {m}", kind="modelopt", method=m, python=str(mo_python)))
    results = []
    for job in jobs:
        print(f"running {job['name']} ...", file=sys.stderr, flush=True)
        results.append(run_job_rss(job))
    stream = []
    if not a.quick:
        for n in (64, 256, 500):
            job = dict(base, name=f"stream entropy {n}", kind="stream", algorithm="entropy", samples=n)
            print(f"running {job['name']} ...", file=sys.stderr, flush=True)
            stream.append(run_job_rss(job))

    fp32 = results[0]
    cal, ev = ("eval", "calib") if a.swap else ("calib", "eval")
    print(f"\nCalibration benchmark: {a.model}, {fp32.get('samples')} calibration samples from the {cal} split; "
          f"top-1, agreement and SQNR on the held-out {ev} split (the fp32 row's top-1 is FP32's); "
          f"{a.threads} threads, batch {a.batch_size}")
    print("\nOur time is the statistics pass and ranges, then the Q/DQ model with its bias correction (in "
          "brackets: statistics and ranges alone, the part that makes the cache); the peers' times include "
          "writing their Q/DQ models.")
    print("\n| method | time (s) | time / FP32 pass | peak RSS (MiB) | INT8 top-1 | agreement with FP32 | "
          "logit SQNR (dB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['job']} | failed: {r['error']} | | | | | |")
            continue
        ratio = r["seconds"] / fp32["seconds"] if fp32.get("seconds") else float("nan")
        t1 = f"{r['top1'] * 100:.1f}" if "top1" in r else ""
        ag = f"{r['agreement'] * 100:.1f}" if "agreement" in r else ""
        sq = f"{r['sqnr_db']:.1f}" if "sqnr_db" in r else ""
        tm, rt = f"{r['seconds']:.2f}", f"{ratio:.2f}"
        if "stats_seconds" in r and fp32.get("seconds"):
            tm += f" ({r['stats_seconds']:.2f})"
            rt += f" ({r['stats_seconds'] / fp32['seconds']:.2f})"
        print(f"| {r['job']} | {tm} | {rt} | {r['peak_rss_mib']:.0f} | {t1} | {ag} | {sq} |")
    if stream:
        print("\n| streaming entropy calibration | samples | time (s) | peak RSS (MiB) |")
        print("|---|---:|---:|---:|")
        for r in stream:
            if "error" in r:
                print(f"| {r['job']} | failed: {r['error']} | | |")
            else:
                print(f"| {r['job']} | {r['samples']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |")
        ok = [r["peak_rss_mib"] for r in stream if "error" not in r]
        if ok:
            print(f"\nRSS spread across sample counts: {(max(ok) / min(ok) - 1) * 100:.1f}% (goal: within 10%)")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "stream": stream}, indent=2))
    if a.latency_repeats > 0:
        # (d) INT8 over FP32 latency for both placements, side by side with quantize_static
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import latency

        print("\n(d) INT8 / FP32 latency in ONNX Runtime on this CPU")
        latency.main(["--repeats", str(a.latency_repeats), "--threads", str(a.threads)])


def run_job_rss(job: dict) -> dict:
    # another process's load moves these timings by 2-4x on a shared 2-core machine: start on quiet
    if wait_quiet() > 0.15:
        print(f"  (machine busy before {job['name']}: its time is unreliable)", file=sys.stderr, flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", CALIB_THREADS=str(job["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)],
                          capture_output=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"job": job["name"], "error": (proc.stderr.decode().strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


if __name__ == "__main__":
    main()
