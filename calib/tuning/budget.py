"""Accuracy budgets: the constraint of the mixed-precision search, as ``metric OP value``.

=================  ==  ==============  ==========================  ======================================
budget metric      op  against         harness metric              value
=================  ==  ==============  ==========================  ======================================
``top1_drop``      <=  labels          ``top1`` (difference)       FP32 top-1 minus candidate top-1, in
                                                                   percentage points (``0.5`` = 0.5 pt)
``agreement``      >=  fp32            ``top1_agreement``          fraction of samples whose top-1 class
                                                                   is FP32's (``0.995`` or ``99.5%``)
``cosine``         >=  fp32            ``cosine``                  mean cosine similarity of the outputs
``sqnr``           >=  fp32            ``sqnr``                    output SQNR in dB
``ctc_agreement``  >=  fp32            ``ctc_agreement``           fraction of lines decoded as FP32 does
``cer_increase``   <=  labels          ``cer`` (difference)        candidate CER minus FP32 CER against
                                                                   the labels, in percentage points
=================  ==  ==============  ==========================  ======================================

Which metrics a task allows is :data:`TASK_METRICS`; :func:`parse_budget` refuses the others,
an unknown metric, a malformed expression and an operator in the wrong direction
(``agreement<=0.9``) with a :class:`calib.errors.BudgetError` naming the valid metrics.

Every budget is met by FP32 itself (an FP32 candidate agrees with FP32 and loses nothing against
the labels), which the search relies on: reverting every group always meets it. Hence the
values are bounded: agreements and cosines at most 1, drops and increases at least 0.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BudgetError

OPERATORS = ("<=", ">=")
Z95 = 1.959964    # the 95% interval's half-width in standard errors (normal approximation)


@dataclass(frozen=True)
class BudgetMetric:
    """What a budget metric means: the operator that makes sense for it, what it is measured
    against, the harness metric it is read from and how (``candidate``: the candidate's value;
    ``drop``: reference minus candidate; ``increase``: candidate minus reference; both in
    percentage points of a fraction)."""

    name: str
    op: str
    against: str
    harness: str
    read: str
    tasks: tuple[str, ...]
    unit: str
    lowest: float
    highest: float
    description: str

    @property
    def percent(self) -> bool:
        """Whether ``99.5%`` may be written for the value (a fraction)."""
        return self.read == "candidate" and self.highest == 1.0 and self.lowest == 0.0


METRICS: dict[str, BudgetMetric] = {m.name: m for m in (
    BudgetMetric("top1_drop", "<=", "labels", "top1", "drop", ("classification",), "pt", 0.0, 100.0,
                 "FP32 top-1 accuracy minus the candidate's, in percentage points"),
    BudgetMetric("agreement", ">=", "fp32", "top1_agreement", "candidate", ("classification",), "", 0.0, 1.0,
                 "fraction of samples whose top-1 class is FP32's"),
    BudgetMetric("cosine", ">=", "fp32", "cosine", "candidate", ("classification", "embedding", "tensor"), "",
                 -1.0, 1.0, "mean cosine similarity of the output to FP32's"),
    BudgetMetric("sqnr", ">=", "fp32", "sqnr", "candidate", ("classification", "embedding", "dense", "ctc", "tensor"),
                 "dB", -math.inf, math.inf, "output signal-to-quantization-noise ratio against FP32, in dB"),
    BudgetMetric("ctc_agreement", ">=", "fp32", "ctc_agreement", "candidate", ("ctc",), "", 0.0, 1.0,
                 "fraction of lines whose greedy CTC decoding is FP32's"),
    BudgetMetric("cer_increase", "<=", "labels", "cer", "increase", ("ctc",), "pt", 0.0, 100.0,
                 "candidate character error rate minus FP32's against the labels, in percentage points"),
)}

TASK_METRICS: dict[str, tuple[str, ...]] = {
    task: tuple(m.name for m in METRICS.values() if task in m.tasks)
    for task in ("classification", "embedding", "dense", "ctc", "tensor")}

_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=[<>]|[<>=!]=?)\s*(\S.*?)\s*$")
_SUFFIX = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(%|pt|db|dB)?$")


@dataclass(frozen=True)
class Measurement:
    """A budget metric measured on some samples: the estimate and its 95% interval."""

    value: float
    low: float
    high: float
    samples: int

    def to_dict(self) -> dict:
        return {"value": _json_float(self.value), "low": _json_float(self.low), "high": _json_float(self.high),
                "samples": self.samples}


def _json_float(x: float):
    return x if math.isfinite(x) else str(x)


@dataclass(frozen=True)
class Budget:
    """``metric op value``, measured against ``against`` (``fp32`` or ``labels``)."""

    metric: str
    op: str
    value: float
    against: str

    @property
    def spec(self) -> BudgetMetric:
        return METRICS[self.metric]

    @property
    def harness_metric(self) -> str:
        """The :mod:`calib.harness` metric the value is read from."""
        return self.spec.harness

    @property
    def needs_labels(self) -> bool:
        return self.against == "labels"

    @property
    def higher_is_better(self) -> bool:
        return self.op == ">="

    def holds(self, value: float) -> bool:
        """Whether *value* meets the budget (NaN never does)."""
        if value is None or math.isnan(value):
            return False
        return value >= self.value if self.op == ">=" else value <= self.value

    def holds_with(self, m: Measurement, margin: float = 0.0) -> bool:
        """Whether *m* meets the budget *margin* standard errors inside it: the estimate moved
        towards the bad side by ``margin x SE``, the standard error read off the 95% interval
        (``(high - low) / 3.92``; 0 where the interval is not finite, as an exact candidate's
        SQNR). ``margin=0`` is :meth:`holds` on the estimate."""
        se = (m.high - m.low) / (2 * Z95) if math.isfinite(m.high - m.low) else 0.0
        shift = max(margin, 0.0) * max(se, 0.0)
        return self.holds(m.value - shift if self.op == ">=" else m.value + shift)

    def margin(self, value: float) -> float:
        """How far *value* is on the good side of the budget (negative: violated)."""
        return (value - self.value) if self.op == ">=" else (self.value - value)

    def loss(self, value: float, ideal: float) -> float:
        """How much worse than *ideal* *value* is, in the metric's unit (>= 0 when worse)."""
        return (ideal - value) if self.op == ">=" else (value - ideal)

    @property
    def ideal(self) -> float:
        """The value of a candidate identical to FP32 (sqnr: +inf)."""
        return {"top1_drop": 0.0, "cer_increase": 0.0, "sqnr": math.inf}.get(self.metric, 1.0)

    def check_task(self, task: str) -> None:
        """Raise :class:`BudgetError` unless the budget's metric is valid for *task*."""
        if task not in self.spec.tasks:
            raise BudgetError(f"budget metric {self.metric} does not apply to this {task} model; valid metrics for "
                              f"{task}: {', '.join(TASK_METRICS.get(task, ())) or 'none'}")

    def judge(self, m: Measurement) -> str:
        """``meets`` (the whole interval is on the good side), ``fails`` (the whole interval is on the
        bad side), else ``uncertain`` (the interval straddles the budget; the estimate decides
        :meth:`holds`)."""
        lo_ok, hi_ok = self.holds(m.low), self.holds(m.high)
        if lo_ok and hi_ok:
            return "meets"
        if not lo_ok and not hi_ok:
            return "fails"
        return "uncertain"

    def measure(self, results: Mapping[str, Any] | list) -> Measurement:
        """The budget metric from one candidate's harness results (``report.metrics[name]``: a list
        of :class:`calib.harness.MetricResult`, or their dicts)."""
        items = results.values() if isinstance(results, Mapping) else results
        by_name = {}
        for r in items:
            d = r.to_dict() if hasattr(r, "to_dict") else r
            by_name[d["name"]] = d
        r = by_name.get(self.harness_metric)
        if r is None:
            raise BudgetError(f"the evaluation did not compute {self.harness_metric} (budget {self})")
        read = self.spec.read
        if read == "candidate":
            iv = r.get("candidate")
            if iv is None:
                raise BudgetError(f"the evaluation gave no value of {self.harness_metric} (budget {self})")
            return Measurement(_num(iv["estimate"]), _num(iv["low"]), _num(iv["high"]), int(r["samples"]))
        d = r.get("difference")
        if d is None:
            raise BudgetError(f"budget {self} needs labels: the evaluation gave no {self.harness_metric} difference")
        est, lo, hi = (100.0 * _num(d[k]) for k in ("estimate", "low", "high"))
        if read == "drop":
            est, lo, hi = -est, -hi, -lo
        return Measurement(est, lo, hi, int(r["samples"]))

    def format_value(self, v: float) -> str:
        if v is None or math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        unit = self.spec.unit
        if unit == "pt":
            return f"{v:.2f} pt"
        if unit == "dB":
            return f"{v:.1f} dB"
        return f"{v:.4f}"

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def to_dict(self) -> dict:
        return {"expression": str(self), "metric": self.metric, "op": self.op, "value": self.value,
                "against": self.against, "harness_metric": self.harness_metric,
                "description": self.spec.description}


