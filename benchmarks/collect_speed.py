"""collect_statistics speed: a bare FP32 pass against statistics collection over every float tensor.

For 64 and 250 ImageNet samples (EfficientNet-Lite0 by default) it prints, per configuration,
the median wall time and CPU time over interleaved rounds, the ratio of the medians to the bare
pass, and the peak RSS (VmHWM) of the process that ran it:

* ``bare``: ``OrtEngine(model)`` (all ONNX Runtime optimisations) over the samples, runs of 4;
* ``collect derive=off``: every float tensor captured from ONNX Runtime and histogrammed
  (the path before derivation; integer tensors are captured too and dropped after one run);
* ``collect derive=on``: value-preserving outputs (Pad with zeros, Reshape, ...) derived from
  their inputs' observers instead, and Relu / ReLU6 outputs from their inputs' three-way split
  histograms (``calib.stats.ClipSplitObserver``); integer tensors not captured (identical results);
* ``... numba=off``: the same with ``CALIB_NUMBA=0`` (NumPy binning; only differs from the
  line above when numba is installed, which it is not by default);
* ``max ...``: ``histogram=False`` (ranges only, what max calibration collects); ``derive=on``
  also derives Relu / Clip outputs' ranges from their inputs' (``plan_ranges``);
* ``... optimize=basic``: the capture session at ONNX Runtime's ``basic`` level, as collection
  ran before 2026-11 (slower, and statistics not bit-identical to ``all``'s: see
  ``capture_levels.py``); the other rows capture at ``all``, the default.

Before each timed run the script waits (up to 2 minutes) until the machine's CPUs are idle:
another process's load moved the timings by 2-4x; runs that found no quiet are marked ``*``.

Every timed configuration runs in its own subprocess (fresh peak RSS); times include building the
ONNX Runtime session. Samples are decoded once, before any clock starts, into a temporary .npy
that each worker loads, so its ~600 KB per sample is part of every peak RSS.

    python benchmarks/collect_speed.py                    # 64 and 250 samples, 3 rounds
    python benchmarks/collect_speed.py --rounds 5 --sizes 64
    python benchmarks/collect_speed.py --sweep            # also threads x workers x spinning
    python benchmarks/collect_speed.py --configs bare,"max derive=on"   # a subset, by name
    python benchmarks/collect_speed.py --baseline-src /tmp/old   # also the code in another tree
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, SHARED, peak_rss_mib
from _quiet import wait_quiet

MODEL = SHARED / "models" / "efficientnet_lite0.onnx"
IMAGES = SHARED / "data" / "imagenet-sample"


def worker(cfg: dict) -> dict:
    import numpy as np

    from calib.backends.onnxruntime import OrtEngine
    from calib.collect import collect_statistics
    from calib.model import Model

    x = np.load(cfg["data"])[: cfg["n"]]
    model = Model.load(cfg["model"])
    threads = cfg.get("threads")
    c0, t0 = os.times(), time.perf_counter()
    if cfg["kind"] == "bare":
        eng = OrtEngine(model, threads=threads)
        for i in range(0, len(x), 4):
            eng.run({"input": x[i:i + 4]})
        tensors = 0
    else:
        feeds = [{"input": x[i:i + 16]} for i in range(0, len(x), 16)]
        kw = {k: cfg[k] for k in ("derive", "spinning", "histogram", "optimize") if cfg.get(k) is not None}
        obs = collect_statistics(model, feeds, progress=False, threads=threads, workers=cfg.get("workers"), **kw)
        tensors = len(obs)
    wall = time.perf_counter() - t0
    c1 = os.times()
    return {"wall": wall, "cpu": (c1.user + c1.system) - (c0.user + c0.system), "rss_mb": peak_rss_mib(),
            "tensors": tensors}


def _run(cfg: dict) -> dict:
    src = cfg.get("src") or str(ROOT)
    busy = wait_quiet()
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                         text=True, cwd=src, env={**os.environ, "PYTHONPATH": src, **cfg.get("env", {})})
    if out.returncode:
        raise SystemExit(f"worker failed for {cfg}:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["noisy"] = busy > 0.15
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--sizes", default="64,250", help="comma-separated sample counts (default 64,250)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default all cores)")
    ap.add_argument("--sweep", action="store_true", help="also time threads x workers x spinning (derive on)")
    ap.add_argument("--baseline-src", help="also time collect_statistics from another source tree, e.g. "
                    "`git archive HEAD~1 | tar -x -C /tmp/old` then --baseline-src /tmp/old")
    ap.add_argument("--configs", help="comma-separated configuration names to run (default: all)")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import numpy as np

    from calib.datasets import open_dataset
    from calib.model import Model

    sizes = [int(s) for s in args.sizes.split(",")]
    model = Model.load(args.model)
    ds = open_dataset(IMAGES, model, "efficientnet-lite", limit=max(sizes), seed=0)
    x = np.concatenate([b.feed["input"] for b in ds.batches(batch_size=50, progress=False)])
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "x.npy")
        np.save(data, x)
        base = {"data": data, "model": args.model, "threads": args.threads}
        off = {"CALIB_NUMBA": "0"}
        configs = [("bare", {"kind": "bare"}),
                   ("collect derive=off", {"kind": "collect", "derive": False}),
                   ("collect derive=on", {"kind": "collect", "derive": True}),
                   ("collect derive=on numba=off", {"kind": "collect", "derive": True, "env": off}),
                   ("collect derive=on optimize=basic", {"kind": "collect", "derive": True, "optimize": "basic"}),
                   ("max derive=off", {"kind": "collect", "derive": False, "histogram": False}),
                   ("max derive=on", {"kind": "collect", "derive": True, "histogram": False}),
                   ("max derive=on optimize=basic", {"kind": "collect", "derive": True, "histogram": False,
                                                     "optimize": "basic"})]
        if args.baseline_src:
            src = str(Path(args.baseline_src).resolve())
            configs.append(("collect, baseline source", {"kind": "collect", "src": src, "env": off}))
            configs.append(("max, baseline source", {"kind": "collect", "src": src, "histogram": False}))
        if args.sweep:
            for th, wk, sp in [(2, 2, True), (2, 2, False), (1, 1, False), (2, 1, False), (1, 2, False),
                               (2, 0, True), (1, 0, True)]:
                configs.append((f"on threads={th} workers={wk} spin={int(sp)}",
                                {"kind": "collect", "derive": True, "threads": th, "workers": wk, "spinning": sp}))
        if args.configs:
            keep = [c.strip() for c in args.configs.split(",")]
            configs = [c for c in configs if c[0] in keep or c[0] == "bare"]
        results: dict = {}
        for n in sizes:
            for _ in range(args.rounds):                     # interleaved: drift hits every config alike
                for name, cfg in configs:
                    results.setdefault((n, name), []).append(_run({**base, **cfg, "n": n}))
                    print(".", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
    cpus = os.cpu_count()
    print(f"model {Path(args.model).name}, {cpus} cores, threads={args.threads or 'default'}, "
          f"{args.rounds} interleaved rounds, medians (times include session build)")
    print(f"{'samples':>7}  {'configuration':<34} {'wall s':>7} {'x bare':>7} {'cpu s':>7} {'x bare':>7} "
          f"{'ms/img':>7} {'peak RSS MB':>11}  wall per round")
    for n in sizes:
        bw = statistics.median(r["wall"] for r in results[(n, "bare")])
        bc = statistics.median(r["cpu"] for r in results[(n, "bare")])
        for name, _ in configs:
            rs = results[(n, name)]
            w = statistics.median(r["wall"] for r in rs)
            c = statistics.median(r["cpu"] for r in rs)
            rss = max(r["rss_mb"] for r in rs)
            walls = " ".join(f"{r['wall']:.2f}{'*' if r.get('noisy') else ''}" for r in rs)
            print(f"{n:>7}  {name:<34} {w:7.2f} {w / bw:7.2f} {c:7.2f} {c / bc:7.2f} {1000 * w / n:7.1f} "
                  f"{rss:11.0f}  {walls}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
