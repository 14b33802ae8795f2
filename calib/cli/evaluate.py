"""`calib evaluate`: score candidate models against the FP32 model (and labels), in one pass.

    calib evaluate --model fp32.onnx --candidate m.int8.onnx [--candidate ...] --data DIR \\
        [data flags] [--split calib|eval|all] [--task auto|classification|embedding|dense|ctc|tensor] \\
        [--attribute] [--metric NAME|file.py:func ...] [--text-labels labels.tsv] [--threads N] \\
        --out DIR [--force] [--json]

Writes report.json, report.md, metrics.png (and layers_<candidate>.png with --attribute) into
--out, atomically; refuses to overwrite them without --force. A candidate that calibrate wrote
(``<stem>.int8.onnx`` beside its sidecar) and that was calibrated on some of the scored samples
gets a ``warning:`` line on stderr: ``--split eval`` scores only the samples calibration never saw.
"""
from __future__ import annotations

import sys

from .args import DataArgs, JsonArgs, ModelArgs, OutputArgs, RuntimeArgs, SplitArgs, TaskArgs, add_command, print_json

DATA = DataArgs(required=True)
OUTPUT = OutputArgs(required=True, writes="report.json, report.md and the plots")


def register(subparsers) -> None:
    from ..harness.stats import DEFAULT_RESAMPLES

    p = add_command(subparsers, "evaluate", help="score candidates against the FP32 model (and labels)",
                    description="Run the FP32 reference and every candidate over the same data in one pass "
                                "(each batch decoded once), and report each candidate's metrics with paired "
                                "bootstrap 95% intervals, McNemar's exact test for accuracy differences, and "
                                "optionally per-layer SQNR.",
                    groups=[ModelArgs(help="the FP32 reference model (.onnx)"), DATA, SplitArgs(), TaskArgs(),
                            RuntimeArgs(), OUTPUT, JsonArgs()], func=run)
    p.add_argument("--candidate", action="append", required=True, metavar="MODEL",
                   help="a candidate model (.onnx Q/DQ / mixed precision / FP16; a TensorRT plan with "
                        "TensorRT installed); repeat for several; NAME=PATH names it in the report")
    p.add_argument("--metric", action="append", default=[], metavar="NAME|FILE.py:FUNC",
                   help="add a metric: a registered name or a Python function (repeatable)")
    p.add_argument("--output", metavar="NAME",
                   help="the model output the task's metrics score (default: the first float output of shape "
                        "[N, C] when there are several float outputs, else the first float output)")
    p.add_argument("--only-metrics", action="store_true",
                   help="compute only the --metric metrics, not the task's defaults")
    p.add_argument("--attribute", action="store_true",
                   help="per-layer SQNR of every intermediate tensor (ONNX Runtime candidates)")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _candidate_spec(spec: str):
    """``NAME=PATH`` or ``PATH``."""
    if "=" in spec and not spec.startswith("="):
        name, path = spec.split("=", 1)
        return name, path
    return None, spec


def calibration_overlap(candidate_path, scored_ids) -> int:
    """How many of *scored_ids* the Q/DQ model *candidate_path* was calibrated on, by the sample ids
    its calibrate sidecar lists (0 when it has none)."""
    from ..pipeline import calibration_ids

    used = calibration_ids(candidate_path)
    return len(set(used).intersection(scored_ids)) if used else 0


def run(args) -> int:
    from ..harness import HarnessError, engine, evaluate

    if args.resamples < 100:
        raise HarnessError(f"--resamples {args.resamples} is too few for a 95% interval; use at least 100")
    if args.only_metrics and not args.metric:
        raise HarnessError("--only-metrics needs at least one --metric")
    out = OUTPUT.parse(args)
    threads = RuntimeArgs.parse(args)
    ref_model = ModelArgs.parse(args)
    specs = [_candidate_spec(c) for c in args.candidate]
    ref = engine(ref_model, name="reference" if ref_model.name in {path for _, path in specs} else ref_model.name,
                 threads=threads)
    cands = [engine(path, name=name, threads=threads) for name, path in specs]
    split = SplitArgs.parse(args)
    ds = DATA.parse(args, ref_model, split=split)
    json_out = JsonArgs.parse(args)
    progress = "evaluating" if sys.stderr.isatty() and not json_out else False
    rep = evaluate(ref, cands, ds, task=args.task, attribute=args.attribute, out=out.dir, force=out.force,
                   metrics=args.metric if args.only_metrics else None,
                   extra_metrics=[] if args.only_metrics else args.metric,
                   labels=args.text_labels, batch_size=args.batch_size,
                   progress=progress, resamples=args.resamples, seed=args.bootstrap_seed,
                   plots=not args.no_plots, output=args.output)
    scored = set(ds.ids) - {sid for sid, _ in ds.skipped}   # corrupt images skipped are not scored
    for (_, path), cand in zip(specs, cands):
        n = calibration_overlap(path, scored)
        if n:
            print(f"warning: {cand.info.name}: {n} of the {len(scored)} scored samples were used to calibrate it"
                  + ("; pass --split eval to score only the samples calibration never saw" if split != "eval" else ""),
                  file=sys.stderr)
    if json_out:
        print_json(rep.to_json())
    else:
        for line in rep.summary_lines():
            print(line)
        print(f"report: {out.path('report.md')}")
    return 0
