"""Mixed-precision search, end to end: the fastest per-group INT8 / FP16 / FP32 plan that meets an
accuracy budget, found with few full evaluations, explained and reproducible.

:func:`search` is the Python API behind ``calib search`` (exported as ``calib.search``):

1. calibrate once (:func:`calib.pipeline.calibrate`, nothing written): statistics, ranges, the
   smoothing factors and the bias correction of the all-INT8 Q/DQ model;
2. the quantization groups (:func:`calib.tuning.groups.find_groups`) and a latency model
   (:func:`calib.tuning.latency.latency_model`) predicting each group's time per precision;
3. the search split: a seeded subset of the calibration split (``search_samples``), of the
   samples calibration did not fit its ranges to where there are enough of them (a plan scores
   better on the samples its ranges were fitted to than on new data), decoded once; the FP32
   reference runs on it once;
4. sensitivities per group (:mod:`calib.tuning.sensitivity`: the proxy from one attributed pass,
   and, unless ``sensitivity="proxy"``, the direct measure; Spearman's rho between them);
5. the search (:mod:`calib.tuning.search`): each evaluation builds the plan's Q/DQ model with the
   calibrated ranges and smoothing factors, and the bias shifts measured once on the all-INT8
   model (a layer still in INT8 keeps its shift: it is its weights' rounding error times the
   mean of its input, which upstream precision changes little), and scores it on the search
   split;
6. the chosen plan's Q/DQ model, bias-corrected afresh for that plan (a new probe pass), is
   verified on the disjoint eval split with the harness's interval and verdict, beside the
   all-INT8 model;
7. with *out*, one atomic set of files: ``plan.json``, ``<stem>.mixed.onnx``, ``<stem>.cache`` and
   its sidecar, ``search.json`` and ``search.png``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BudgetError, CalibError, EmptyDatasetError
from .model import Model, load_model
from .pipeline import CalibrationConfig, CalibrationResult, bias_probe_samples, build_qdq, calibration_splits
from .utils import atomic_write_all, check_outputs, json_safe
from .version import __version__

DEFAULT_SEARCH_SAMPLES = 64
DEFAULT_MARGIN = 0.0     # standard errors a plan's estimate on the search split must clear the budget by
LATENCY_MODELS = ("onnxruntime", "roofline:h100", "roofline:a100", "roofline:l4", "roofline:t4", "roofline:orin",
                  "tensorrt")
MIXED_SUFFIX = ".mixed.onnx"
SCHEMA = "calib-search"
VERSION = 1


def output_paths(out, stem: str) -> dict[str, Path]:
    """The files :func:`search` writes into the folder *out*."""
    from .cache import sidecar_path

    base = Path(out)
    return {"plan": base / "plan.json", "qdq": base / f"{stem}{MIXED_SUFFIX}", "cache": base / f"{stem}.cache",
            "sidecar": sidecar_path(base / f"{stem}.cache"), "search": base / "search.json",
            "plot": base / "search.png"}


@dataclass
class SearchResult:
    """What :func:`search` found: the plan (:class:`calib.plan.PrecisionPlan`, node level) and its
    group-level form ``precisions``, the Q/DQ model, every evaluation (``outcome``), the
    sensitivities, the verification on the eval split and the JSON written as ``search.json``
    (``summary``)."""

    plan: Any
    precisions: dict[str, str]
    model: Model
    outcome: Any
    sensitivity: Any
    groups: list
    latency: dict
    verification: dict
    summary: dict
    paths: dict[str, Path]
    calibration: CalibrationResult = field(repr=False)
    evaluator: Any = field(default=None, repr=False)
    eval_data: Any = field(default=None, repr=False)
    space: Any = field(default=None, repr=False)

    def summary_lines(self) -> list[str]:
        return list(self.summary.get("lines", []))

    def predicted_latency(self, precisions: Mapping[str, str]) -> float:
        """Seconds per sample the search's latency model predicts for group *precisions* (groups
        not named: INT8)."""
        return self.space.predict({g: precisions.get(g, "int8") for g in self.space.groups})

    def evaluate(self, plan, *, split: str = "eval", batch_size: int = 16):
        """Score another plan, e.g. :attr:`plan` edited by hand, against FP32: a
        :class:`calib.plan.PrecisionPlan` (or its dict or path), or group precisions (group id ->
        precision, groups not named INT8). The Q/DQ model takes the calibrated ranges and the bias
        shifts measured on the all-INT8 model. *split*: ``eval`` (the held-out samples the plan was
        verified on) or ``search``. Returns the :class:`calib.harness.Report`."""
        from .harness import compare
        from .plan import PrecisionPlan, load_plan

        if split not in ("eval", "search"):
            raise CalibError(f"split must be 'eval' or 'search', not {split!r}")
        if isinstance(plan, PrecisionPlan) or not isinstance(plan, Mapping) or "format" in plan:
            pp = load_plan(plan)
        else:
            known = {g.id for g in self.groups if g.quantizable}
            unknown = sorted(set(plan) - known)
            if unknown:
                raise CalibError(f"not quantizable groups of this model: {', '.join(unknown[:3])}")
            pp = self.evaluator.plan({g: plan.get(g, "int8") for g in known})
        ev = self.evaluator
        from .backends.onnxruntime import OrtEngine

        cand = OrtEngine(ev.build(pp), name="plan", threads=ev.threads, precision="mixed")
        data = ev.batches if split == "search" else self.eval_data.batches(batch_size=batch_size)
        return compare(ev.reference, [cand], data, task=ev.detected_task or ev.task, labels=ev.labels,
                       dataset_info=None if split == "search" else self.eval_data.describe())


def _config(config, options) -> CalibrationConfig:
    config = CalibrationConfig.of(config, **options)
    if config.plan is not None:
        raise CalibError("search chooses the precision plan itself: leave the calibration option plan unset")
    return config


def _detect_task(reference, batch, task: str) -> str:
    """The task of the model on the search split (as the harness will detect it)."""
    from .harness import detect_task
    from .harness.runner import primary_output

    if task != "auto":
        return task
    out = reference.run(batch.feed)
    names = list(reference.output_names)
    primary, _ = primary_output(out, names)
    meta = {p.key: p.value for p in reference.model.proto.metadata_props} if reference.model is not None else {}
    return detect_task(out[primary], meta, batch.labels)[0]


class Searcher:
    """The part of a search that is measured once, whatever the strategy: calibration, the search
    split and its FP32 outputs, the groups, the latency model, the evaluator and the sensitivities
    (steps 1 to 4 of the module docstring). :meth:`run` then searches with a strategy and
    :meth:`finish` builds and verifies a plan; the evaluator keeps every plan's measurement, so
    strategies run one after another share the evaluations of the plans they have in common
    (``benchmarks/search.py``). The arguments are :func:`search`'s."""

    def __init__(self, model, data=None, budget=None, config: CalibrationConfig | Mapping | None = None, *,
                 task: str = "auto", latency: str = "onnxruntime", latency_options: Mapping | None = None,
                 sensitivity: str = "direct", search_samples: int = DEFAULT_SEARCH_SAMPLES, progress: bool = True,
                 preprocess=None, classes=None, labels=None, text_labels=None, strict: bool = False, dataset=None,
                 **options):
        from .backends.onnxruntime import OrtEngine
        from .datasets import open_dataset
        from .pipeline import calibrate
        from .qdq import prepare
        from .tuning import groups as G
        from .tuning import search as S
        from .tuning import sensitivity as SENS
        from .tuning.budget import parse_budget
        from .tuning.evaluator import MemoEngine, PlanEvaluator, QdqBuilder

        t_start = time.perf_counter()
        if budget is None:
            raise BudgetError("no budget: pass budget='agreement>=0.995' (or another METRIC>=VALUE / METRIC<=VALUE)")
        self.budget = bud = parse_budget(budget, task)
        if sensitivity not in SENS.MODES:
            raise CalibError(f"unknown sensitivity {sensitivity!r} (choose from {', '.join(SENS.MODES)})")
        if not (isinstance(search_samples, int) and not isinstance(search_samples, bool) and search_samples >= 1):
            raise CalibError(f"search_samples must be a positive integer, got {search_samples!r}")
        self.config = cfg = _config(config, options)
        if data is None and dataset is None:
            raise CalibError("no data: pass the calibration data (a folder, HDF5/NumPy file, iterable of feeds) "
                             "or an opened dataset=")
        self.progress, self.latency_spec, self.text_labels = progress, latency, text_labels
        self.fp32 = m = load_model(model)
        ds = dataset if dataset is not None else open_dataset(
            data, m, preprocess, seed=cfg.seed, classes=classes, labels=labels, strict=strict)
        if len(ds) < 2:
            raise EmptyDatasetError("a search needs at least 2 samples: a calibration split to search on and an "
                                    "eval split to verify on")
        if bud.metric == "top1_drop" and not ds.has_labels:
            raise BudgetError(f"budget {bud} is against the labels, but the data has none: pass classes or labels")
        if bud.metric == "cer_increase" and text_labels is None:
            raise BudgetError(f"budget {bud} is against the labels: pass text_labels (a file<TAB>text TSV)")
        self.calib_data, eval_ds = calibration_splits(ds, cfg.samples, cfg.seed)
        if eval_ds is None or len(eval_ds) == 0:
            raise EmptyDatasetError("no samples fall in the eval split to verify the plan on; use more data")
        if cfg.eval_samples is not None and cfg.eval_samples < len(eval_ds):
            eval_ds = eval_ds.subset(limit=cfg.eval_samples, seed=cfg.seed)
        self.eval_data = eval_ds

        # 1. the search split, decoded once; the reference on it (the task is known before any work)
        search_ds = ds.split("calib")
        # the calibration samples' ranges fit them exactly (max) or nearly: plans score better on
        # them than on new data, so the search split avoids them where the split has enough others
        fitted = cfg.samples is not None and cfg.samples < len(search_ds)
        self.search_disjoint = fitted and len(search_ds) - cfg.samples >= min(search_samples, len(search_ds))
        if self.search_disjoint:
            search_ds = search_ds.rest(cfg.samples, cfg.seed)
        if search_samples < len(search_ds):
            search_ds = search_ds.subset(limit=search_samples, seed=cfg.seed)
        self.search_data = search_ds
        batches = list(search_ds.batches(batch_size=cfg.batch_size,
                                         progress="reading the search split" if progress else False))
        if not batches:
            raise EmptyDatasetError("no samples in the search split")
        reference = MemoEngine(OrtEngine(m, name="fp32", threads=cfg.threads))
        self.task = _detect_task(reference, batches[0], task)
        bud.check_task(self.task)

        # 2. calibration, once
        self.calibration = res = calibrate(m, dataset=ds, config=cfg.replace(evaluate=False), write=False,
                                           progress=progress)
        t_calib = time.perf_counter() - t_start

        # 3. groups and latency model
        shapes = {k: [1, *v.shape[1:]] for k, v in batches[0].feed.items()}
        self.groups = G.find_groups(m, shapes)
        self.quantizable = quant = sorted((g for g in self.groups if g.quantizable), key=lambda g: g.order)
        if not quant:
            raise CalibError(f"{m.name} has no group that can run in INT8: nothing to search")
        self.say(f"{len(self.groups)} groups, {len(quant)} quantizable; latency model {latency}")
        self.prepared = prepare(m)
        self.latency = lat = self._latency_model(latency, latency_options, batches[0].feed)
        shifts = getattr(res.qdq_model, "bias_shifts", None) or {}
        self.evaluator = PlanEvaluator(reference, self.groups,
                                       QdqBuilder(self.prepared, res.qdq_amax, cfg.target, res.smoothing, shifts),
                                       bud, batches, task=self.task, labels=text_labels, threads=cfg.threads,
                                       seed=cfg.seed, dataset_info=search_ds.describe())

        # 4. sensitivities
        t0 = time.perf_counter()
        self.sensitivity = sens = SENS.measure(m, self.groups, self.evaluator, res.qdq_model, mode=sensitivity,
                                               threads=cfg.threads, progress="sensitivity" if progress else False)
        if sens.spearman is not None:
            self.say(f"sensitivity: {sens.used} ({sens.direct_mode}); Spearman rho of proxy and direct rankings "
                     f"{sens.spearman:+.2f} over {len(quant)} groups")
        table = {g.id: {p: float(lat.group_latency(g, p)) for p in S.PRECISIONS} for g in quant}
        # where the latency model predicts FP16 faster than FP32, whether every group in FP16 meets
        # the budget: then the search reverts groups to FP16 rather than FP32 (calib.tuning.search.Ours)
        self.fp16_value = None
        if any(t["fp16"] < t["fp32"] for t in table.values()):
            self.fp16_value = self.evaluator({g.id: "fp16" for g in quant}).value
            self.say(f"every group in FP16: {bud.metric} {self.fp16_value:.4g} on the search split "
                     f"({'meets' if bud.holds(self.fp16_value) else 'misses'} {bud})")
        self.space = S.SearchSpace(groups=tuple(g.id for g in quant), ranking=sens.ranking, latency=table,
                                   macs={g.id: int(g.macs) for g in quant}, scores=sens.scores,
                                   predictor=lambda precisions: float(lat.predict(self.groups, precisions)),
                                   fp16_value=self.fp16_value)
        self.timing = {"calibration": round(t_calib, 3), "sensitivity": round(time.perf_counter() - t0, 3)}

    def _latency_model(self, spec: str, options, feed):
        """The latency model *spec* names; ``onnxruntime`` profiles this model's FP32 and its
        ``--target onnxruntime`` INT8 Q/DQ model (same ranges and smoothing) on one search sample."""
        from .qdq import quantize_model
        from .tuning import latency as L

        kw = dict(options or {})
        if str(spec).strip().lower() == "onnxruntime":
            kw.setdefault("int8_model", quantize_model(self.prepared, self.calibration.qdq_amax, target="onnxruntime",
                                                       smooth=self.calibration.smoothing or None))
            kw.setdefault("feed", {k: v[:1] for k, v in feed.items()})
            kw.setdefault("threads", self.config.threads)
        return L.latency_model(spec, self.fp32, self.groups, **kw)

    def say(self, line: str) -> None:
        """A line on stderr (with *progress*), without breaking a progress bar."""
        if self.progress:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)

    def run(self, algorithm: str = "ours", max_evals: int | None = None, margin: float = DEFAULT_MARGIN,
            **options):
        """Search with *algorithm* (at most *max_evals* full evaluations, default ``ceil(log2 G) + 3``);
        a progress bar and one line per evaluation with *progress*; *margin*: standard errors the
        search split's estimate must clear the budget by (:func:`calib.tuning.search.run`). Returns the
        :class:`calib.tuning.search.Outcome`. *options* go to the strategy (``ours``: ``order``, see
        :class:`calib.tuning.search.Ours`)."""
        from .tuning import search as S

        if algorithm not in S.ALGORITHMS:
            raise CalibError(f"unknown search algorithm {algorithm!r} (choose from {', '.join(S.ALGORITHMS)})")
        if max_evals is not None and not (isinstance(max_evals, int) and not isinstance(max_evals, bool)
                                          and max_evals >= 1):
            raise CalibError(f"max_evals must be a positive integer, got {max_evals!r}")
        if not (isinstance(margin, (int, float)) and not isinstance(margin, bool) and math.isfinite(margin)
                and margin >= 0):
            raise CalibError(f"margin must be a number of standard errors >= 0, got {margin!r}")
        limit = max_evals if max_evals is not None else S.default_max_evals(len(self.quantizable))
        strategy = S.make_strategy(algorithm, self.space, limit, self.budget, **options)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=limit, desc=f"search ({algorithm})", unit="eval", leave=False, file=sys.stderr)

        def on_eval(e) -> None:
            if bar is not None:
                bar.update(1)
            self.say(evaluation_line(e, self.budget, limit))

        t0 = time.perf_counter()
        outcome = S.run(strategy, self.evaluator, self.budget, margin=margin, on_eval=on_eval)
        if bar is not None:
            bar.close()
        self.timing["search"] = round(time.perf_counter() - t0, 3)
        return outcome

    def finish(self, outcome) -> tuple[Any, Model, dict]:
        """``(plan, Q/DQ model, verification)`` of the outcome's chosen plan: the model bias-corrected
        afresh for the plan, then it and all-INT8 scored against FP32 on the eval split."""
        cfg, bud, res = self.config, self.budget, self.calibration
        gsum = _group_summary(self.quantizable, outcome.chosen)
        comment = (f"calib search ({outcome.algorithm}) for budget {bud} ({bud.against}): {gsum}; "
                   f"{outcome.int8_mac_share:.1%} of MACs in INT8; predicted "
                   f"{outcome.predicted_latency_s * 1e3:.3g} ms per sample by the {self.latency.name} latency "
                   f"model; groups and evaluations in search.json")
        plan = self.evaluator.plan(outcome.chosen, comment=comment)
        t0 = time.perf_counter()
        mixed = build_qdq(self.prepared, res.qdq_amax, target=cfg.target, plan=plan, factors=res.smoothing,
                          probe_ds=bias_probe_samples(self.calib_data, cfg.seed) if cfg.bias_correction else None,
                          threads=cfg.threads, progress=self.progress, label="bias correction (chosen plan)")
        verification = _verify(self.fp32, mixed, res.qdq_model, self.eval_data, bud, self.task, self.text_labels,
                               cfg, self.progress)
        self.timing["final_and_verification"] = round(time.perf_counter() - t0, 3)
        return plan, mixed, verification

    def summary(self, outcome, plan, verification, paths: Mapping[str, Path] = ()) -> dict:
        """The ``search.json`` dict of a finished search."""
        m, res, cfg, bud, space = self.fp32, self.calibration, self.config, self.budget, self.space
        s = {
            "schema": SCHEMA, "version": VERSION, "calib_version": __version__,
            "model": str(m.path) if m.path else m.name, "model_sha256": m.sha256,
            "task": self.task, "budget": bud.to_dict(), "algorithm": outcome.algorithm,
            "max_evals": outcome.max_evals,
            "search_split": {"samples": self.evaluator.samples, "data": self.search_data.describe(),
                             "ids": self.search_data.ids,
                             "disjoint_from_calibration_samples": bool(self.search_disjoint)},
            "calibration": {"algorithm": res.summary["algorithm"], "samples": res.summary["calibration_samples"],
                            "target": cfg.target, "smoothing": res.summary.get("smoothing"),
                            "bias_correction": ("shifts measured once on the all-INT8 model and reused for the "
                                                "layers still INT8 in each evaluated plan; measured afresh for the "
                                                "chosen plan" if cfg.bias_correction else None)},
            "groups": [_group_entry(g, outcome.chosen) for g in sorted(self.groups, key=lambda g: g.order)],
            "latency_model": {"spec": self.latency_spec, "name": self.latency.name,
                              "description": self.latency.description, "all_int8_s": space.predict(space.plan()),
                              "all_fp32_s": space.predict(space.plan(fp32=space.groups))},
            "sensitivity": self.sensitivity.to_dict(),
            "all_fp16": (None if self.fp16_value is None else
                         {"value": _f(self.fp16_value), "holds": bool(bud.holds(self.fp16_value))}),
            "search": outcome.to_dict(),
            "verification": verification,
            "plan": plan.to_dict(),
            "timing_s": dict(self.timing),
            "outputs": {k: str(v) for k, v in dict(paths).items()},
        }
        s["lines"] = _summary_lines(s, outcome, bud)
        return s


