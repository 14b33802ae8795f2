"""`calib sweep`: run a grid of calibrations, store every point, draw the Pareto front; and
`calib sweep show DIR` (`--csv FILE`, `--json`) for what a sweep stored."""
from __future__ import annotations

from pathlib import Path

from ..errors import CalibError
from .args import (
    DataArgs,
    JsonArgs,
    ModelArgs,
    OutputArgs,
    RayArgs,
    RuntimeArgs,
    add_command,
    positive_int,
    print_json,
)

DATA = DataArgs()
MODEL = ModelArgs(required=False, help="the FP32 ONNX model (required to run a sweep)")
OUTPUT = OutputArgs(writes="the sweep's store, statistics, models and plots (required to run a sweep; a rerun "
                           "resumes there; --force starts over)")


def register(sub) -> None:
    p = add_command(
        sub, "sweep", help="run a grid of calibrations; store every point; draw the accuracy/speed front",
        description="Run every point of a TOML grid (algorithm, samples, seed, plan, batch_size, target; see "
                    "docs/sweeps.md): calibrate, score against FP32 (and the labels) on the eval split, time on this "
                    "CPU against FP32, predict GPU latency, record the size. Results go into DIR/sweep.db one "
                    "point at a time; a rerun skips finished points. Statistics are collected once per (samples, "
                    "seed). The grid's batch sizes replace --batch-size. `calib sweep show DIR` prints the table.",
        groups=[MODEL, DATA, RuntimeArgs(), RayArgs("the points run as Ray tasks instead of --jobs processes"), OUTPUT,
                JsonArgs()], func=run)
    p.add_argument("action", nargs="?", choices=["show"], help="show: print the points stored in the folder DIR")
    p.add_argument("folder", nargs="?", metavar="DIR", help="with show: the sweep's --out folder")
    g = p.add_argument_group("Sweep", "the grid, where results go, and how points run")
    g.add_argument("--grid", metavar="SWEEP.toml", help="the grid: one list per axis (required to run a sweep)")
    g.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="points run at once, in N worker processes (default 1: in this process)")
    g.add_argument("--latency", default="roofline:h100", metavar="roofline:GPU",
                   help="latency model that predicts GPU latency (not a measurement): roofline:h100 (default), "
                        "roofline:a100, roofline:l4, roofline:t4, roofline:orin, or none")
    g.add_argument("--timing-runs", type=int, default=30, metavar="N",
                   help="timed runs per model at batch 1 on this CPU, interleaved with FP32 (default 30; 0: no "
                        "CPU timing); throughput at the batch size takes a quarter as many")
    g.add_argument("--eval-samples", type=positive_int, default=500, metavar="N",
                   help="samples of the eval split every point is scored on (default 500, or all if fewer)")
    g.add_argument("--metric", metavar="NAME", help="metric of the front (default: the headline metric against "
                                                    "the labels, e.g. top1, else against FP32, e.g. top1_agreement)")
    g.add_argument("--csv", metavar="FILE", help="with show: write the points as CSV to FILE")


def _show(args) -> int:
    from ..sweep import export_csv, export_json, show
    from ..utils import atomic_write_text

    if not args.folder:
        raise CalibError("calib sweep show needs the sweep's folder: calib sweep show DIR")
    folder = Path(args.folder)
    if args.csv:
        atomic_write_text(args.csv, export_csv(folder), overwrite=args.force, option="force")
        print(f"wrote {args.csv}")
    elif JsonArgs.parse(args):
        print_json(export_json(folder))
    else:
        print(show(folder, args.metric))
    return 0


def run(args) -> int:
    if args.action == "show":
        return _show(args)
    if args.folder:
        raise CalibError(f"unexpected argument {args.folder!r}; to run a sweep give --model, --data, --grid and --out")
    missing = [f for f, v in (("--model", args.model), ("--grid", args.grid), ("--out", args.out)) if not v]
    if not DataArgs.given(args):
        missing.insert(1, "--data")
    if missing:
        raise CalibError(f"a sweep needs {', '.join(missing)} (or `calib sweep show DIR` to print one)")
    from ..sweep import load_grid, sweep

    grid = load_grid(args.grid)          # a bad grid fails before the model or data are read
    model = ModelArgs.parse(args)
    json_out = JsonArgs.parse(args)
    echo = None
    if json_out:
        import sys

        def echo(line: str) -> None:
            print(line, file=sys.stderr)
    out = OUTPUT.parse(args)
    res = sweep(model, grid=grid, out=out.dir, dataset=DATA.parse(args, model), jobs=args.jobs, ray=RayArgs.parse(args),
                force=out.force, latency=args.latency, timing_runs=args.timing_runs, eval_samples=args.eval_samples,
                threads=RuntimeArgs.parse(args), metric=args.metric, progress=not json_out, echo=echo)
    c = res.counts()
    if json_out:
        print_json({"run_id": res.run_id, "counts": c, "metric": getattr(res.metric, "name", None),
                    "outputs": {k: str(v) for k, v in res.paths.items()},
                    "points": [dict(o.row, key=o.key, outcome=o.status) for o in res.outcomes]})
        return 0
    print(f"{len(res.outcomes)} points: {c['computed']} computed, {c['cached']} cached (stored by an earlier run), "
          f"{c['failed']} failed")
    if res.metric is not None:
        print(res.front_table())
    for v in res.paths.values():
        print(f"wrote {v}")
    return 0
