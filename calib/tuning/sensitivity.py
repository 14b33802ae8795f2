"""How much each quantization group hurts in INT8, measured two ways, and how well they agree.

(a) **proxy**: one attributed pass of the all-INT8 model against FP32 over the search split
    (:func:`calib.harness.compare` with ``attribute=True``, per-tensor SQNR). A group's proxy is
    the SQNR drop across it: the lowest SQNR among the tensors it reads from outside (the error
    flowing in; where such a tensor is not in the Q/DQ model, as a zero Pad folded into the Conv
    after it, the nearest measured tensors upstream; 100 dB where none is, as for the FP32 graph
    input) minus the lowest SQNR
    among the tensors it hands on (to nodes outside it or as model outputs), each capped at
    :data:`calib.harness.attribution.EXACT_DB`. One pass, whatever the number of groups. The
    harness measures a quantized tensor where its consumer reads it (after its Q/DQ pair), so a
    group's drop includes the quantization of its outputs for the next group.
(b) **direct**: the budget metric itself, with only that group in INT8 (``only``; the rest FP32)
    or with all groups in INT8 but that one (``all-but``), one Q/DQ model per group, several
    models per pass over the search split (:meth:`calib.tuning.evaluator.PlanEvaluator.measure`).
    ``only`` isolates each group's own damage, which stays informative when all-INT8 is far off
    the budget (then reverting any single group changes little and ``all-but`` ties).
    Groups are ranked by the budget metric's loss, and among equal losses (a binary metric on
    tens of samples ties often) by the output SQNR.

Both rankings are reported with their rank agreement, Spearman's rho (ties averaged), and
the one the search uses is recorded. Ties in either ranking are broken by layer order.

Each group also gets a **score** on a scale where groups add up, from which the search predicts
its first probe (:func:`calib.tuning.search.predict_k`): the relative noise power
(``10**(-SQNR/10)``) the group puts into the model output, which for independent errors adds
across groups: with ``only``, that of the plan with the group alone in INT8; with ``all-but``, how
much all-INT8's output noise falls without the group; with the proxy, the noise power the group
adds at its own outputs (``10**(-SQNR_out/10) - 10**(-SQNR_in/10)``, taking its output's noise
to reach the model output unchanged).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model import Model
from ..plan import node_key

MODES = ("proxy", "direct", "direct-all-but")


@dataclass
class GroupSensitivity:
    """One group's sensitivities; larger is more sensitive. ``direct`` is the budget metric's value
    with the group alone in INT8 (or alone out of it), ``direct_loss`` its loss against a perfect
    candidate in the metric's unit, ``direct_sqnr_db`` the output SQNR of that plan."""

    group: str
    kind: str
    order: int
    macs: int
    proxy_db: float | None = None
    direct: float | None = None
    direct_low: float | None = None
    direct_high: float | None = None
    direct_loss: float | None = None
    direct_sqnr_db: float | None = None
    rank_proxy: int | None = None
    rank_direct: int | None = None
    score: float = 0.0

    def to_dict(self) -> dict:
        def f(x):
            return None if x is None else (x if math.isfinite(x) else str(x))
        return {"group": self.group, "kind": self.kind, "order": self.order, "macs": self.macs,
                "proxy_db": f(self.proxy_db), "direct": f(self.direct),
                "direct_interval": [f(self.direct_low), f(self.direct_high)] if self.direct is not None else None,
                "direct_loss": f(self.direct_loss), "direct_sqnr_db": f(self.direct_sqnr_db),
                "rank_proxy": self.rank_proxy, "rank_direct": self.rank_direct, "score": f(self.score)}


@dataclass
class Sensitivity:
    """Per-group sensitivities, the ranking the search used (most sensitive first) and the rank
    agreement of the two measures."""

    groups: list[GroupSensitivity]
    used: str                       # "proxy" | "direct"
    direct_mode: str | None         # "only" | "all-but" | None (not measured)
    spearman: float | None
    ranking: tuple[str, ...]
    samples: int
    notes: list[str] = field(default_factory=list)

    def by_group(self) -> dict[str, GroupSensitivity]:
        return {g.group: g for g in self.groups}

    @property
    def scores(self) -> dict[str, float]:
        """Group id -> score (relative output noise power, see the module docstring)."""
        return {g.group: g.score for g in self.groups}

    def to_dict(self) -> dict:
        return {"used": self.used, "direct_mode": self.direct_mode,
                "spearman": self.spearman, "samples": self.samples, "ranking": list(self.ranking),
                "proxy_method": "SQNR drop across the group (worst input SQNR - worst output SQNR, dB, capped at "
                                "100 dB) in one attributed pass of all-INT8 against FP32",
                "direct_method": None if self.direct_mode is None else (
                    "budget metric with only this group in INT8" if self.direct_mode == "only"
                    else "budget metric with every group in INT8 but this one"),
                "score_method": "relative output noise power 10**(-SQNR/10) the group adds (see "
                                "calib.tuning.sensitivity)",
                "groups": [g.to_dict() for g in self.groups], "notes": list(self.notes)}


