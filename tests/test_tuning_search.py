"""The search strategies and loop (calib.tuning.search) and budgets (calib.tuning.budget), on
synthetic evaluators: no model runs here, so every path of the strategies is exercised quickly."""
from __future__ import annotations

import math

import numpy as np
import pytest

from calib.errors import BudgetError, CalibError
from calib.tuning.budget import Budget, Measurement, parse_budget
from calib.tuning.search import ALGORITHMS, Bisect, Greedy, Ours, SearchSpace, default_max_evals, make_strategy, run


# --------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("text, metric, op, value, against", [
    ("top1_drop<=0.5", "top1_drop", "<=", 0.5, "labels"),
    ("agreement>=0.995", "agreement", ">=", 0.995, "fp32"),
    ("agreement >= 99.5%", "agreement", ">=", 0.995, "fp32"),
    ("cosine>=0.99", "cosine", ">=", 0.99, "fp32"),
    ("sqnr>=25", "sqnr", ">=", 25.0, "fp32"),
    ("sqnr>=25dB", "sqnr", ">=", 25.0, "fp32"),
    ("ctc_agreement>=0.9", "ctc_agreement", ">=", 0.9, "fp32"),
    ("cer_increase<=0.5", "cer_increase", "<=", 0.5, "labels"),
    ("cer_increase<=0.5pt", "cer_increase", "<=", 0.5, "labels"),
    ("agreement=>0.9", "agreement", ">=", 0.9, "fp32"),
])
def test_budgets_parse(text, metric, op, value, against):
    b = parse_budget(text)
    assert (b.metric, b.op, b.against) == (metric, op, against)
    assert b.value == pytest.approx(value)


@pytest.mark.parametrize("text, task, words", [
    ("agreement<=0.9", None, ["wrong way", "agreement>=0.9"]),
    ("top1_drop>=0.5", None, ["wrong way", "top1_drop<=0.5"]),
    ("cer_increase>=1", "ctc", ["wrong way"]),
    ("accuracy>=0.9", "classification", ["unknown budget metric 'accuracy'", "top1_drop, agreement, cosine, sqnr"]),
    ("ctc_agreement>=0.9", "classification", ["does not apply", "valid metrics for classification: top1_drop"]),
    ("agreement>=0.9", "embedding", ["valid metrics for embedding: cosine, sqnr"]),
    ("agreement>=0.9", "ctc", ["valid metrics for ctc: sqnr, ctc_agreement, cer_increase"]),
    ("agreement>0.9", None, ["operator '>' is not allowed", "agreement>=0.9"]),
    ("agreement==0.9", None, ["not allowed"]),
    ("agreement>=1.5", None, ["from 0 to 1", "99.5%"]),
    ("top1_drop<=-1", None, ["FP32 itself scores 0"]),
    ("sqnr>=25%", None, ["not a percentage"]),
    ("cosine>=abc", None, ["not a number"]),
    ("agreement", None, ["cannot parse", "METRIC>=VALUE"]),
    ("", None, ["empty budget"]),
    ("sqnr>=inf", None, ["not a number"]),
])
def test_budget_errors_name_the_valid_metrics(text, task, words):
    with pytest.raises(BudgetError) as e:
        parse_budget(text, task)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_budget_unknown_task():
    with pytest.raises(BudgetError, match="unknown task 'speech'"):
        parse_budget("sqnr>=20", "speech")


