"""The evaluator of the search: a plan -> its Q/DQ model -> the budget metric on the search split.

:class:`PlanEvaluator` implements :class:`calib.tuning.search.Evaluator`. A plan (group id ->
precision) becomes a :class:`calib.plan.PrecisionPlan` (:func:`calib.tuning.groups.group_plan`),
then a Q/DQ model (:class:`QdqBuilder`, from ranges, smoothing factors and bias shifts the
pipeline measured once), which runs against the FP32 reference through
:func:`calib.harness.compare` on the search split; the budget metric is read from the report
(:meth:`calib.tuning.budget.Budget.measure`), with the output SQNR beside it (it orders plans
the budget metric cannot tell apart).

- The search split is decoded once and held in memory (tens of samples), and the FP32
  reference's outputs on it are computed once and reused by every pass.
- :meth:`PlanEvaluator.many` scores several plans in one pass over the data, ``per_pass`` models
  at a time (each holds an ONNX Runtime session), so memory stays bounded.
- The same plan is measured once: results are kept by plan.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import Engine, EngineInfo
from ..model import Model
from .budget import Budget, Measurement

DEFAULT_PER_PASS = 4          # Q/DQ models scored in one pass over the search split
DEFAULT_RESAMPLES = 1000      # bootstrap resamples of the search split's intervals


@dataclass
class QdqBuilder:
    """``plan -> Q/DQ model``: :func:`calib.qdq.quantize_model` on the prepared model with fixed
    ranges (*amax*, the Q/DQ model's: smoothed tensors' ranges are those of their smoothed
    values), smoothing *factors* and measured *bias_shift* (node key -> per-channel shift; only
    nodes still INT8 in a plan take theirs)."""

    prepared: Model
    amax: Mapping[str, float]
    target: str = "tensorrt"
    factors: Mapping[str, Any] | None = None
    bias_shift: Mapping[str, Any] | None = None

    def __call__(self, plan) -> Model:
        from ..qdq import quantize_model

        return quantize_model(self.prepared, self.amax, target=self.target, plan=plan, smooth=self.factors or None,
                              bias_shift=self.bias_shift or None)


def _digest(feed: Mapping[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(feed):
        a = np.ascontiguousarray(feed[k])
        h.update(k.encode())
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.data)
    return h.hexdigest()


class MemoEngine(Engine):
    """An engine whose outputs are remembered per feed (by content), for a reference run over
    the same small split many times. Exposes the wrapped engine's ``model`` (the harness reads
    model metadata, such as a CTC model's characters, from it)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.info = EngineInfo(engine.info.name, engine.info.backend, engine.info.precision)
        self.model = getattr(engine, "model", None)
        self.memo: dict[str, dict[str, np.ndarray]] = {}

    @property
    def inputs(self):
        return self.engine.inputs

    @property
    def output_names(self):
        return self.engine.output_names

    def run(self, feed):
        key = _digest(feed)
        if key not in self.memo:
            self.memo[key] = {k: np.array(v, copy=True) for k, v in self.engine.run(feed).items()}
        return self.memo[key]


@dataclass(frozen=True)
class PlanResult:
    """One plan's measurement on the search split, with its output SQNR (dB)."""

    measurement: Measurement
    sqnr_db: float


def _frozen(precisions: Mapping[str, str]) -> tuple:
    return tuple(sorted(precisions.items()))


@dataclass
class PlanEvaluator:
    """Scores plans on *batches* (the search split, already decoded) against *reference*.

    *groups*: the model's :class:`calib.tuning.groups.QuantGroup` list; *build*: plan -> Q/DQ
    model (a :class:`QdqBuilder`); *budget*: what is measured; *task*, *labels* (a mapping from
    sample id to label, or a ``file<TAB>text`` TSV path for CTC) as :func:`calib.harness.compare`
    takes them; *threads*: ONNX Runtime threads of the candidates.
    """

    reference: Engine
    groups: Sequence[Any]
    build: Any
    budget: Budget
    batches: list
    task: str = "auto"
    labels: Any = None
    threads: int | None = None
    per_pass: int = DEFAULT_PER_PASS
    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    dataset_info: dict | None = None
    results: dict = field(default_factory=dict, repr=False)
    models_run: int = 0
    detected_task: str | None = None

    def __post_init__(self):
        if not isinstance(self.reference, MemoEngine):
            self.reference = MemoEngine(self.reference)
        if self.per_pass < 1:
            raise ValueError("per_pass must be at least 1")

    @property
    def samples(self) -> int:
        return sum(len(b.ids) for b in self.batches)

    def plan(self, precisions: Mapping[str, str], comment: str | None = None):
        """The :class:`calib.plan.PrecisionPlan` of *precisions* (group id -> precision)."""
        from .groups import group_plan

        return group_plan(self.groups, precisions, comment=comment)

    def model(self, precisions: Mapping[str, str]) -> Model:
        """The Q/DQ model of *precisions*."""
        return self.build(self.plan(precisions))

    def metrics(self) -> list[str]:
        return list(dict.fromkeys([self.budget.harness_metric, "sqnr"]))

    def __call__(self, precisions: Mapping[str, str]) -> Measurement:
        return self.measure([precisions])[0].measurement

    def many(self, plans: Sequence[Mapping[str, str]]) -> list[Measurement]:
        return [r.measurement for r in self.measure(plans)]

    def measure(self, plans: Sequence[Mapping[str, str]], progress: bool | str = False) -> list[PlanResult]:
        """Each plan's :class:`PlanResult`; plans not measured before run ``per_pass`` at a time,
        each group of them in one pass over the search split."""
        from ..backends.onnxruntime import OrtEngine

        todo = list(dict.fromkeys(_frozen(p) for p in plans if _frozen(p) not in self.results))
        bar = None
        if progress and len(todo) > 1:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=progress if isinstance(progress, str) else "plans", unit="plan",
                       leave=False)
        for i in range(0, len(todo), self.per_pass):
            chunk = todo[i:i + self.per_pass]
            engines = [OrtEngine(self.build(self.plan(dict(p))), name=f"plan{j}", threads=self.threads,
                                 precision="mixed") for j, p in enumerate(chunk)]
            report = self._compare(engines)
            for p, e in zip(chunk, engines):
                results = report.metrics[e.info.name]
                self.results[p] = PlanResult(self.budget.measure(results), _sqnr(results))
            self.models_run += len(chunk)
            del engines, report
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return [self.results[_frozen(p)] for p in plans]

    def _compare(self, engines, **kw):
        from ..harness import compare

        report = compare(self.reference, engines, self.batches, task=self.task, metrics=self.metrics(),
                         labels=self.labels, resamples=self.resamples, seed=self.seed,
                         dataset_info=self.dataset_info, **kw)
        self.detected_task = report.task
        return report


def _sqnr(results) -> float:
    for r in results:
        if r.name == "sqnr" and r.candidate is not None:
            try:
                return float(r.candidate["estimate"])
            except (TypeError, ValueError):
                return float("nan")
    return float("nan")


__all__ = ["QdqBuilder", "MemoEngine", "PlanEvaluator", "PlanResult", "DEFAULT_PER_PASS"]
