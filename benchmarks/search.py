"""Mixed-precision search: our strategy against Polygraphy's prefix/suffix bisection and NNCF's
greedy revert, on the same groups, sensitivities and budget.

For each case, one :class:`calib.mixed.Searcher` calibrates, measures the sensitivities and the
latency model once; then every strategy searches with the same evaluator (a plan two strategies
both try is measured once, and counts as an evaluation for each), and each strategy's chosen plan
is bias-corrected afresh and verified on the held-out eval split. Also: our strategy limited to as
many evaluations as each baseline used.

    python benchmarks/search.py                      # the three cases of docs/search.md (about 10 minutes)
    python benchmarks/search.py --cases rec --latency onnxruntime --margin 1
    python benchmarks/search.py --json out/search_bench.json
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

from _common import SHARED

CASES = {
    "rec": dict(model="ppocrv4_rec", data="ocr-lines", preprocess="paddleocr-rec", budget="cer_increase<=0.5",
                calibration={"algorithm": "max"}, text_labels="ocr-lines/labels.tsv", search_samples=48),
    "rec-ctc": dict(model="ppocrv4_rec", data="ocr-lines", preprocess="paddleocr-rec", budget="ctc_agreement>=0.9",
                    calibration={"algorithm": "max"}, text_labels="ocr-lines/labels.tsv", search_samples=48),
    "effnet": dict(model="efficientnet_lite0", data="imagenet-sample", preprocess="efficientnet-lite",
                   budget="sqnr>=25", calibration={}, classes="imagenet1k_classes.tsv", search_samples=32),
}
# (row name, strategy, its options). Ablations of ours: "sensitivity order" (NNCF's order instead
# of sensitivity per second), "FP32 reverts" (the bisection reverts to FP32, FP16 tried after it).
# "greedy, FP16 reverts" is NNCF's scheme given what ours knows of FP16 (not NNCF's default).
STRATEGIES = (("ours", "ours", {}), ("ours, sensitivity order", "ours", {"order": "sensitivity"}),
              ("ours, FP32 reverts", "ours", {"revert": "fp32"}),
              ("bisect-prefix", "bisect-prefix", {}), ("bisect-suffix", "bisect-suffix", {}),
              ("greedy", "greedy", {}), ("greedy, FP16 reverts", "greedy", {"revert": "auto"}))
BASELINES = tuple(row for row, alg, _ in STRATEGIES if alg != "ours")


def _fmt(budget, m: dict) -> str:
    v, lo, hi = (float(m[k]) for k in ("value", "low", "high"))
    return f"{budget.format_value(v)} [{budget.format_value(lo)}, {budget.format_value(hi)}]"


def run_case(name: str, a) -> dict:
    from calib.mixed import Searcher

    c = CASES[name]
    kw = {}
    if c.get("text_labels"):
        kw["text_labels"] = str(SHARED / "data" / c["text_labels"])
    if c.get("classes"):
        kw["classes"] = str(SHARED / "data" / c["classes"])
    config = dict(c["calibration"], samples=a.samples, eval_samples=a.eval_samples, seed=a.seed)
    search_samples = a.search_samples or c["search_samples"]
    t0 = time.perf_counter()
    s = Searcher(SHARED / "models" / f"{c['model']}.onnx", SHARED / "data" / c["data"], a.budget.get(name, c["budget"]),
                 config, preprocess=c["preprocess"], latency=a.latency, sensitivity=a.sensitivity,
                 search_samples=search_samples, progress=not a.quiet, **kw)
    setup = time.perf_counter() - t0
    rows, outcomes = [], {}
    for row, alg, opts in STRATEGIES:
        limit = None if alg != "greedy" else len(s.quantizable) + 1    # NNCF: no limit
        outcomes[row] = o = s.run(alg, limit, a.margin, **opts)
        plan, model, ver = s.finish(o)
        mx = ver["mixed"]
        rows.append({"algorithm": row, "evaluations": len(o.evaluations), "met_on_search": o.met,
                     "search_metric": o.evaluations[o.chosen_index].metric if o.met else None,
                     "eval_metric": mx["measurement"], "eval_judgement": mx["judgement"],
                     "int8_mac_share": o.int8_mac_share, "predicted_latency_s": o.predicted_latency_s,
                     "groups": {p: sum(1 for v in o.chosen.values() if v == p) for p in ("int8", "fp16", "fp32")},
                     "all_int8_eval_metric": ver["all-int8"]["measurement"], "eval_samples": ver["samples"]})
    equal = []
    for alg in BASELINES:
        n = len(outcomes[alg].evaluations)
        o = s.run("ours", n, a.margin)
        equal.append({"baseline": alg, "evaluations": n, "ours_evaluations": len(o.evaluations), "ours_met": o.met,
                      "ours_predicted_latency_s": o.predicted_latency_s, "ours_int8_mac_share": o.int8_mac_share,
                      "baseline_predicted_latency_s": outcomes[alg].predicted_latency_s})
    sp = s.space
    return {"case": name, "model": c["model"], "budget": str(s.budget), "task": s.task,
            "calibration": s.calibration.summary["algorithm"], "groups": len(s.groups),
            "quantizable": len(s.quantizable), "search_samples": s.evaluator.samples,
            "sensitivity": s.sensitivity.used, "spearman": s.sensitivity.spearman, "latency_model": s.latency.name,
            "latency_description": s.latency.description, "all_int8_s": sp.predict(sp.plan()),
            "all_fp32_s": sp.predict(sp.plan(fp32=sp.groups)), "models_run": s.evaluator.models_run,
            "all_fp16_search_metric": s.fp16_value,
            "setup_s": round(setup, 1), "rows": rows, "equal_evaluations": equal}


def print_case(r: dict) -> None:
    from calib.tuning.budget import parse_budget

    b = parse_budget(r["budget"])
    rho = r["spearman"]
    print(f"\n### {r['model']}: {r['budget']} ({r['calibration']} calibration, {r['search_samples']} search samples, "
          f"{r['rows'][0]['eval_samples']} held-out samples)\n")
    print(f"{r['quantizable']} quantizable groups of {r['groups']}; sensitivity {r['sensitivity']}"
          + (f" (Spearman rho proxy vs direct {rho:+.2f})" if rho is not None else "")
          + f"; latency model {r['latency_model']}: all INT8 {r['all_int8_s'] * 1e3:.3g} ms, all FP32 "
            f"{r['all_fp32_s'] * 1e3:.3g} ms per sample; all INT8 on the held-out split: "
            f"{_fmt(b, r['rows'][0]['all_int8_eval_metric'])}"
          + (f"; every group in FP16 on the search split: {b.format_value(r['all_fp16_search_metric'])}"
             if r.get("all_fp16_search_metric") is not None else "") + "\n")
    print(f"| strategy | evaluations | {b.metric} (search) | {b.metric} held out [95% CI] | held out vs budget | "
          f"groups INT8/FP16/FP32 | INT8 share of MACs | predicted latency (ms) |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for row in r["rows"]:
        sm = row["search_metric"]
        g = row["groups"]
        print(f"| {row['algorithm']} | {row['evaluations']} | "
              f"{b.format_value(sm) if sm is not None else 'none met'} | {_fmt(b, row['eval_metric'])} | "
              f"{row['eval_judgement']} | {g['int8']}/{g['fp16']}/{g['fp32']} | {row['int8_mac_share']:.1%} | "
              f"{row['predicted_latency_s'] * 1e3:.4g} |")
    print("\nours limited to each baseline's number of evaluations:\n")
    print("| baseline | evaluations | baseline latency (ms) | ours latency (ms) | ours INT8 share of MACs |")
    print("|---|---:|---:|---:|---:|")
    for e in r["equal_evaluations"]:
        print(f"| {e['baseline']} | {e['evaluations']} | {e['baseline_predicted_latency_s'] * 1e3:.4g} | "
              f"{e['ours_predicted_latency_s'] * 1e3:.4g}{'' if e['ours_met'] else ' (none met: FP32)'} | "
              f"{e['ours_int8_mac_share']:.1%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="rec,rec-ctc,effnet", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples")
    ap.add_argument("--search-samples", type=int, default=None, help="(default: the case's)")
    ap.add_argument("--eval-samples", type=int, default=None, help="held-out samples (default: the whole eval split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", default="roofline:t4")
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--sensitivity", default="direct")
    ap.add_argument("--budget", action="append", default=[], metavar="CASE=EXPR", help="override a case's budget")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    a.budget = dict(x.split("=", 1) for x in a.budget)
    warnings.simplefilter("ignore")
    results = []
    for name in a.cases.split(","):
        r = run_case(name, a)
        results.append(r)
        print_case(r)
    if a.json:
        from calib.utils import json_safe

        with open(a.json, "w") as f:
            json.dump(json_safe(results), f, indent=2)
    return None


if __name__ == "__main__":
    main()