def _num(v) -> float:
    try:
        return float(v)       # "inf" (an exact candidate's SQNR in JSON) parses
    except (TypeError, ValueError):
        return math.nan


def valid_metrics(task: str | None = None) -> tuple[str, ...]:
    """The budget metrics valid for *task* (None or ``auto``: all)."""
    if task in (None, "auto"):
        return tuple(METRICS)
    return TASK_METRICS.get(task, ())


def parse_budget(text: str | Budget, task: str | None = None) -> Budget:
    """``"agreement>=0.995"`` -> :class:`Budget`; *task* (None or ``auto``: not known yet) restricts
    the metrics. Raises :class:`calib.errors.BudgetError` with a one-line message naming the valid
    metrics for the task, for an unknown metric, a malformed expression, a wrong operator direction
    or a value out of the metric's range."""
    if isinstance(text, Budget):
        if task not in (None, "auto"):
            text.check_task(task)
        return text
    if task not in (None, "auto") and task not in TASK_METRICS:
        raise BudgetError(f"unknown task {task!r} (choose from auto, {', '.join(TASK_METRICS)})")
    valid = valid_metrics(task)
    where = f" for {task}" if task not in (None, "auto") else ""
    hint = f"valid metrics{where}: {', '.join(valid) or 'none'}"
    example = ", ".join(f"{m}{METRICS[m].op}..." for m in valid[:3])
    if not isinstance(text, str) or not text.strip():
        raise BudgetError(f"empty budget: write METRIC>=VALUE or METRIC<=VALUE ({hint})")
    match = _EXPR.match(text)
    if not match:
        raise BudgetError(f"cannot parse budget {text!r}: write METRIC>=VALUE or METRIC<=VALUE, e.g. {example} "
                          f"({hint})")
    name, op, raw = match.group(1).lower(), match.group(2), match.group(3)
    spec = METRICS.get(name)
    if spec is None:
        raise BudgetError(f"unknown budget metric {name!r} in {text!r}; {hint}")
    if name not in valid:
        raise BudgetError(f"budget metric {name} does not apply to a {task} task ({spec.description}); {hint}")
    op = {"=>": ">=", "=<": "<="}.get(op, op)
    if op not in OPERATORS:
        raise BudgetError(f"budget {text!r}: operator {op!r} is not allowed; {name} takes {spec.op} "
                          f"(write {name}{spec.op}{raw})")
    if op != spec.op:
        better = "higher" if spec.op == ">=" else "lower"
        raise BudgetError(f"budget {text!r} points the wrong way: {better} {name} is better, so the budget is a "
                          f"{'floor' if spec.op == '>=' else 'ceiling'}: write {name}{spec.op}{raw}")
    value = _parse_value(raw, spec, text)
    return Budget(metric=name, op=op, value=value, against=spec.against)