def test_budget_holds_judges_and_reads_harness_results():
    b = parse_budget("agreement>=0.95")
    assert b.holds(0.95) and b.holds(1.0) and not b.holds(0.949) and not b.holds(math.nan)
    assert b.judge(Measurement(0.97, 0.96, 0.99, 40)) == "meets"
    assert b.judge(Measurement(0.96, 0.90, 1.0, 40)) == "uncertain"
    assert b.judge(Measurement(0.80, 0.70, 0.90, 40)) == "fails"
    # a margin of standard errors read off the 95% interval (half-width 1.96 SE)
    m = Measurement(0.97, 0.93, 1.0, 40)          # SE = 0.07 / 3.92 = 0.0179
    assert b.holds_with(m, 0) and b.holds_with(m, 1) and not b.holds_with(m, 2)
    lower = parse_budget("cer_increase<=0.5")
    assert lower.holds_with(Measurement(0.3, -0.1, 0.7, 40), 0.5) and not lower.holds_with(
        Measurement(0.3, -0.1, 0.7, 40), 1.5)
    assert parse_budget("sqnr>=30").holds_with(Measurement(math.inf, math.inf, math.inf, 3), 1)
    res = [{"name": "top1_agreement", "samples": 40, "candidate": {"estimate": 0.975, "low": 0.925, "high": 1.0}}]
    assert b.measure(res) == Measurement(0.975, 0.925, 1.0, 40)
    # a drop against the labels comes from the paired difference, in percentage points, sign flipped
    d = parse_budget("top1_drop<=0.5")
    res = [{"name": "top1", "samples": 40, "candidate": {"estimate": 0.8, "low": 0.7, "high": 0.9},
            "difference": {"estimate": -0.025, "low": -0.05, "high": 0.0}}]
    m = d.measure(res)
    assert (m.value, m.low, m.high) == pytest.approx((2.5, 0.0, 5.0))
    assert not d.holds(m.value) and d.judge(m) == "uncertain"
    c = parse_budget("cer_increase<=1")
    res = [{"name": "cer", "samples": 9, "difference": {"estimate": 0.004, "low": -0.001, "high": 0.02}}]
    assert c.measure(res).value == pytest.approx(0.4) and c.holds(c.measure(res).value)
    with pytest.raises(BudgetError, match="needs labels"):
        d.measure([{"name": "top1", "samples": 3, "candidate": {"estimate": 1, "low": 1, "high": 1},
                    "difference": None}])
    with pytest.raises(BudgetError, match="did not compute top1_agreement"):
        b.measure([{"name": "sqnr", "samples": 3}])
    # an exact candidate's SQNR is "inf" in JSON
    s = parse_budget("sqnr>=30")
    assert s.holds(s.measure([{"name": "sqnr", "samples": 2,
                               "candidate": {"estimate": "inf", "low": "inf", "high": "inf"}}]).value)


# --------------------------------------------------------------------------- synthetic spaces
def make_space(G: int, seed: int = 0, ranking: str = "true", fp16_faster: bool = True):
    """G groups with random losses; MACs random; ranking by the true loss (or reversed, or layer order)."""
    rng = np.random.default_rng(seed)
    ids = tuple(f"g{i:02d}" for i in range(G))
    loss = dict(zip(ids, rng.exponential(1.0, G) ** 2))
    macs = dict(zip(ids, rng.integers(1, 100, G).tolist()))
    lat = {g: {"int8": macs[g] * 1.0, "fp16": macs[g] * (2.0 if fp16_faster else 5.0), "fp32": macs[g] * 4.0}
           for g in ids}
    order = sorted(ids, key=lambda g: -loss[g])
    if ranking == "reversed":
        order = order[::-1]
    elif ranking == "layer":
        order = list(ids)
    return SearchSpace(groups=ids, ranking=tuple(order), latency=lat, macs=macs,
                       scores=loss if ranking == "true" else None), loss


class Additive:
    """metric = 1 - sum of the losses of INT8 groups (FP16: a tenth), scaled; monotone."""

    def __init__(self, loss, scale=0.01, fp16=0.1):
        self.loss, self.scale, self.fp16 = loss, scale, fp16
        self.calls = []

    def value(self, p):
        return 1.0 - self.scale * sum(l * (1.0 if p[g] == "int8" else self.fp16 if p[g] == "fp16" else 0.0)
                                      for g, l in self.loss.items())

    def __call__(self, p):
        self.calls.append(dict(p))
        v = self.value(p)
        return Measurement(v, v - 0.01, min(1.0, v + 0.01), 50)


class Bumpy(Additive):
    """Not monotone: INT8 on some groups *helps* (errors that cancel), and FP16 is worse than INT8
    on a few."""

    def __init__(self, loss, seed=1, **kw):
        super().__init__(loss, **kw)
        rng = np.random.default_rng(seed)
        self.sign = {g: (-0.5 if rng.random() < 0.25 else 1.0) for g in loss}
        self.fp16_bad = {g for g in loss if rng.random() < 0.2}

    def value(self, p):
        t = 0.0
        for g, l in self.loss.items():
            if p[g] == "int8":
                t += l * self.sign[g]
            elif p[g] == "fp16":
                t += l * (1.5 if g in self.fp16_bad else self.fp16)
        return 1.0 - self.scale * t


