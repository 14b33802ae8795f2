"""Sweep benchmark: a 4-algorithm sweep at one sample count against one calibration, in one run.

Prints one table per setting (bias correction on, calibrate's default, and off):

- one calibration: ``calibrate()`` of EfficientNet-Lite0 with entropy at the sample count, no
  held-out check (statistics pass, ranges, Q/DQ model with its bias correction);
- the same for each of max, entropy, percentile 99.99 and mse: what a shell loop over
  ``calibrate`` costs (every run collects its own statistics);
- ``calib.sweep.sweep`` over those 4 algorithms (one process, no CPU timing, roofline prediction):
  its statistics pass (counted once, shared by the 4 points), each point's calibration from those
  statistics, each point's scoring against FP32 on the eval split, and the whole sweep's wall
  time; then the sweep without the scoring over one calibration: the issue's bound is 1.5;
- the same sweep with ``--jobs 2`` (two worker processes of one ONNX Runtime thread each), wall time.

Every timed part runs after a warm-up calibration (numba kernels compiled, files cached) and once
the CPUs are idle (``_quiet.wait_quiet``, up to 2 minutes). Process CPU time (all threads) is
printed beside wall time: on a shared machine it moves less (the sweep's parts are each point's
own wall and CPU seconds, as the store records them; ``--jobs 2`` has wall time only, its work
being in the workers).

    python benchmarks/sweep.py                  # 240 calibration samples, 100 eval samples
    python benchmarks/sweep.py --samples 64     # another sample count
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from _common import SHARED
from _quiet import wait_quiet

ALGORITHMS = ["max", "entropy", "percentile:99.99", "mse"]


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    return time.perf_counter() - t[0], time.process_time() - t[1]


def measure(model: Path, ds, samples: int, eval_samples: int, bias: bool, work: Path) -> list[tuple[str, float, float]]:
    from calib.pipeline import CalibrationConfig, calibrate
    from calib.sweep import sweep

    cfg = CalibrationConfig(samples=samples, evaluate=False, bias_correction=bias)
    rows = []
    wait_quiet()
    t = _clock()
    calibrate(model, dataset=ds, config=cfg, write=False, progress=False)
    one = _since(t)
    rows.append(("one calibration (entropy)", *one))
    loop = [0.0, 0.0]
    for alg in ALGORITHMS:
        name, _, p = alg.partition(":")
        t = _clock()
        calibrate(model, dataset=ds, config=cfg.replace(algorithm=name, **({"percentile": float(p)} if p else {})),
                  write=False, progress=False)
        w, c = _since(t)
        loop[0] += w
        loop[1] += c
    rows.append(("4 calibrations, one per algorithm (a shell loop)", *loop))
    out = work / f"sweep_{'bias' if bias else 'nobias'}"
    wait_quiet()
    t = _clock()
    res = sweep(model, grid={"algorithm": ALGORITHMS, "samples": [samples],
                             "calibration": {"bias_correction": bias}},
                out=out, dataset=ds, timing_runs=0, eval_samples=eval_samples, progress=False, force=True,
                echo=lambda line: None)
    total = _since(t)

    def part(name: str) -> tuple[float, float]:
        return (sum(r["timing_s"][name] for r in res.rows), sum(r["timing_s"][f"{name}_cpu"] for r in res.rows))

    calib_parts, score = part("calibrate"), part("score")
    for r in res.rows:
        rows.append((f"sweep: point {r['config']['algorithm']}: calibration from the statistics",
                     r["timing_s"]["calibrate"], r["timing_s"]["calibrate_cpu"]))
    rows.append(("sweep: scoring, 4 points (eval split, against FP32)", *score))
    rows.append(("sweep: the rest (statistics pass, once; bookkeeping)",
                 total[0] - calib_parts[0] - score[0], total[1] - calib_parts[1] - score[1]))
    rows.append(("sweep: whole run (4 points)", *total))
    bare = (total[0] - score[0], total[1] - score[1])
    rows.append(("sweep without the scoring", *bare))
    rows.append(("(sweep without the scoring) / one calibration", bare[0] / one[0], bare[1] / one[1]))
    rows.append(("(4 calibrations) / one calibration", loop[0] / one[0], loop[1] / one[1]))
    wait_quiet()
    t = _clock()
    sweep(model, grid={"algorithm": ALGORITHMS, "samples": [samples], "calibration": {"bias_correction": bias}},
          out=out, dataset=ds, timing_runs=0, eval_samples=eval_samples, progress=False, force=True, jobs=2,
          echo=lambda line: None)
    rows.append(("sweep --jobs 2: whole run (4 points)", _since(t)[0], None))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--eval-samples", type=int, default=100)
    args = ap.parse_args()

    from calib.datasets import open_dataset
    from calib.model import load_model
    from calib.pipeline import calibrate

    model = SHARED / "models" / "efficientnet_lite0.onnx"
    m = load_model(model)
    ds = open_dataset(SHARED / "data" / "imagenet-sample", m, "efficientnet-lite",
                      classes=SHARED / "data" / "imagenet1k_classes.tsv")
    calibrate(m, dataset=ds, samples=8, evaluate=False, write=False, progress=False)      # warm-up
    work = Path(tempfile.mkdtemp(prefix="calib-sweep-bench-"))
    try:
        for bias in (True, False):
            print(f"\nEfficientNet-Lite0, {args.samples} calibration samples, {args.eval_samples} eval samples, "
                  f"bias correction {'on (default)' if bias else 'off'}\n")
            print("| what | wall (s) | CPU (s) |\n|---|---:|---:|")
            for name, wall, cpu in measure(model, ds, args.samples, args.eval_samples, bias, work):
                cpu_text = "" if cpu is None else f"{cpu:.2f}"
                print(f"| {name} | {wall:.2f} | {cpu_text} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
