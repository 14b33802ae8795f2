"""`calib search`: the fastest per-group INT8 / FP16 / FP32 plan that meets an accuracy budget.

    calib search --model m.onnx --data PATH [data flags] [--task ...] --budget EXPR \\
        [--latency onnxruntime|roofline:h100|tensorrt] [--algorithm ours|bisect-prefix|bisect-suffix|greedy] \\
        [--sensitivity direct|direct-all-but|proxy] [--search-samples N] [--max-evals N] \\
        [calibration flags, --calib-algorithm] [--threads N] --out DIR [--force] [--json]
    calib search --model m.onnx [--shapes x:1x3x48x320 | --data PATH ...] --dry-run [--json]

Writes plan.json, <stem>.mixed.onnx, <stem>.cache and its sidecar, search.json and search.png into
--out, as one atomic set (see :func:`calib.mixed.search`). ``--dry-run`` lists the quantization
groups and exits (dynamic input sizes from --shapes, else from the first sample of --data).
"""
from __future__ import annotations

from .args import (
    CalibrationArgs,
    DataArgs,
    JsonArgs,
    ModelArgs,
    OutputArgs,
    RuntimeArgs,
    ShapesArgs,
    TaskArgs,
    add_command,
    positive_int,
    print_json,
)

DATA = DataArgs(required=False)
OUTPUT = OutputArgs(writes="plan.json, <stem>.mixed.onnx, <stem>.cache (+ .json), search.json and search.png",
                    not_suffixes=(".json", ".onnx"))
CALIBRATION = CalibrationArgs(algorithm_flag="--calib-algorithm", plan=False, evaluate=False)


def register(sub) -> None:
    from ..mixed import DEFAULT_MARGIN, DEFAULT_SEARCH_SAMPLES, LATENCY_MODELS
    from ..tuning.search import ALGORITHMS, REVERTS
    from ..tuning.sensitivity import MODES

    p = add_command(sub, "search", help="find the fastest mixed INT8/FP16/FP32 plan that meets an accuracy budget",
                    description="Calibrate once, rank the quantization groups by sensitivity, then search for the "
                                "plan with the lowest predicted latency that meets --budget on a search split of the "
                                "calibration data, in at most ceil(log2 G) + 3 full evaluations by default; verify it "
                                "on the held-out eval split. Writes plan.json, <stem>.mixed.onnx, the TensorRT cache "
                                "and its sidecar, search.json (every plan tried) and search.png.",
                    groups=[ModelArgs(), DATA, TaskArgs(), CALIBRATION, RuntimeArgs(), ShapesArgs(), OUTPUT,
                            JsonArgs()],
                    func=run)
    p.add_argument("--budget", metavar="EXPR",
                   help="the accuracy budget: top1_drop<=PT, agreement>=F, cosine>=F, sqnr>=DB, ctc_agreement>=F "
                        "or cer_increase<=PT (against FP32, or the labels for the drop/increase ones)")
    p.add_argument("--latency", default="onnxruntime", metavar="MODEL",
                   help=f"latency model the search minimises: {', '.join(LATENCY_MODELS)} (default onnxruntime: "
                        "measured on this CPU)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="ours",
                   help="search strategy: ours (default), or the baselines bisect-prefix / bisect-suffix "
                        "(Polygraphy debug precision) and greedy (NNCF accuracy control)")
    p.add_argument("--sensitivity", choices=MODES, default="direct",
                   help="how groups are ranked: direct (default: the budget metric with one group alone in INT8; "
                        "the proxy is measured too, with their rank agreement), direct-all-but (every group INT8 "
                        "but one), proxy (one attributed pass only: cheaper, no rank agreement)")
    p.add_argument("--search-samples", type=positive_int, default=DEFAULT_SEARCH_SAMPLES, metavar="N",
                   help=f"calibration samples the plans are scored on (default {DEFAULT_SEARCH_SAMPLES})")
    p.add_argument("--max-evals", type=positive_int, default=None, metavar="N",
                   help="full evaluations allowed (default ceil(log2 G) + 3 for G quantizable groups)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, metavar="SE",
                   help=f"standard errors a plan's estimate on the search split must clear the budget by to count "
                        f"as meeting it (default {DEFAULT_MARGIN:g}: the estimate itself; 1: about 84%% one-sided "
                        "confidence, against the selection bias of a search, with more groups kept in float)")
    p.add_argument("--revert", choices=REVERTS, default=None,
                   help="precision of the groups taken out of INT8 (ours and greedy): auto (ours's default: FP16 "
                        "where the latency model predicts it faster and every group in FP16 meets the budget, "
                        "else FP32), fastest (FP16 where predicted faster) or fp32 (greedy's default; for engines "
                        "built without FP16)")
    p.add_argument("--dry-run", action="store_true", help="list the quantization groups and exit")


def run(args) -> int:
    from ..errors import BudgetError, CalibError
    from ..tuning.budget import parse_budget

    json_out = JsonArgs.parse(args)
    task, text_labels = TaskArgs.parse(args)
    if args.dry_run:
        return _dry_run(args, json_out)
    if not args.budget:
        raise BudgetError("no budget: pass --budget, e.g. --budget 'agreement>=0.995'")
    parse_budget(args.budget, task)              # a bad budget fails before any work
    config = CALIBRATION.parse(args)
    out = OUTPUT.parse(args)
    if out.dir is None:
        raise CalibError("no output folder: pass --out DIR")
    if not DataArgs.given(args):
        raise CalibError("no data: pass --data PATH (or --data-loader-script FILE.py:FUNC)")
    from ..mixed import output_paths, search
    from ..utils import check_outputs

    model = ModelArgs.parse(args)
    check_outputs(output_paths(out.dir, model.name).values(), out.force, option="force")   # before any work
    ds = DATA.parse(args, model)

    res = search(model, dataset=ds, budget=args.budget, config=config, task=task, latency=args.latency,
                 algorithm=args.algorithm, sensitivity=args.sensitivity, search_samples=args.search_samples,
                 max_evals=args.max_evals, margin=args.margin, revert=args.revert, out=out.dir, force=out.force,
                 progress=not json_out,
                 text_labels=text_labels)
    if json_out:
        from ..utils import json_safe

        print_json(json_safe(res.summary), sort_keys=True)
    else:
        for line in res.summary_lines():
            print(line)
    return 0


def _dry_run(args, json_out: bool) -> int:
    from ..tuning import find_groups
    from .inspect import print_groups

    model = ModelArgs.parse(args)
    shapes = ShapesArgs.parse(args) or None
    if shapes is None and DataArgs.given(args):      # dynamic sizes: those of the first sample
        batch = next(iter(DATA.parse(args, model).batches(batch_size=1)))
        shapes = {k: list(v.shape) for k, v in batch.feed.items()}
    groups = [g.to_dict() for g in sorted(find_groups(model, shapes), key=lambda g: g.order)]
    if json_out:
        print_json({"model": model.name, "shapes": shapes, "groups": groups})
    else:
        print(f"model     {model.path or model.name}")
        print_groups(groups)
    return 0