def search(model, data=None, budget=None, config: CalibrationConfig | Mapping | None = None, *, task: str = "auto",
           latency: str = "onnxruntime", latency_options: Mapping | None = None, algorithm: str = "ours",
           sensitivity: str = "direct", search_samples: int = DEFAULT_SEARCH_SAMPLES, max_evals: int | None = None,
           margin: float = DEFAULT_MARGIN, revert: str | None = None, out=None, force: bool = False,
           progress: bool = True, preprocess=None, classes=None, labels=None, text_labels=None, strict: bool = False,
           dataset=None, **options) -> SearchResult:
    """Find the plan with the lowest predicted latency that meets *budget* (see the module docstring).

    *model*: an FP32 ONNX model (path or :class:`calib.model.Model`); *data* and *preprocess*,
    *classes*, *labels*, *strict* as :func:`calib.calibrate` takes them (or an opened *dataset*);
    *text_labels*: ``file<TAB>text`` TSV for CTC models' labels (``cer_increase``).
    *budget*: ``"agreement>=0.995"`` and the like (:func:`calib.tuning.budget.parse_budget`);
    *task*: ``auto`` or a harness task; *latency*: the latency model's spec (``onnxruntime``,
    ``roofline:<gpu>``, ``tensorrt``) and *latency_options* (``tensorrt`` needs ``engines``, see
    :func:`calib.tuning.latency.latency_model`); *algorithm*: ``ours``, ``bisect-prefix``,
    ``bisect-suffix`` or ``greedy``; *sensitivity*: ``direct`` (both measures, the direct one used),
    ``direct-all-but`` or ``proxy`` (the proxy only); *search_samples*: calibration samples the
    plans are scored on; *max_evals*: full evaluations allowed (default ``ceil(log2 G) + 3``);
    *margin*: how many standard errors a plan's estimate on the search split must clear the budget
    by to count as meeting it (default 0: the estimate itself; 1 buys about 84% one-sided
    confidence on the search split, against the selection bias of a search, at the price of
    keeping more groups in float); *revert*: the float precision groups taken out of INT8 go to
    (``ours`` and ``greedy``): ``auto`` (``ours``'s default: FP16 where the latency model predicts
    it faster than FP32 and every group in FP16 meets the budget on the search split, else FP32),
    ``fastest`` (FP16 where predicted faster, unchecked) or ``fp32`` (``greedy``'s default, NNCF's
    scheme; for targets built without FP16).
    *config* / *options*: calibration options (:class:`calib.CalibrationConfig`; the calibration
    algorithm goes in *config*, ``algorithm`` here is the search's); its ``eval_samples`` bounds
    the verification. Nothing is written without *out*; existing files
    there are refused unless *force*; *progress* shows progress bars and one line per evaluation
    on stderr.
    """
    from .tuning.search import ALGORITHMS, check_revert

    t_start = time.perf_counter()
    if algorithm not in ALGORITHMS:       # before any work
        raise CalibError(f"unknown search algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")
    strategy_options = {}
    if revert is not None:
        check_revert(revert)
        if algorithm.startswith("bisect"):
            raise CalibError(f"{algorithm} keeps its prefix or suffix in FP32 (Polygraphy's scheme); revert "
                             f"applies to ours and greedy")
        strategy_options["revert"] = revert
    m = load_model(model)
    paths = output_paths(out, m.name) if out is not None else {}
    check_outputs(paths.values(), force, option="force")     # before any work
    searcher = Searcher(m, data, budget, config, task=task, latency=latency, latency_options=latency_options,
                        sensitivity=sensitivity,
                        search_samples=search_samples, progress=progress, preprocess=preprocess, classes=classes,
                        labels=labels, text_labels=text_labels, strict=strict, dataset=dataset, **options)
    outcome = searcher.run(algorithm, max_evals, margin, **strategy_options)
    plan, mixed, verification = searcher.finish(outcome)
    searcher.timing["total"] = round(time.perf_counter() - t_start, 3)
    summary = searcher.summary(outcome, plan, verification, paths)
    if paths:
        from .tuning.report import plot_search

        res = searcher.calibration
        files = [(paths["plan"], plan.dumps().encode("utf-8")),
                 (paths["qdq"], mixed.serialize()),
                 (paths["cache"], res.cache_files["cache"]),
                 (paths["sidecar"], res.cache_files["sidecar"]),
                 (paths["search"], (json.dumps(json_safe(summary), indent=2, sort_keys=True, allow_nan=False)
                                    + "\n").encode("utf-8")),
                 (paths["plot"], plot_search(summary))]
        atomic_write_all(files, overwrite=force, option="force")   # one set, all or nothing
    return SearchResult(plan=plan, precisions=dict(outcome.chosen), model=mixed, outcome=outcome,
                        sensitivity=searcher.sensitivity, groups=searcher.groups, latency=summary["latency_model"],
                        verification=verification, summary=summary, paths=paths, calibration=searcher.calibration,
                        evaluator=searcher.evaluator, eval_data=searcher.eval_data, space=searcher.space)