def test_default_max_evals():
    assert [default_max_evals(g) for g in (1, 2, 3, 4, 5, 8, 9, 51, 64, 65)] == [3, 4, 5, 5, 6, 6, 7, 9, 9, 10]


@pytest.mark.parametrize("G", [1, 2, 3, 7, 16, 51, 100])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ours_within_bound_and_meets_the_budget_monotone(G, seed):
    space, loss = make_space(G, seed)
    ev = Additive(loss)
    total = sum(loss.values()) * ev.scale
    b = Budget("agreement", ">=", 1.0 - 0.3 * total, "fp32")      # all INT8 misses it
    out = run(Ours(space, default_max_evals(G)), ev, b)
    assert len(out.evaluations) <= math.ceil(math.log2(G)) + 3
    assert len(ev.calls) == len(out.evaluations)
    assert out.evaluations[0].label == "all INT8" and not out.evaluations[0].holds
    if G > 1:
        assert out.met and b.holds(ev.value(out.chosen))
        # it re-checks: the chosen plan's record is the evaluator's value
        assert out.evaluations[out.chosen_index].metric == pytest.approx(ev.value(out.chosen))
    # no plan is evaluated twice
    assert len({tuple(sorted(c.items())) for c in ev.calls}) == len(ev.calls)
    # the bisection ends next to a failure: one group fewer in FP32 fails
    bis = [e for e in out.evaluations if e.phase == "bisect"]
    assert len(bis) <= math.ceil(math.log2(G)) if G > 1 else not bis


@pytest.mark.parametrize("frac", [0.1, 0.2, 0.4])
def test_ours_in_sensitivity_order_against_the_baselines_monotone(frac):
    """40 random spaces with additive losses, whose scores the search gets, ours reverting in
    NNCF's order (sensitivity alone): the prediction is right, so the bisection takes two
    evaluations; ours is never slower than a baseline, with all its evaluations or with as many as
    the baseline used."""
    G = 40
    for seed in range(40):
        space, loss = make_space(G, seed)
        b = Budget("agreement", ">=", 1.0 - frac * sum(loss.values()) * 0.01, "fp32")
        res = {a: run(make_strategy(a, space, default_max_evals(G) if a != "greedy" else G + 1, b,
                                    **({"order": "sensitivity"} if a == "ours" else {})), Additive(loss), b)
               for a in ALGORITHMS}
        ours = res["ours"]
        assert ours.met and len(ours.evaluations) <= default_max_evals(G)
        assert [e.phase for e in ours.evaluations[:3]] == ["int8", "bisect", "bisect"]
        assert "(predicted)" in ours.evaluations[1].label
        assert ours.evaluations[1].holds and not ours.evaluations[2].holds     # k predicted, k - 1 fails
        for a in ("bisect-prefix", "bisect-suffix", "greedy"):
            base = res[a]
            assert ours.predicted_latency_s <= base.predicted_latency_s + 1e-9, (seed, a)
            n = len(base.evaluations)
            short = run(make_strategy("ours", space, n, b, order="sensitivity"), Additive(loss), b)
            assert len(short.evaluations) <= n
            assert short.predicted_latency_s <= base.predicted_latency_s + 1e-9, (seed, a, n)
        g = res["greedy"]
        k = sum(1 for v in g.chosen.values() if v == "fp32")
        assert len(g.evaluations) == k + 1                 # one full evaluation per reverted group
        # ours had greedy's plan (or a faster one) after its third evaluation
        assert min(e.predicted_latency_s for e in ours.evaluations[:3] if e.holds) <= g.predicted_latency_s + 1e-9


