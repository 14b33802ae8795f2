"""The mixed-precision search loop, our strategy and the two baseline schemes.

The loop (:func:`run`) is the same for every strategy and knows nothing of models: a strategy
proposes a plan (group id -> ``int8`` / ``fp16`` / ``fp32``), an :class:`Evaluator` measures the
budget metric of that plan on the search split, the loop records the evaluation and tells the
strategy whether the budget held (``step(success)``, the marker idea of Polygraphy's ``debug``
tools), until the strategy has nothing more to propose or ``max_evals`` evaluations were spent.
The plan chosen is the evaluated plan that met the budget with the lowest predicted latency; if
none did, every group in FP32, which meets any budget by construction (the budget is relative to
FP32) and is reported as such. Keeping the evaluator apart from the loop is NNCF's split of
accuracy control (the loop never builds or runs a model).

Strategies (:data:`ALGORITHMS`):

``ours`` (:class:`Ours`), in four phases, over the ``G`` quantizable groups ranked by
sensitivity (:attr:`SearchSpace.ranking`, most sensitive first):

1. all groups INT8; if that meets the budget, stop.
2. bisection on ``k``, how many of the most sensitive groups to revert to float: ``k = 0`` fails
   (phase 1) and ``k = G`` meets the budget when every group is in FP32 (by construction). A
   group reverts to FP32, or, when every group in FP16 was measured to meet the budget
   (:attr:`SearchSpace.fp16_value`), to whichever of FP16 and FP32 the latency model predicts
   faster (FP16 on GPUs): TensorRT runs a layer left out of INT8 in FP16 when FP16 is enabled,
   and FP16 costs about a third of FP32 there. ``k = G`` in FP16 is then evaluated if the
   bisection reaches it; if it misses, the bisection starts again reverting to FP32. The first
   probe is where the sensitivities predict the budget starts to hold (:func:`predict_k`: the
   budget metric's loss taken as proportional to the summed scores of the groups left in INT8,
   scaled by all-INT8's measured loss, FP16's own loss taken off what the budget allows), and its
   neighbour next (``k - 1`` after a success, ``k + 1`` after a failure), so a right prediction
   ends the bisection after two evaluations; then plain halving of what is left: at most
   ``ceil(log2 G) + 2`` evaluations, two more than plain halving (its probes, without scores),
   only when the prediction is off. When meeting the budget is monotone in ``k`` it ends at the
   smallest ``k`` that meets it (the loop keeps the best plan seen either way).
3. FP16 instead of FP32 for the reverted groups that the latency model predicts faster in FP16
   (skipped, costing nothing, when none is, or when they are in FP16 already): one evaluation,
   kept if the budget holds.
4. re-quantize reverted groups one at a time, the largest predicted latency gain first, keeping
   each that still meets the budget, while evaluations remain. A plan predicted to fail is skipped
   without an evaluation: one whose every group is in the same or a less accurate precision
   (INT8 < FP16 < FP32) than in a plan that failed.

By default ``max_evals = ceil(log2 G) + 3``: one for phase 1, ``ceil(log2 G)`` for phase 2, and
two for phases 3 and 4 (phase 2 may need fewer, leaving more for phase 4, or, after a wrong
prediction, up to two more).

Baselines on the same groups, sensitivities and budget (each starts with all-INT8 too):

``bisect-prefix`` / ``bisect-suffix`` (:class:`Bisect`)
    Polygraphy's ``debug precision`` scheme: groups in layer (topological) order, bisection on
    the length of the prefix (suffix) kept in FP32.
``greedy`` (:class:`Greedy`)
    NNCF's accuracy control (and Intel Neural Compressor's) scheme: revert one more group to
    FP32, most sensitive first, with a full evaluation after each, until the budget holds.

Everything is deterministic: the same space, evaluator results and ``max_evals`` give the same
proposals in the same order.
"""
from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import CalibError
from .budget import Budget, Measurement

PRECISIONS = ("int8", "fp16", "fp32")
ACCURACY_RANK = {"int8": 0, "fp16": 1, "fp32": 2}   # less accurate -> more accurate
ALGORITHMS = ("ours", "bisect-prefix", "bisect-suffix", "greedy")