def evaluation_line(e, budget, limit: int) -> str:
    """One line per evaluation: what was tried, the metric with its interval, and the plan's cost."""
    c = e.counts()
    lo, hi = e.interval
    mix = f"{c['int8']} INT8" + (f", {c['fp16']} FP16" if c["fp16"] else "") + (f", {c['fp32']} FP32" if c["fp32"]
                                                                                else "")
    return (f"eval {e.index + 1}/{limit} [{e.phase}] {e.label}: {budget.metric} {budget.format_value(e.metric)} "
            f"[{budget.format_value(lo)}, {budget.format_value(hi)}] {'meets' if e.holds else 'misses'} "
            f"{budget}; {mix} ({e.int8_mac_share:.0%} of MACs INT8); predicted {e.predicted_latency_s * 1e3:.3g} ms")


def _group_summary(quant, precisions) -> str:
    n = {p: sum(1 for g in quant if precisions.get(g.id) == p) for p in ("int8", "fp16", "fp32")}
    return f"{n['int8']} of {len(quant)} groups INT8, {n['fp16']} FP16, {n['fp32']} FP32"


def _group_entry(g, precisions) -> dict:
    return dict(g.to_dict(), precision=precisions.get(g.id) if g.quantizable else "fp32")


def _verify(m: Model, mixed: Model, int8: Model, eval_ds, bud, task: str, text_labels, cfg, progress) -> dict:
    """The chosen plan and all-INT8 against FP32 on the eval split, in one pass."""
    from .backends.onnxruntime import OrtEngine
    from .harness import compare

    ref = OrtEngine(m, name="fp32", threads=cfg.threads)
    cands = [OrtEngine(mixed, name="mixed", threads=cfg.threads, precision="mixed"),
             OrtEngine(int8, name="all-int8", threads=cfg.threads, precision="int8")]
    rep = compare(ref, cands, eval_ds.batches(batch_size=cfg.batch_size,
                                              progress="verifying on the eval split" if progress else False),
                  task=task, labels=text_labels, seed=cfg.seed)
    out = {"samples": rep.samples, "data": eval_ds.describe(), "task": rep.task}
    for name in ("mixed", "all-int8"):
        meas = bud.measure(rep.metrics[name])
        res = rep.metric(bud.harness_metric, name)
        out[name] = {"measurement": meas.to_dict(), "holds": bud.holds(meas.value), "judgement": bud.judge(meas),
                     "verdict": res.verdict, "summary_line": rep.summary_line(name) if _takes_name(rep) else None,
                     "metrics": [r.to_dict() for r in rep.metrics[name]]}
    out["line"] = rep.summary_line()
    return out