@pytest.mark.parametrize("frac", [0.1, 0.2, 0.4])
def test_ours_in_cost_order_mostly_beats_the_sensitivity_order(frac):
    """The default order (sensitivity per second of latency) against sensitivity alone, on the same
    40 spaces: faster in most, and on average, and never slower than the bisection baselines."""
    G, wins, ratios = 40, 0, []
    for seed in range(40):
        space, loss = make_space(G, seed)
        b = Budget("agreement", ">=", 1.0 - frac * sum(loss.values()) * 0.01, "fp32")
        cost = run(make_strategy("ours", space, default_max_evals(G), b), Additive(loss), b)
        sens = run(make_strategy("ours", space, default_max_evals(G), b, order="sensitivity"), Additive(loss), b)
        assert cost.met and len(cost.evaluations) <= default_max_evals(G)
        for a in ("bisect-prefix", "bisect-suffix"):
            assert cost.predicted_latency_s <= run(make_strategy(a, space, default_max_evals(G)), Additive(loss),
                                                   b).predicted_latency_s
        wins += cost.predicted_latency_s <= sens.predicted_latency_s + 1e-9
        ratios.append(cost.predicted_latency_s / sens.predicted_latency_s)
    assert wins >= 0.75 * 40 and np.mean(ratios) < 0.99, (wins, np.mean(ratios))


def test_without_scores_the_bisection_halves():
    G = 40
    space, loss = make_space(G, 7, ranking="reversed")     # no scores
    b = Budget("agreement", ">=", 1.0 - 0.2 * sum(loss.values()) * 0.01, "fp32")
    out = run(make_strategy("ours", space, default_max_evals(G), b, order="sensitivity"), Additive(loss), b)
    probes = [sum(1 for v in e.precisions.values() if v == "fp32") for e in out.evaluations if e.phase == "bisect"]
    assert probes[0] == G // 2 and len(probes) <= math.ceil(math.log2(G))


def test_predict_k():
    from calib.tuning.search import predict_k

    space = SearchSpace(groups=("a", "b", "c"), ranking=("a", "b", "c"),
                        latency={g: {"int8": 1, "fp16": 2, "fp32": 3} for g in "abc"}, macs={},
                        scores={"a": 6.0, "b": 3.0, "c": 1.0})
    agree = Budget("agreement", ">=", 0.9, "fp32")
    # all INT8 loses 0.5; 0.1 allowed: the INT8 groups may carry a fifth of the scores -> revert a and b
    assert predict_k(space, agree, 0.5) == 2
    assert predict_k(space, agree, 0.85) == 1           # loses 0.15: revert a (0.15 * 4/10 <= 0.1)
    sq = Budget("sqnr", ">=", 30.0, "fp32")
    # 20 dB: ten times the allowed noise power: keep at most a tenth of the scores in INT8
    assert predict_k(space, sq, 20.0) == 2
    assert predict_k(space, sq, 10.0) == 3
    assert predict_k(space, agree, float("nan")) is None and predict_k(space, None, 0.5) is None


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ranking", ["true", "reversed", "layer"])
def test_strategies_on_a_non_monotone_metric(seed, ranking):
    """Not monotone, or badly ranked: the bound holds, the chosen plan met the budget when it was
    evaluated (else the all-FP32 fallback is reported), and nothing is evaluated twice."""
    G = 24
    space, loss = make_space(G, seed, ranking=ranking)
    b = Budget("agreement", ">=", 1.0 - 0.2 * sum(loss.values()) * 0.01, "fp32")
    for a in ALGORITHMS:
        ev = Bumpy(loss, seed=seed)
        limit = default_max_evals(G)
        out = run(make_strategy(a, space, limit), ev, b)
        assert len(out.evaluations) <= limit
        assert len({tuple(sorted(c.items())) for c in ev.calls}) == len(ev.calls)
        if out.met:
            assert b.holds(ev.value(out.chosen))
            assert out.predicted_latency_s == min(e.predicted_latency_s for e in out.evaluations if e.holds)
        else:
            assert set(out.chosen.values()) == {"fp32"} and out.notes


def test_all_int8_meeting_the_budget_ends_the_search():
    space, loss = make_space(10)
    for a in ALGORITHMS:
        out = run(make_strategy(a, space, 9), Additive(loss), Budget("agreement", ">=", 0.0, "fp32"))
        assert len(out.evaluations) == 1 and out.chosen == space.plan() and out.int8_mac_share == 1.0