class Evaluator(Protocol):
    """Measures the budget metric of a plan on the search split: ``evaluator(precisions)`` with
    *precisions* mapping every quantizable group id to a precision, returning a
    :class:`~calib.tuning.budget.Measurement` (estimate and interval). ``many(plans)`` measures
    several plans, in one pass over the data where the evaluator can."""

    def __call__(self, precisions: Mapping[str, str]) -> Measurement: ...

    def many(self, plans: Sequence[Mapping[str, str]]) -> list[Measurement]: ...


@dataclass(frozen=True)
class SearchSpace:
    """What the strategies choose among and what they know of it.

    *groups*: quantizable group ids in layer (topological) order; *ranking*: the same ids, most
    sensitive first; *latency*: ``{group id: {precision: seconds}}`` predicted per group;
    *fixed_latency*: the predicted time of everything else (groups that are never INT8);
    *macs*: multiply-accumulates per group (for the INT8 share); *predictor*: the whole plan's
    predicted time, when it is not *fixed_latency* plus the groups' times; *scores*: a sensitivity
    per group (>= 0, larger is more sensitive, on a scale where the groups' values add up), from
    which :class:`Ours` predicts its first bisection probe (:func:`predict_k`); *fp16_value*: the
    budget metric with every group in FP16, measured with the sensitivities (None: not measured),
    from which :class:`Ours` knows whether reverting to FP16 can meet the budget.
    """

    groups: tuple[str, ...]
    ranking: tuple[str, ...]
    latency: Mapping[str, Mapping[str, float]]
    macs: Mapping[str, int]
    fixed_latency: float = 0.0
    predictor: Callable[[Mapping[str, str]], float] | None = None
    scores: Mapping[str, float] | None = None
    fp16_value: float | None = None

    def __post_init__(self):
        if sorted(self.groups) != sorted(self.ranking) or len(set(self.groups)) != len(self.groups):
            raise CalibError("the sensitivity ranking must list each quantizable group exactly once")
        missing = [g for g in self.groups if g not in self.latency or any(p not in self.latency[g] for p in PRECISIONS)]
        if missing:
            raise CalibError(f"no predicted latency for group(s) {', '.join(missing[:3])}")

    def plan(self, fp32: Sequence[str] = (), fp16: Sequence[str] = ()) -> dict[str, str]:
        """Every group INT8 except those named."""
        p = dict.fromkeys(self.groups, "int8")
        p.update(dict.fromkeys(fp16, "fp16"))
        p.update(dict.fromkeys(fp32, "fp32"))
        return p

    def reverted(self, groups: Sequence[str], to: Mapping[str, str]) -> dict[str, str]:
        """Every group INT8 except *groups*, each in the float precision *to* names for it."""
        p = self.plan()
        p.update((g, to[g]) for g in groups)
        return p

    def predict(self, precisions: Mapping[str, str]) -> float:
        """Predicted seconds per sample of the whole model with *precisions*."""
        if self.predictor is not None:
            return float(self.predictor(precisions))
        return self.fixed_latency + sum(self.latency[g][precisions.get(g, "int8")] for g in self.groups)

    def gain(self, group: str, frm: str, to: str) -> float:
        """Predicted seconds saved by moving *group* from precision *frm* to *to*."""
        return self.latency[group][frm] - self.latency[group][to]

    def fastest_float(self) -> dict[str, str]:
        """Each group's faster float precision by the latency model: ``fp16`` where it is
        predicted faster than ``fp32`` (GPUs with FP16 tensor cores), else ``fp32`` (ONNX
        Runtime's CPU provider, which has no FP16 kernels)."""
        return {g: "fp16" if self.latency[g]["fp16"] < self.latency[g]["fp32"] else "fp32" for g in self.groups}

    def cost_order(self, groups: Sequence[str] | None = None, to: Mapping[str, str] | None = None) -> list[str]:
        """*groups* (default: all) in the order :class:`Ours` reverts them: by sensitivity per
        second of predicted latency that reverting costs (to FP32, or to the precision *to* names
        per group), largest first; groups whose reverting costs nothing (INT8 no faster) first,
        most sensitive first; ties by *ranking*. The sensitivity is :attr:`scores`, else the
        position in *ranking* (``G`` for the first, 1 for the last)."""
        rank = {g: i for i, g in enumerate(self.ranking)}
        n = len(self.ranking)
        groups = list(self.groups if groups is None else groups)
        score = dict(self.scores) if self.scores is not None else {g: float(n - rank[g]) for g in groups}

        def key(g):
            cost = self.latency[g][to[g] if to is not None else "fp32"] - self.latency[g]["int8"]
            s = max(float(score.get(g, 0.0)), 0.0)
            return (0, -s, rank[g]) if cost <= 0 else (1, -s / cost, rank[g])
        return sorted(groups, key=key)

    def int8_mac_share(self, precisions: Mapping[str, str]) -> float:
        total = sum(self.macs.get(g, 0) for g in self.groups)
        if total <= 0:
            return 0.0
        return sum(self.macs.get(g, 0) for g in self.groups if precisions.get(g, "int8") == "int8") / total