def _parse_value(raw: str, spec: BudgetMetric, text: str) -> float:
    m = _SUFFIX.match(raw.strip())
    if not m:
        raise BudgetError(f"budget {text!r}: {raw!r} is not a number")
    value, suffix = float(m.group(1)), (m.group(2) or "").lower()
    if suffix == "%":
        if spec.percent:
            value /= 100.0
        elif spec.unit != "pt":
            raise BudgetError(f"budget {text!r}: {spec.name} is not a percentage")
    elif suffix == "pt" and spec.unit != "pt":
        raise BudgetError(f"budget {text!r}: {spec.name} is not in percentage points")
    elif suffix == "db" and spec.unit != "dB":
        raise BudgetError(f"budget {text!r}: {spec.name} is not in dB")
    if not math.isfinite(value):
        raise BudgetError(f"budget {text!r}: the value must be finite")
    if not spec.lowest <= value <= spec.highest:
        what = {"pt": f"in percentage points, from {spec.lowest:g} to {spec.highest:g} (FP32 itself scores 0)",
                "": f"from {spec.lowest:g} to {spec.highest:g}" + (" (0.995 or 99.5%)" if spec.percent else "")}
        raise BudgetError(f"budget {text!r}: {spec.name} is {what.get(spec.unit, 'a number')}, got {value:g}")
    return value


__all__ = ["Budget", "BudgetMetric", "Measurement", "METRICS", "TASK_METRICS", "OPERATORS", "parse_budget",
           "valid_metrics"]