def test_ours_phases_fp16_and_requantization():
    """A ranking that overrates b (slow in FP32): the bisection reverts a and b, FP16 holds for both,
    and re-quantizing b (the largest gain) holds too."""
    ids = ("a", "b", "c", "d")
    lat = {"a": {"int8": 1, "fp16": 2, "fp32": 4}, "b": {"int8": 10, "fp16": 20, "fp32": 40},
           "c": {"int8": 1, "fp16": 2, "fp32": 4}, "d": {"int8": 1, "fp16": 2, "fp32": 4}}
    space = SearchSpace(groups=ids, ranking=("b", "a", "c", "d"), latency=lat, macs=dict.fromkeys(ids, 1))
    loss = {"a": 10.0, "b": 1.0, "c": 0.2, "d": 0.1}
    ev = Additive(loss, scale=0.01, fp16=0.1)
    b = Budget("agreement", ">=", 0.975, "fp32")       # a must leave INT8; b may stay
    out = run(Ours(space, default_max_evals(4), order="sensitivity"), ev, b)
    assert [e.phase for e in out.evaluations] == ["int8", "bisect", "bisect", "fp16", "requant"]
    assert [e.holds for e in out.evaluations] == [False, True, False, True, True]
    assert out.chosen == {"a": "fp16", "b": "int8", "c": "int8", "d": "int8"}
    assert out.chosen_index == 4 and b.holds(ev.value(out.chosen))


def test_fp16_phase_is_skipped_when_the_latency_model_sees_no_gain():
    space, loss = make_space(12, 3, fp16_faster=False)
    ev = Additive(loss)
    out = run(Ours(space, default_max_evals(12)), ev, Budget("agreement", ">=", 1 - 0.2 * sum(loss.values()) * 0.01,
                                                              "fp32"))
    assert "fp16" not in [e.phase for e in out.evaluations]
    assert all(v in ("int8", "fp32") for v in out.chosen.values())


def test_requantization_skips_plans_a_failure_predicts():
    space, loss = make_space(16, 4)
    ev = Additive(loss)
    b = Budget("agreement", ">=", 1 - 0.2 * sum(loss.values()) * 0.01, "fp32")
    out = run(Ours(space, 30), ev, b)
    rank = {"int8": 0, "fp16": 1, "fp32": 2}
    assert any(e.phase == "requant" for e in out.evaluations)
    for i, e in enumerate(out.evaluations):
        for f in out.evaluations[:i]:
            if not f.holds:   # no plan at most as accurate as one that failed, group by group
                assert not all(rank[e.precisions[g]] <= rank[f.precisions[g]] for g in space.groups), e.label


def test_baselines_follow_their_schemes():
    space, loss = make_space(8, 5, ranking="true")
    b = Budget("agreement", ">=", 1 - 0.3 * sum(loss.values()) * 0.01, "fp32")
    pre = run(Bisect(space, 10, "prefix"), Additive(loss), b)
    for e in pre.evaluations[1:]:
        k = sum(1 for v in e.precisions.values() if v == "fp32")
        assert [e.precisions[g] for g in space.groups] == ["fp32"] * k + ["int8"] * (8 - k)
    suf = run(Bisect(space, 10, "suffix"), Additive(loss), b)
    for e in suf.evaluations[1:]:
        k = sum(1 for v in e.precisions.values() if v == "fp32")
        assert [e.precisions[g] for g in space.groups] == ["int8"] * (8 - k) + ["fp32"] * k
    assert len(pre.evaluations) <= 1 + 3 and len(suf.evaluations) <= 1 + 3
    gr = run(Greedy(space, 100), Additive(loss), b)
    for i, e in enumerate(gr.evaluations):
        assert {g for g, v in e.precisions.items() if v == "fp32"} == set(space.ranking[:i])


def test_max_evals_is_respected_and_the_trace_is_deterministic():
    space, loss = make_space(30, 6)
    b = Budget("agreement", ">=", 1 - 0.1 * sum(loss.values()) * 0.01, "fp32")
    for a in ALGORITHMS:
        for limit in (1, 2, 3, 5):
            out = run(make_strategy(a, space, limit), Bumpy(loss), b)
            assert len(out.evaluations) <= limit
        one = run(make_strategy(a, space, 9), Bumpy(loss), b).to_dict()
        two = run(make_strategy(a, space, 9), Bumpy(loss), b).to_dict()
        assert one == two