def default_max_evals(groups: int) -> int:
    """``ceil(log2 G) + 3``: all-INT8, the bisection, FP16 and re-quantization."""
    return math.ceil(math.log2(max(groups, 1))) + 3


@dataclass(frozen=True)
class Proposal:
    """A plan a strategy wants evaluated, with a label saying why."""

    label: str
    phase: str
    precisions: dict[str, str]


@dataclass
class Evaluation:
    """One full evaluation of a plan on the search split."""

    index: int
    label: str
    phase: str
    precisions: dict[str, str]
    metric: float
    interval: tuple[float, float]
    samples: int
    holds: bool
    predicted_latency_s: float
    int8_mac_share: float

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(PRECISIONS, 0)
        for v in self.precisions.values():
            out[v] += 1
        return out

    def to_dict(self) -> dict:
        lo, hi = self.interval
        m = Measurement(self.metric, lo, hi, self.samples).to_dict()
        return {"index": self.index, "label": self.label, "phase": self.phase, "metric": m["value"],
                "interval": [m["low"], m["high"]], "samples": self.samples, "holds": self.holds,
                "predicted_latency_s": self.predicted_latency_s, "int8_mac_share": self.int8_mac_share,
                "groups": self.counts(), "precisions": dict(sorted(self.precisions.items()))}


class Strategy(abc.ABC):
    """``propose()`` the next plan (None: done), then ``step(success)`` with whether it met the
    budget. *max_evals* is what the loop will allow; strategies plan their phases with it."""

    name = "strategy"

    def __init__(self, space: SearchSpace, max_evals: int):
        self.space = space
        self.max_evals = max_evals
        self.used = 0
        self.failed: list[dict[str, str]] = []
        self.notes: list[str] = []          # what the strategy decided on its own, for the report

    @property
    def left(self) -> int:
        return self.max_evals - self.used

    @abc.abstractmethod
    def propose(self) -> Proposal | None:
        """The next plan to evaluate, or None when the strategy is done."""

    def step(self, success: bool, value: float | None = None) -> None:
        """The last proposal met the budget (*success*) or not; *value*: the budget metric measured."""
        self.used += 1
        if not success and self._last is not None:
            self.failed.append(self._last.precisions)
        self._advance(success)

    @abc.abstractmethod
    def _advance(self, success: bool) -> None: ...

    _last: Proposal | None = None

    def _offer(self, label: str, phase: str, precisions: dict[str, str]) -> Proposal:
        self._last = Proposal(label, phase, precisions)
        return self._last

    def predicted_to_fail(self, precisions: Mapping[str, str]) -> bool:
        """Whether a plan that failed had every group as accurate as or more accurate than here."""
        return any(all(ACCURACY_RANK[precisions[g]] <= ACCURACY_RANK[f[g]] for g in self.space.groups)
                   for f in self.failed)


