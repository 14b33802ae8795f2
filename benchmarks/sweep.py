"""Sweep benchmark: a 4-algorithm sweep at one sample count against one calibration, in one run.

Prints one table per setting (bias correction on, calibrate's default, and off):

- one calibration: ``calibrate()`` of EfficientNet-Lite0 with entropy at the sample count, no
  held-out check (statistics pass, ranges, Q/DQ model with its bias correction);
- the same for each of max, entropy, percentile 99.99 and mse: what a shell loop over
  ``calibrate`` costs (every run collects its own statistics);
- ``calib.sweep.sweep`` over those 4 algorithms (one process, no CPU timing, roofline prediction):
  each point's calibration from the shared statistics, the points' measuring (accuracy against
  FP32 on the eval split, predicted latency), writing the fronts, the rest (the statistics pass,
  counted once, and bookkeeping: statistics and models written to the sweep folder, the store),
  the whole run; then the sweep without the measuring and the fronts over one calibration: the
  issue's bound is 1.5;
- the same sweep with ``--jobs 2`` (two worker processes of one ONNX Runtime thread each), wall time.

Every timed part runs after a warm-up calibration (numba kernels compiled, files cached) and once
the CPUs are idle (``_quiet.wait_quiet``, up to 30 s); one calibration and the sweep run
``--repeat`` times (default 3) and the fastest run counts, the sweep's parts being those of that
run. Process CPU time (all threads) is printed beside wall time where it is known (a point's
parts are its own wall and CPU seconds, as the store records them; ``--jobs 2`` has wall time
only, its work being in the workers).

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
QUIET_WAIT_S = 30       # per timed run: on a machine that stays busy, waiting longer does not help


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    return time.perf_counter() - t[0], time.process_time() - t[1]


def best_of(repeat: int, fn):
    """``(result, (wall, cpu))`` of the run of *fn* with the least wall time among *repeat*, each
    started on a quiet machine."""
    best = None
    for _ in range(repeat):
        wait_quiet(QUIET_WAIT_S)
        t = _clock()
        res = fn()
        took = _since(t)
        if best is None or took[0] < best[1][0]:
            best = (res, took)
    return best


def measure(model: Path, ds, samples: int, eval_samples: int, bias: bool, work: Path,
            repeat: int) -> list[tuple[str, float, float]]:
    from calib.pipeline import CalibrationConfig, calibrate
    from calib.sweep import sweep

    cfg = CalibrationConfig(samples=samples, evaluate=False, bias_correction=bias)
    rows = []
    _, one = best_of(repeat, lambda: calibrate(model, dataset=ds, config=cfg, write=False, progress=False))
    rows.append((f"one calibration (entropy), best of {repeat}", *one))
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
    res, total = best_of(repeat, lambda: sweep(
        model, grid={"algorithm": ALGORITHMS, "samples": [samples], "calibration": {"bias_correction": bias}},
        out=out, dataset=ds, timing_runs=0, eval_samples=eval_samples, progress=False, force=True,
        echo=lambda line: None))

    def part(*names: str) -> tuple[float, float]:
        return (sum(r["timing_s"][n] for r in res.rows for n in names),
                sum(r["timing_s"][f"{n}_cpu"] for r in res.rows for n in names))

    calib_parts, measured = part("calibrate"), part("score", "speed")
    front = res.timing["front"]
    for r in res.rows:
        rows.append((f"sweep: point {r['config']['algorithm']}: calibration from the statistics",
                     r["timing_s"]["calibrate"], r["timing_s"]["calibrate_cpu"]))
    rows.append(("sweep: measuring the 4 points (accuracy on the eval split against FP32; predicted latency)",
                 *measured))
    rows.append(("sweep: the fronts (table and plots)", front, None))
    rows.append(("sweep: the rest (statistics pass, once; bookkeeping)",
                 total[0] - calib_parts[0] - measured[0] - front, None))
    rows.append((f"sweep: whole run (4 points), best of {repeat}", *total))
    bare = total[0] - measured[0] - front
    rows.append(("sweep without measuring the points and without the fronts", bare, None))
    rows.append(("(sweep without measuring and fronts) / one calibration", bare / one[0], None))
    rows.append(("(4 calibrations) / one calibration", loop[0] / one[0], None))
    wait_quiet(QUIET_WAIT_S)
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
    ap.add_argument("--repeat", type=int, default=3, help="runs of one calibration and of the sweep (best kept)")
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
            for name, wall, cpu in measure(model, ds, args.samples, args.eval_samples, bias, work, args.repeat):
                cpu_text = "" if cpu is None else f"{cpu:.2f}"
                print(f"| {name} | {wall:.2f} | {cpu_text} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