def group_io(model: Model, groups: Sequence[Any]) -> dict[str, tuple[list[str], list[str]]]:
    """``{group id: (tensors it reads from outside, tensors it hands on)}``: activations only
    (constants and initializers left out); a group's outputs are those read by a node outside
    it or that are model outputs."""
    consts = model.constant_tensors()
    graph_outputs = {o.name for o in model.outputs}
    by_key = {node_key(n): n for n in model.nodes}
    owner: dict[str, str] = {}
    for g in groups:
        for k in g.nodes:
            owner[k] = g.id
    consumers = model.consumers()
    out = {}
    for g in groups:
        mine = [by_key[k] for k in g.nodes if k in by_key]
        produced = {o for n in mine for o in n.output if o}
        ins = list(dict.fromkeys(i for n in mine for i in n.input if i and i not in produced and i not in consts))
        outs = [o for o in dict.fromkeys(o for n in mine for o in n.output if o)
                if o in graph_outputs or any(owner.get(node_key(c)) != g.id for c in consumers.get(o, []))]
        out[g.id] = (ins, outs)
    return out


def noise(sqnr_db: float | None) -> float:
    """Relative noise power of an SQNR in dB (``10**(-SQNR/10)``; 0 for an exact tensor, None or NaN)."""
    if sqnr_db is None or math.isnan(sqnr_db) or sqnr_db == math.inf:
        return 0.0
    return 10.0 ** (-sqnr_db / 10.0)


def proxy_drops(model: Model, groups: Sequence[Any], attribution) -> dict[str, tuple[float, float] | None]:
    """Each group's ``(SQNR drop in dB, noise power added)`` from an :class:`calib.harness.Attribution`
    of all-INT8 against FP32 (see the module docstring); None where none of its outputs was
    measured."""
    from ..harness.attribution import EXACT_DB

    sq = {l.tensor: l.sqnr_db for l in attribution.layers if l.sqnr_db is not None and not math.isnan(l.sqnr_db)}
    producers = model.producers()
    consts = model.constant_tensors()

    def flowing_in(t: str, depth: int = 8) -> list[float]:
        # an input the candidate does not have (a zero Pad folded into the Conv after it) takes the
        # SQNR of the nearest measured tensors upstream
        if t in sq:
            return [min(sq[t], EXACT_DB)]
        node = producers.get(t)
        if node is None or depth == 0:
            return []
        return [v for i in node.input if i and i not in consts for v in flowing_in(i, depth - 1)]

    out = {}
    for gid, (ins, outs) in group_io(model, groups).items():
        o = [min(sq[t], EXACT_DB) for t in outs if t in sq]
        if not o:
            out[gid] = None
            continue
        i = [v for t in ins for v in flowing_in(t)]
        sin, sout = (min(i) if i else EXACT_DB), min(o)
        out[gid] = (sin - sout, max(0.0, noise(sout) - noise(sin)))
    return out


def attributed_pass(reference: Model, int8: Model, batches, *, budget, task="auto", labels=None, threads=None,
                    dataset_info=None):
    """One pass of the all-INT8 model *int8* against *reference* with per-tensor attribution;
    returns the :class:`calib.harness.Report` (its ``attributions['int8']``)."""
    from ..backends.onnxruntime import OrtEngine
    from ..harness import compare

    return compare(OrtEngine(reference, name="fp32", threads=threads),
                   [OrtEngine(int8, name="int8", threads=threads, precision="int8")], batches, task=task,
                   metrics=list(dict.fromkeys([budget.harness_metric, "sqnr"])), labels=labels, attribute=True,
                   resamples=200, dataset_info=dataset_info)