class _Bisection:
    """Smallest ``k`` in ``(lo, hi]`` whose plan holds, with ``lo`` failing and ``hi`` holding.
    Probes are the midpoints, except those planned (``plan(k)``) while they lie inside."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.mid: int | None = None
        self.planned: list[int] = []

    @property
    def done(self) -> bool:
        return self.hi - self.lo <= 1

    def plan(self, k: int) -> None:
        self.planned.append(k)

    def probe(self) -> int:
        while self.planned:
            k = self.planned.pop(0)
            if self.lo < k < self.hi:
                self.mid = k
                return k
        self.mid = (self.lo + self.hi) // 2
        return self.mid

    def step(self, success: bool) -> None:
        if success:
            self.hi = self.mid
        else:
            self.lo = self.mid


def predict_k(space: SearchSpace, budget: Budget | None, measured: float | None,
              order: Sequence[str] | None = None, floor: float | None = None) -> int | None:
    """How many groups of *order* (default: the ranking, most sensitive first) to revert for
    *budget* to hold, predicted from all-INT8's *measured* value and the groups' scores: the budget
    metric's loss (its distance to FP32's value; for ``sqnr``, the output's relative noise power
    ``10**(-dB/10)``) is taken as proportional to the summed scores of the groups left in INT8.
    *floor*: the metric with every group reverted, when they revert to FP16 (FP32 loses nothing):
    its loss is taken off what the budget allows. None without scores, budget or a finite
    measurement, or when the scores sum to zero."""
    if space.scores is None or budget is None or measured is None or not math.isfinite(measured):
        return None
    s = [max(float(space.scores.get(g, 0.0)), 0.0) for g in (space.ranking if order is None else order)]
    total = sum(s)
    if total <= 0:
        return None

    def loss(value: float) -> float:
        if budget.metric == "sqnr":
            return 10.0 ** (-value / 10.0)
        return budget.loss(value, budget.ideal)
    have, allowed = loss(measured), loss(budget.value)
    if floor is not None and math.isfinite(floor):
        allowed -= max(loss(floor), 0.0)
    if have <= 0:
        return None
    left = total
    for k, v in enumerate(s):
        if have * left / total <= allowed:
            return k
        left -= v
    return len(s)


REVERTS = ("auto", "fastest", "fp32")


def check_revert(revert: str) -> None:
    """A :class:`CalibError` unless *revert* is one of :data:`REVERTS`."""
    if revert not in REVERTS:
        raise CalibError(f"unknown revert precision {revert!r} (choose from {', '.join(REVERTS)})")


def revert_precisions(space: SearchSpace, budget: Budget | None, revert: str) -> dict[str, str]:
    """The float precision each group reverts to: ``fp32`` for all; ``fastest``: each group's
    faster one by the latency model (:meth:`SearchSpace.fastest_float`); ``auto``: ``fastest``
    when every group in FP16 was measured to meet *budget* (:attr:`SearchSpace.fp16_value`), else
    ``fp32``."""
    check_revert(revert)
    if revert == "auto":
        fp16 = space.fp16_value
        revert = "fastest" if budget is not None and fp16 is not None and budget.holds(fp16) else "fp32"
    return space.fastest_float() if revert == "fastest" else dict.fromkeys(space.groups, "fp32")


class Ours(Strategy):
    """All INT8, then a bisection on how many of the most sensitive groups to revert (first probe
    predicted), then FP16 for the reverted groups, then re-quantization by latency gain (see the
    module docstring). *budget* lets it predict the first probe from all-INT8's measurement.

    *order*: ``cost`` (sensitivity per second of latency that reverting costs) or ``sensitivity``
    (NNCF's order). *revert*: the precision reverted groups take: ``fp32`` (the issue's scheme,
    FP16 tried after the bisection), ``fastest`` (each group's faster float precision by the
    latency model, FP32 again if every group reverted misses the budget), or ``auto`` (default):
    ``fastest`` when :attr:`SearchSpace.fp16_value` meets the budget, else ``fp32``."""

    name = "ours"

    ORDERS = ("cost", "sensitivity")

    def __init__(self, space: SearchSpace, max_evals: int, budget: Budget | None = None, order: str = "cost",
                 revert: str = "auto"):
        super().__init__(space, max_evals)
        if order not in self.ORDERS:
            raise CalibError(f"unknown order {order!r} (choose from {', '.join(self.ORDERS)})")
        self.budget = budget
        self.order_name = order
        self.phase = "int8"
        self._set_revert(revert_precisions(space, budget, revert))
        n16 = sum(v == "fp16" for v in self.to.values())
        if n16:
            v = space.fp16_value
            where = ("" if v is None else
                     f" (every group in FP16: {budget.format_value(v) if budget is not None else f'{v:.4g}'})")
            self.notes.append(f"reverted groups go to FP16, which the latency model predicts faster than FP32 for "
                              f"{n16} of {len(space.groups)} groups{where}")
        self.int8_value: float | None = None           # all-INT8's measured budget metric
        self.current: dict[str, str] | None = None     # the plan that meets the budget so far
        self.queue: list[str] = []                     # phase 4: groups left to re-quantize
        self.pending: dict[str, str] | None = None

    def _set_revert(self, to: Mapping[str, str]) -> None:
        """Revert groups to *to* (group -> ``fp16`` / ``fp32``) and start the bisection over."""
        sp = self.space
        self.to = dict(to)
        self.order = sp.cost_order(to=self.to) if self.order_name == "cost" else list(sp.ranking)
        # every group reverted meets the budget by construction only when all are in FP32
        self.top_holds = all(v == "fp32" for v in self.to.values())
        self.bisect = _Bisection(0, len(sp.groups))
        self.guess: int | None = None                  # the predicted k, once probed

    def _plan_guess(self) -> None:
        floor = self.space.fp16_value if "fp16" in self.to.values() else None
        k = predict_k(self.space, self.budget, self.int8_value, self.order, floor)
        if k is not None:
            self.guess = min(max(k, 1), len(self.space.groups) - 1)
            self.bisect.plan(self.guess)

    def _reverted(self, k: int) -> dict[str, str]:
        return self.space.reverted(self.order[:k], self.to)

    def _label(self, k: int) -> str:
        n16 = sum(self.to[g] == "fp16" for g in self.order[:k])
        if n16 == 0:
            return f"{k} reverted to FP32"
        return f"{k} reverted to FP16" if n16 == k else f"{k} reverted ({n16} FP16, {k - n16} FP32)"

    def propose(self) -> Proposal | None:
        sp = self.space
        while self.left > 0:
            if self.phase == "int8":
                return self._offer("all INT8", "int8", sp.plan())
            if self.phase == "bisect":
                if not self.bisect.done:
                    k = self.bisect.probe()
                    why = " (predicted)" if k == self.guess else ""
                    return self._offer(f"{self._label(k)}{why}", "bisect", self._reverted(k))
                if self.bisect.hi == len(sp.groups) and not self.top_holds:
                    # every group reverted, some to FP16: not known to meet the budget
                    self.phase = "top"
                    return self._offer(f"all {self._label(len(sp.groups))}", "fp16", self._reverted(len(sp.groups)))
                self._start_fp16()
                continue
            if self.phase == "fp16":
                reverted = [g for g in sp.groups if self.current[g] == "fp32"]
                faster = [g for g in reverted if sp.gain(g, "fp32", "fp16") > 0]
                self.phase = "requant"
                self._start_requant()
                if faster:
                    plan = dict(self.current, **dict.fromkeys(faster, "fp16"))
                    if not self.predicted_to_fail(plan):
                        self.pending = plan
                        return self._offer(f"{len(faster)} reverted in FP16", "fp16", plan)
                continue
            if self.phase == "requant":
                while self.queue:
                    g = self.queue.pop(0)
                    plan = dict(self.current, **{g: "int8"})
                    if self.predicted_to_fail(plan):
                        continue
                    self.pending = plan
                    return self._offer(f"re-quantize {g}", "requant", plan)
                return None
            return None
        return None

    def _start_fp16(self) -> None:
        self.current = self._reverted(self.bisect.hi)
        self.phase = "fp16"

    def _start_requant(self) -> None:
        sp = self.space
        rank = {g: i for i, g in enumerate(sp.ranking)}
        cand = [g for g in sp.groups if self.current[g] != "int8" and sp.gain(g, self.current[g], "int8") > 0]
        # largest predicted gain first; among equal gains the less sensitive first
        self.queue = sorted(cand, key=lambda g: (-sp.gain(g, self.current[g], "int8"), -rank[g]))

    def step(self, success: bool, value: float | None = None) -> None:
        if self.phase == "int8" and not success:
            self.int8_value = value
            self._plan_guess()
        super().step(success, value)

    def _advance(self, success: bool) -> None:
        if self.phase == "int8":
            self.phase = "done" if success else "bisect"
        elif self.phase == "top":
            if success:
                self.top_holds = True
                self._start_fp16()
            else:     # FP16 is not accurate enough for this budget: bisect again, reverting to FP32
                self.notes.append("every group reverted, in FP16 where faster, missed the budget: bisected again "
                                  "reverting to FP32")
                self._set_revert(dict.fromkeys(self.space.groups, "fp32"))
                self._plan_guess()
                self.phase = "bisect"
        elif self.phase == "bisect":
            first = self.bisect.mid == self.guess
            self.bisect.step(success)
            if first:     # the neighbour next: one evaluation settles a right prediction
                self.bisect.plan(self.guess - 1 if success else self.guess + 1)
            # once done, propose() ends the bisection (evaluating every group reverted if that is not
            # known to meet the budget)
        elif self.phase == "requant" and self.pending is not None:
            if success:
                self.current = self.pending
                # FP16 may have changed gains: re-rank what is left
                left = set(self.queue)
                self._start_requant()
                self.queue = [g for g in self.queue if g in left]
            self.pending = None


class Bisect(Strategy):
    """Polygraphy ``debug precision``: bisection on the length of a prefix (or suffix) of the
    groups in layer order kept in FP32."""

    def __init__(self, space: SearchSpace, max_evals: int, direction: str = "prefix"):
        super().__init__(space, max_evals)
        if direction not in ("prefix", "suffix"):
            raise CalibError(f"bisection direction must be prefix or suffix, not {direction!r}")
        self.direction = direction
        self.name = f"bisect-{direction}"
        self.phase = "int8"
        self.bisect = _Bisection(0, len(space.groups))

    def _kept(self, k: int) -> Sequence[str]:
        g = self.space.groups
        return g[:k] if self.direction == "prefix" else g[len(g) - k:]

    def propose(self) -> Proposal | None:
        if self.left <= 0:
            return None
        if self.phase == "int8":
            return self._offer("all INT8", "int8", self.space.plan())
        if self.phase == "bisect" and not self.bisect.done:
            k = self.bisect.probe()
            return self._offer(f"{self.direction} of {k} in FP32", "bisect", self.space.plan(fp32=self._kept(k)))
        return None

    def _advance(self, success: bool) -> None:
        if self.phase == "int8":
            self.phase = "done" if success else "bisect"
        else:
            self.bisect.step(success)


class Greedy(Strategy):
    """NNCF accuracy control: one more group reverted per evaluation, most sensitive first, to
    FP32 (NNCF's scheme, the default *revert* ``fp32``), or as :class:`Ours` reverts them
    (*revert* ``fastest`` / ``auto``: the same scheme given FP16, for comparison)."""

    name = "greedy"

    def __init__(self, space: SearchSpace, max_evals: int, budget: Budget | None = None, revert: str = "fp32"):
        super().__init__(space, max_evals)
        self.to = revert_precisions(space, budget, revert)
        self.k = 0
        self.finished = False

    def propose(self) -> Proposal | None:
        if self.left <= 0 or self.finished or self.k > len(self.space.groups) - (1 if self._top_holds() else 0):
            return None
        sp = self.space
        if self.k == 0:
            return self._offer("all INT8", "int8", sp.plan())
        g = sp.ranking[self.k - 1]
        return self._offer(f"revert {g} to {self.to[g].upper()} ({self.k} reverted)", "greedy",
                           sp.reverted(sp.ranking[:self.k], self.to))

    def _top_holds(self) -> bool:
        return all(v == "fp32" for v in self.to.values())

    def _advance(self, success: bool) -> None:
        if success:
            self.finished = True
        else:
            self.k += 1


def make_strategy(algorithm: str, space: SearchSpace, max_evals: int, budget: Budget | None = None,
                  **options) -> Strategy:
    """The strategy named *algorithm* (one of :data:`ALGORITHMS`); *budget* and *options*
    (``order``, ``revert``) are :class:`Ours`'s; ``greedy`` takes ``revert`` too."""
    if algorithm == "ours":
        return Ours(space, max_evals, budget, **options)
    if algorithm in ("bisect-prefix", "bisect-suffix"):
        return Bisect(space, max_evals, algorithm.split("-", 1)[1])
    if algorithm == "greedy":
        return Greedy(space, max_evals, budget, **options)
    raise CalibError(f"unknown search algorithm {algorithm!r} (choose from {', '.join(ALGORITHMS)})")


@dataclass
class Outcome:
    """What :func:`run` found: every evaluation, and the plan chosen."""

    algorithm: str
    budget: Budget
    evaluations: list[Evaluation]
    chosen: dict[str, str]
    chosen_index: int | None           # the evaluation it comes from; None: the FP32 fallback
    predicted_latency_s: float
    int8_mac_share: float
    max_evals: int
    notes: list[str] = field(default_factory=list)
    margin: float = 0.0

    @property
    def met(self) -> bool:
        """Whether an evaluated plan met the budget on the search split."""
        return self.chosen_index is not None

    def to_dict(self) -> dict:
        return {"algorithm": self.algorithm, "budget": self.budget.to_dict(), "max_evals": self.max_evals,
                "margin_standard_errors": self.margin,
                "evaluations_used": len(self.evaluations),
                "evaluations": [e.to_dict() for e in self.evaluations],
                "chosen": {"evaluation": self.chosen_index, "predicted_latency_s": self.predicted_latency_s,
                           "int8_mac_share": self.int8_mac_share,
                           "precisions": dict(sorted(self.chosen.items()))},
                "notes": list(self.notes)}


def run(strategy: Strategy, evaluator: Evaluator | Callable[[Mapping[str, str]], Measurement], budget: Budget,
        *, margin: float = 0.0, on_eval: Callable[[Evaluation], None] | None = None) -> Outcome:
    """Drive *strategy* with *evaluator* until it is done or its ``max_evals`` are spent.

    Each proposal is measured once and recorded as an :class:`Evaluation` (passed to *on_eval*,
    e.g. for a progress line); ``holds`` is the budget applied to the estimate on the search split
    moved *margin* standard errors towards the bad side (:meth:`Budget.holds_with`; 0: the estimate
    itself). A search keeps the plans that happened to score well on its split, so a plan chosen at
    the budget's edge scores worse on new data about half the time; a margin of a standard error
    or so pays for that selection. The chosen plan is the fastest evaluated plan that held, else
    all FP32.
    """
    space = strategy.space
    evaluations: list[Evaluation] = []
    while len(evaluations) < strategy.max_evals:
        prop = strategy.propose()
        if prop is None:
            break
        m = evaluator(prop.precisions)
        ev = Evaluation(index=len(evaluations), label=prop.label, phase=prop.phase,
                        precisions=dict(prop.precisions), metric=m.value, interval=(m.low, m.high),
                        samples=m.samples, holds=budget.holds_with(m, margin),
                        predicted_latency_s=space.predict(prop.precisions),
                        int8_mac_share=space.int8_mac_share(prop.precisions))
        evaluations.append(ev)
        if on_eval is not None:
            on_eval(ev)
        strategy.step(ev.holds, ev.metric)
    held = [e for e in evaluations if e.holds]
    notes = list(strategy.notes)
    if held:
        best = min(held, key=lambda e: (e.predicted_latency_s, -e.int8_mac_share, e.index))
        chosen, index = dict(best.precisions), best.index
    else:
        chosen, index = space.plan(fp32=space.groups), None
        notes.append(f"no evaluated plan met {budget} within {len(evaluations)} evaluations: every group stays "
                     f"in FP32")
    return Outcome(algorithm=strategy.name, budget=budget, evaluations=evaluations, chosen=chosen,
                   chosen_index=index, predicted_latency_s=space.predict(chosen),
                   int8_mac_share=space.int8_mac_share(chosen), max_evals=strategy.max_evals, notes=notes,
                   margin=margin)


__all__ = ["ALGORITHMS", "PRECISIONS", "Evaluator", "SearchSpace", "Proposal", "Evaluation", "Strategy", "Ours",
           "Bisect", "Greedy", "Outcome", "REVERTS", "check_revert", "default_max_evals", "make_strategy",
           "predict_k", "revert_precisions", "run"]
