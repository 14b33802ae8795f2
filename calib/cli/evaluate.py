"""`calib evaluate`: score candidate models against the FP32 model (and labels), in one pass.

    calib evaluate --model fp32.onnx --candidate m.int8.onnx [--candidate ...] --data DIR \\
        [data flags] [--task auto|classification|embedding|dense|ctc|tensor] [--attribute] \\
        [--metric NAME|file.py:func ...] [--text-labels labels.tsv] --out DIR [--force] [--json]

Writes report.json, report.md, metrics.png (and layers_<candidate>.png with --attribute) into
--out, atomically; refuses to overwrite them without --force.
"""
from __future__ import annotations

import sys



def register(subparsers) -> None:
    from ..datasets import add_data_arguments
    from ..harness.metrics import TASKS
    from ..harness.stats import DEFAULT_RESAMPLES

    p = subparsers.add_parser(
        "evaluate", help="score candidates against the FP32 model (and labels)",
        description="Run the FP32 reference and every candidate over the same data in one pass "
                    "(each batch decoded once), and report each candidate's metrics with paired "
                    "bootstrap 95% intervals, McNemar's exact test for accuracy differences, and "
                    "optionally per-layer SQNR.")
    p.add_argument("--model", required=True, help="the FP32 reference model (.onnx)")
    p.add_argument("--candidate", action="append", required=True, metavar="MODEL",
                   help="a candidate model (.onnx Q/DQ / mixed precision / FP16; a TensorRT plan with "
                        "TensorRT installed); repeat for several; NAME=PATH names it in the report")
    add_data_arguments(p)
    p.add_argument("--task", choices=["auto", *TASKS], default="auto",
                   help="which metrics to compute (default: guessed from the outputs, labels and model metadata)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME|FILE.py:FUNC",
                   help="add a metric: a registered name or a Python function (repeatable)")
    p.add_argument("--only-metrics", action="store_true",
                   help="compute only the --metric metrics, not the task's defaults")
    p.add_argument("--attribute", action="store_true",
                   help="per-layer SQNR of every intermediate tensor (ONNX Runtime candidates)")
    p.add_argument("--text-labels", metavar="TSV",
                   help="text labels 'file<TAB>text' per line (OCR / CTC), matched to samples by file name")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                   help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.json, report.md and plots")
    p.add_argument("--force", action="store_true", help="overwrite existing report files")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=run)


def _candidate_spec(spec: str):
    """``NAME=PATH`` or ``PATH``."""
    if "=" in spec and not spec.startswith("="):
        name, path = spec.split("=", 1)
        return name, path
    return None, spec


def run(args) -> int:
    from ..datasets import dataset_from_args
    from ..harness import HarnessError, engine, evaluate
    from ..model import Model

    if args.resamples < 100:
        raise HarnessError(f"--resamples {args.resamples} is too few for a 95% interval; use at least 100")
    ref_model = Model.load(args.model)
    ref = engine(ref_model, name="reference" if ref_model.name in
                 {_candidate_spec(c)[1] for c in args.candidate} else ref_model.name)
    cands = []
    for spec in args.candidate:
        name, path = _candidate_spec(spec)
        cands.append(engine(path, name=name))
    ds = dataset_from_args(args, ref_model)
    progress = "evaluating" if sys.stderr.isatty() and not args.json else False
    metrics = args.metric if args.only_metrics else None
    if args.only_metrics and not args.metric:
        raise HarnessError("--only-metrics needs at least one --metric")
    rep = evaluate(ref, cands, ds, task=args.task, attribute=args.attribute, out=args.out, force=args.force,
                   metrics=metrics, extra_metrics=[] if args.only_metrics else args.metric,
                   labels=args.text_labels, batch_size=args.batch_size,
                   progress=progress, resamples=args.resamples, seed=args.bootstrap_seed,
                   plots=not args.no_plots)
    if args.json:
        print(rep.to_json(), end="")
    else:
        for line in rep.summary_lines():
            print(line)
        print(f"report: {args.out}/report.md")
    return 0