def _output_sqnr(report) -> float | None:
    for r in report.metrics.get("int8", []):
        if r.name == "sqnr" and r.candidate is not None:
            try:
                return float(r.candidate["estimate"])
            except (TypeError, ValueError):
                return None
    return None


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of *values* (ascending), ties given their average rank."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v), dtype=np.float64)
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        r[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of *a* and *b* (ties averaged); None when either is constant or
    fewer than 3 values."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    if np.all(ra == ra[0]) or np.all(rb == rb[0]):
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _finite(x: float | None, default: float) -> float:
    return default if x is None or math.isnan(x) else x


def _ranking(ids: Sequence[str], key) -> list[str]:
    """Most sensitive first by *key* (larger: more sensitive), ties by layer order (*ids*' order)."""
    pos = {g: i for i, g in enumerate(ids)}
    return sorted(ids, key=lambda g: (tuple(-k for k in key(g)), pos[g]))


def measure(model: Model, groups: Sequence[Any], evaluator, int8: Model, *, mode: str = "direct",
            direct_mode: str | None = None, threads=None, progress: bool | str = False) -> Sensitivity:
    """Sensitivities of the quantizable *groups* of *model* on the evaluator's search split.

    *int8*: the all-INT8 Q/DQ model (for the proxy's attributed pass); *evaluator*: a
    :class:`calib.tuning.evaluator.PlanEvaluator`; *mode*: which measure the search uses:
    ``proxy`` (only the proxy is measured, so no rank agreement), ``direct`` (both; the direct
    ``only`` measure is used) or ``direct-all-but`` (both; the direct ``all-but`` measure).
    """
    if mode not in MODES:
        from ..errors import CalibError

        raise CalibError(f"unknown sensitivity {mode!r} (choose from {', '.join(MODES)})")
    quant = [g for g in groups if g.quantizable]
    ids = [g.id for g in sorted(quant, key=lambda g: g.order)]
    budget = evaluator.budget
    notes: list[str] = []
    report = attributed_pass(model, int8, evaluator.batches, budget=budget, task=evaluator.task,
                             labels=evaluator.labels, threads=threads, dataset_info=evaluator.dataset_info)
    attribution = report.attributions.get("int8")
    drops = proxy_drops(model, quant, attribution) if attribution is not None else {}
    if attribution is None:
        notes.append("the attributed pass gave no per-tensor SQNR: proxy sensitivities are unknown")
    info = {g.id: GroupSensitivity(g.id, g.kind, g.order, int(g.macs),
                                   proxy_db=drops[g.id][0] if drops.get(g.id) else None,
                                   score=drops[g.id][1] if drops.get(g.id) else 0.0) for g in quant}
    unmeasured = [g for g in ids if info[g].proxy_db is None]
    if unmeasured:
        notes.append(f"no SQNR measured at the outputs of {len(unmeasured)} group(s) (ranked last by the proxy): "
                     f"{', '.join(unmeasured[:3])}{' ...' if len(unmeasured) > 3 else ''}")

    dmode = None
    if mode != "proxy":
        dmode = direct_mode or ("all-but" if mode == "direct-all-but" else "only")
        if dmode == "only":
            plans = [{h: ("int8" if h == g else "fp32") for h in ids} for g in ids]
        else:
            plans = [{h: ("fp32" if h == g else "int8") for h in ids} for g in ids]
        results = evaluator.measure(plans, progress=progress)
        ideal = budget.ideal
        all_noise = noise(_output_sqnr(report))
        for g, r in zip(ids, results):
            s = info[g]
            m = r.measurement
            s.direct, s.direct_low, s.direct_high, s.direct_sqnr_db = m.value, m.low, m.high, r.sqnr_db
            if dmode == "only":     # the damage of this group alone
                s.direct_loss = budget.loss(m.value, ideal) if math.isfinite(ideal) else -m.value
                s.score = noise(r.sqnr_db)
            else:                   # how much better all-INT8 gets without this group (loss of keeping it)
                s.direct_loss = -budget.loss(m.value, ideal) if math.isfinite(ideal) else m.value
                s.score = max(0.0, all_noise - noise(r.sqnr_db))

    def proxy_key(g):
        return (_finite(info[g].proxy_db, -math.inf),)

    def direct_key(g):
        s = info[g]
        sq = _finite(s.direct_sqnr_db, math.inf)
        # only: lower SQNR = more damage; all-but: higher SQNR without it = more damage with it
        return (_finite(s.direct_loss, -math.inf), -sq if dmode == "only" else sq)

    by_proxy = _ranking(ids, proxy_key)
    for i, g in enumerate(by_proxy):
        info[g].rank_proxy = i + 1
    rho = None
    if dmode is not None:
        by_direct = _ranking(ids, direct_key)
        for i, g in enumerate(by_direct):
            info[g].rank_direct = i + 1
        rho = spearman([-_finite(info[g].proxy_db, -math.inf) for g in ids], [info[g].rank_direct for g in ids])
        ranking = by_direct
        used = "direct"
    else:
        ranking = by_proxy
        used = "proxy"
        notes.append("direct sensitivity not measured (sensitivity=proxy): no rank agreement")
    return Sensitivity(groups=[info[g] for g in ids], used=used, direct_mode=dmode, spearman=rho,
                       ranking=tuple(ranking), samples=evaluator.samples, notes=notes)


__all__ = ["MODES", "GroupSensitivity", "Sensitivity", "group_io", "noise", "proxy_drops", "attributed_pass", "ranks",
           "spearman", "measure"]