def test_space_checks_and_helpers():
    with pytest.raises(CalibError, match="exactly once"):
        SearchSpace(groups=("a", "b"), ranking=("a",), latency={}, macs={})
    with pytest.raises(CalibError, match="no predicted latency"):
        SearchSpace(groups=("a",), ranking=("a",), latency={"a": {"int8": 1}}, macs={})
    with pytest.raises(CalibError, match="unknown search algorithm"):
        make_strategy("random", make_space(3)[0], 3)
    space = SearchSpace(groups=("a", "b"), ranking=("b", "a"),
                        latency={"a": {"int8": 1, "fp16": 2, "fp32": 3}, "b": {"int8": 5, "fp16": 6, "fp32": 9}},
                        macs={"a": 30, "b": 10}, fixed_latency=0.5)
    p = space.plan(fp32=["b"])
    assert p == {"a": "int8", "b": "fp32"}
    assert space.predict(p) == 0.5 + 1 + 9
    assert space.int8_mac_share(p) == pytest.approx(0.75)
    assert space.gain("b", "fp32", "int8") == 4


def test_cost_order_reverts_free_groups_first_then_by_sensitivity_per_second():
    lat = {"cheap": {"int8": 1.0, "fp16": 1.5, "fp32": 2.0},      # costs 1 s to revert
           "heavy": {"int8": 10.0, "fp16": 20.0, "fp32": 40.0},   # costs 30 s
           "free": {"int8": 3.0, "fp16": 2.0, "fp32": 2.0},       # INT8 slower: reverting gains time
           "quiet": {"int8": 1.0, "fp16": 1.5, "fp32": 2.0}}
    scores = {"cheap": 1.0, "heavy": 20.0, "free": 0.01, "quiet": 0.0}
    space = SearchSpace(groups=tuple(lat), ranking=("heavy", "cheap", "free", "quiet"), latency=lat,
                        macs=dict.fromkeys(lat, 1), scores=scores)
    # heavy is the most sensitive (20 vs 1) but per second of latency less so (0.67 vs 1)
    assert space.cost_order() == ["free", "cheap", "heavy", "quiet"]
    # without scores, the ranking's positions stand in for them (G for the first)
    plain = SearchSpace(groups=tuple(lat), ranking=("heavy", "cheap", "free", "quiet"), latency=lat,
                        macs=dict.fromkeys(lat, 1))
    assert plain.cost_order() == ["free", "cheap", "quiet", "heavy"]
    out = run(Ours(space, 9), lambda p: Measurement(*(3 * [1.0 - (p["cheap"] == "int8")]), 10),
              Budget("agreement", ">=", 0.5, "fp32"))
    # all INT8 fails; reverting free and cheap is enough, and heavy stays INT8
    assert out.chosen["heavy"] == "int8" and out.chosen["cheap"] != "int8"
    with pytest.raises(CalibError, match="unknown order"):
        Ours(space, 9, order="random")


# --------------------------------------------------------------------------- reverting to FP16
def _with_fp16(space, ev):
    """*space* knowing every group's FP16 value under *ev* (what calib.mixed.Searcher measures)."""
    import dataclasses

    return dataclasses.replace(space, fp16_value=ev.value(space.plan(fp16=space.groups)))


@pytest.mark.parametrize("frac", [0.1, 0.2, 0.4])
def test_ours_reverts_to_fp16_where_it_is_faster_and_meets_the_budget(frac):
    """40 spaces where FP16 costs half of FP32 and keeps a hundredth of INT8's loss: once every
    group in FP16 is known to meet the budget, reverted groups go to FP16 in the bisection itself:
    never slower than reverting to FP32 first, and than NNCF's greedy revert at its own count."""
    G = 40
    for seed in range(40):
        space, loss = make_space(G, seed)
        b = Budget("agreement", ">=", 1.0 - frac * sum(loss.values()) * 0.01, "fp32")
        known = _with_fp16(space, Additive(loss, fp16=0.01))
        ev = Additive(loss, fp16=0.01)
        fp16 = run(Ours(known, default_max_evals(G), b), ev, b)
        fp32 = run(Ours(known, default_max_evals(G), b, revert="fp32"), Additive(loss, fp16=0.01), b)
        assert fp16.met and len(fp16.evaluations) <= default_max_evals(G) and b.holds(ev.value(fp16.chosen))
        assert "fp32" not in fp16.chosen.values() and "fp16" in fp16.chosen.values()
        assert fp16.evaluations[1].label.endswith("reverted to FP16 (predicted)") and fp16.notes
        # without the FP16 measurement (or with revert="fp32") the bisection reverts to FP32
        assert run(Ours(space, default_max_evals(G), b), Additive(loss, fp16=0.01), b).to_dict() == fp32.to_dict()
        assert fp16.predicted_latency_s <= fp32.predicted_latency_s + 1e-9, seed
        gr = run(Greedy(known, G + 1), Additive(loss, fp16=0.01), b)
        short = run(Ours(known, len(gr.evaluations), b), Additive(loss, fp16=0.01), b)
        assert short.predicted_latency_s <= gr.predicted_latency_s + 1e-9, seed