def _takes_name(rep) -> bool:
    import inspect

    return "candidate" in inspect.signature(rep.summary_line).parameters


def _summary_lines(s: Mapping[str, Any], outcome, bud) -> list[str]:
    sens = s["sensitivity"]
    lm = s["latency_model"]
    quant = [g for g in s["groups"] if g["quantizable"]]
    lines = [(f"search ({s['algorithm']}) for {bud} on {s['search_split']['samples']} search samples: "
              f"{len(outcome.evaluations)} of at most {s['max_evals']} evaluations; {len(quant)} quantizable groups "
              f"of {len(s['groups'])}")]
    rho = sens.get("spearman")
    lines.append(f"sensitivity: {sens['used']}" + (f" ({sens['direct_mode']})" if sens.get("direct_mode") else "")
                 + (f"; Spearman rho of proxy and direct {rho:+.2f}" if rho is not None else ""))
    ch = s["search"]["chosen"]
    counts = {p: sum(1 for g in quant if g["precision"] == p) for p in ("int8", "fp16", "fp32")}
    src = (f"evaluation {ch['evaluation'] + 1}" if ch["evaluation"] is not None else "no evaluated plan met the "
           "budget: all FP32")
    lines.append(f"chosen ({src}): {counts['int8']} groups INT8, {counts['fp16']} FP16, {counts['fp32']} FP32; "
                 f"{ch['int8_mac_share']:.1%} of MACs in INT8; predicted {ch['predicted_latency_s'] * 1e3:.3g} ms "
                 f"per sample (all INT8 {lm['all_int8_s'] * 1e3:.3g} ms, all FP32 {lm['all_fp32_s'] * 1e3:.3g} ms; "
                 f"{lm['description']})")
    lines.extend(s["search"]["notes"])
    v = s["verification"]
    mx, ai = v["mixed"], v["all-int8"]

    def fm(d):
        m = d["measurement"]
        return (f"{bud.format_value(_f(m['value']))} [{bud.format_value(_f(m['low']))}, "
                f"{bud.format_value(_f(m['high']))}]")
    word = {"meets": "meets the budget (the whole interval)", "uncertain": "the interval straddles the budget",
            "fails": "misses the budget (the whole interval)"}
    lines.append(f"held-out ({v['samples']} eval samples): {bud.metric} {fm(mx)}: {word[mx['judgement']]}; "
                 f"all INT8 {fm(ai)}")
    for p in s.get("outputs", {}).values():
        lines.append(f"wrote {p}")
    return lines


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


__all__ = ["search", "Searcher", "SearchResult", "DEFAULT_SEARCH_SAMPLES", "output_paths", "evaluation_line"]