def test_fp16_reverts_fall_back_to_fp32_when_every_group_in_fp16_misses():
    """The space says FP16 meets the budget, but on the evaluator FP16 is no better than INT8: the
    bisection in FP16 fails up to every group reverted, which it then evaluates, and bisects
    again in FP32, which meets the budget."""
    G = 16
    space, loss = make_space(G, 2)
    b = Budget("agreement", ">=", 1.0 - 0.2 * sum(loss.values()) * 0.01, "fp32")
    liar = SearchSpace(groups=space.groups, ranking=space.ranking, latency=space.latency, macs=space.macs,
                       scores=space.scores, fp16_value=1.0)
    ev = Additive(loss, fp16=1.0)
    out = run(Ours(liar, 30, b), ev, b)
    top = [e for e in out.evaluations if e.label == f"all {G} reverted to FP16"]
    assert len(top) == 1 and not top[0].holds
    after = out.evaluations[top[0].index + 1:]
    assert after and after[0].phase == "bisect" and "reverted to FP32" in after[0].label
    assert out.met and b.holds(ev.value(out.chosen)) and "fp32" in out.chosen.values()
    assert any("bisected again reverting to FP32" in n for n in out.notes)
    assert len({tuple(sorted(c.items())) for c in ev.calls}) == len(ev.calls)


def test_auto_revert_keeps_fp32_when_fp16_misses_or_is_not_faster():
    space, loss = make_space(12, 5)
    b = Budget("agreement", ">=", 1.0 - 0.2 * sum(loss.values()) * 0.01, "fp32")
    missing = SearchSpace(groups=space.groups, ranking=space.ranking, latency=space.latency, macs=space.macs,
                          scores=space.scores, fp16_value=b.value - 0.01)
    assert set(Ours(missing, 9, b).to.values()) == {"fp32"}
    slow, _ = make_space(12, 5, fp16_faster=False)
    assert slow.fastest_float() == dict.fromkeys(slow.groups, "fp32")
    known = SearchSpace(groups=slow.groups, ranking=slow.ranking, latency=slow.latency, macs=slow.macs,
                        scores=slow.scores, fp16_value=1.0)
    assert set(Ours(known, 9, b).to.values()) == {"fp32"}
    assert set(Ours(known, 9, b, revert="fastest").to.values()) == {"fp32"}
    with pytest.raises(CalibError, match="unknown revert precision"):
        Ours(space, 9, b, revert="bf16")


def test_predict_k_takes_fp16s_own_loss_off_the_budget():
    from calib.tuning.search import predict_k

    space = SearchSpace(groups=tuple("abcd"), ranking=tuple("abcd"),
                        latency={g: {"int8": 1, "fp16": 2, "fp32": 3} for g in "abcd"}, macs={},
                        scores={"a": 5.0, "b": 3.0, "c": 1.5, "d": 0.5})
    sq = Budget("sqnr", ">=", 25.0, "fp32")
    # 20 dB: noise 1e-2, 10**-2.5 allowed: INT8 may keep 31.6% of the scores -> revert a and b (20% left)
    assert predict_k(space, sq, 20.0) == 2
    # every group in FP16 at 27 dB uses 63% of what is allowed: 11.7% left -> a, b and c (5% left)
    assert predict_k(space, sq, 20.0, floor=27.0) == 3
    agree = Budget("agreement", ">=", 0.9, "fp32")
    assert predict_k(space, agree, 0.5, floor=0.9) == 4        # FP16 uses it all: revert everything
