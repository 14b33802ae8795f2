"""calib search on real models (calib.mixed, calib.tuning, calib search): the searched plan meets
the budget on held-out samples, keeps most MACs in INT8, within ceil(log2 G) + 3 evaluations, and
is no slower than Polygraphy's and NNCF's schemes at the same number of evaluations; embeddings
from token ids; budget errors; a reproducible trace; the outputs written as one set.

Small splits (tens of samples) keep this affordable: each real search here calibrates once,
measures one sensitivity per group, then runs its strategies on the same evaluator."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from calib.cli import main
from calib.errors import BudgetError
from calib.tuning.budget import Measurement


def _bound(s) -> int:
    return math.ceil(math.log2(len(s.quantizable))) + 3


def _searched(s):
    """Ours, its verification, each baseline, and ours limited to each baseline's evaluations."""
    ours = s.run("ours")
    plan, model, ver = s.finish(ours)
    base = {a: s.run(a, len(s.quantizable) + 1 if a == "greedy" else None)
            for a in ("bisect-prefix", "bisect-suffix", "greedy")}
    short = {a: s.run("ours", len(o.evaluations)) for a, o in base.items()}
    return {"searcher": s, "ours": ours, "plan": plan, "model": model, "ver": ver, "base": base, "short": short}


# Latency predicted for a T4 by the roofline model: deterministic (a measured model moves with the
# machine's load, and the search's choices with it), and a GPU where INT8 pays for heavy layers.
LATENCY = "roofline:t4"


@pytest.fixture(scope="module")
def rec(shared_model, ocr_lines_dir):
    """PP-OCRv4 rec, max calibration (entropy clips this model's activations: all-INT8 misreads
    most lines), against the labels: CER may rise by at most half a point. All 132 held-out lines."""
    from calib.mixed import Searcher

    s = Searcher(shared_model("ppocrv4_rec"), ocr_lines_dir, "cer_increase<=0.5",
                 {"algorithm": "max", "samples": 32, "eval_samples": None}, preprocess="paddleocr-rec",
                 text_labels=ocr_lines_dir / "labels.tsv", search_samples=48, latency=LATENCY, progress=False)
    return _searched(s)


@pytest.fixture(scope="module")
def effnet(efficientnet_path, imagenet_dir, imagenet_classes):
    """EfficientNet-Lite0 held to 25 dB of output SQNR (all-INT8 keeps about 22): with tens of
    images a continuous metric is what a tight budget can be decided on (all-INT8 agrees with
    FP32's top-1 on every one of 64 images)."""
    from calib.mixed import Searcher

    s = Searcher(efficientnet_path, imagenet_dir, "sqnr>=25", {"samples": 32, "eval_samples": 128},
                 preprocess="efficientnet-lite", classes=imagenet_classes, search_samples=32, latency=LATENCY,
                 progress=False)
    return _searched(s)


def _no_slower(r, baseline: str) -> None:
    """Ours is no slower than *baseline*, with all its evaluations and when limited to as many
    evaluations as the baseline used."""
    ours, o, short = r["ours"], r["base"][baseline], r["short"][baseline]
    assert ours.predicted_latency_s <= o.predicted_latency_s, baseline
    assert len(short.evaluations) <= len(o.evaluations), baseline
    assert short.predicted_latency_s <= o.predicted_latency_s, (baseline, short.to_dict()["chosen"])


def _check_acceptance(r, budget: str, baselines=("bisect-prefix", "bisect-suffix", "greedy")):
    s, ours, ver = r["searcher"], r["ours"], r["ver"]
    assert str(s.budget) == budget
    # all INT8 violates the budget on the search split and on the held-out samples
    first = ours.evaluations[0]
    assert first.label == "all INT8" and not first.holds
    assert not ver["all-int8"]["holds"]
    # the search meets it on the search split, then on the held-out samples, with most MACs in INT8
    assert ours.met and len(ours.evaluations) <= _bound(s)
    assert ver["mixed"]["holds"], ver["mixed"]["measurement"]
    assert ver["samples"] == len(s.eval_data) and not set(s.eval_data.ids) & set(s.search_data.ids)
    assert ours.int8_mac_share > 0.5
    # every evaluation recorded with its interval, the budget decision and the plan's cost
    for e in ours.evaluations:
        m = Measurement(e.metric, *e.interval, e.samples)
        assert e.interval[0] <= e.metric <= e.interval[1]
        assert e.holds == s.budget.holds_with(m, 0.0) == s.budget.holds(e.metric)
        assert e.predicted_latency_s == pytest.approx(s.space.predict(e.precisions))
    # no slower than the baseline schemes, with all its evaluations and at the baseline's count
    for a in baselines:
        _no_slower(r, a)


def test_rec_search_meets_a_cer_budget_on_held_out_lines(rec):
    _check_acceptance(rec, "cer_increase<=0.5")
    s = rec["searcher"]
    assert s.budget.against == "labels" and s.search_disjoint
    # on a T4 FP16 is faster than FP32 and every group in FP16 meets the budget: groups taken out
    # of INT8 go to FP16, in the bisection itself
    assert s.fp16_value is not None and s.budget.holds(s.fp16_value)
    assert any("reverted groups go to FP16" in n for n in rec["ours"].notes)
    # the recogniser's plan is a node-level precision plan TensorRT and calib.qdq read
    plan = rec["plan"]
    assert plan.default == "int8" and "cer_increase<=0.5" in plan.comment
    reverted = {g: p for g, p in rec["ours"].chosen.items() if p != "int8"}
    groups = {g.id: g for g in s.groups}
    assert reverted and all(plan.layers.get(n) == p for g, p in reverted.items() for n in groups[g].nodes)


def test_rec_search_reverting_to_fp32_only(rec):
    """With FP16 ruled out (an engine built without it), every reverted group is FP32 and the plan
    still meets the budget on the search split, slower than with FP16."""
    s = rec["searcher"]
    o = s.run("ours", revert="fp32")
    assert o.met and set(o.chosen.values()) == {"int8", "fp32"} and len(o.evaluations) <= _bound(s)
    assert o.predicted_latency_s >= rec["ours"].predicted_latency_s


def test_effnet_search_meets_a_tight_sqnr(effnet):
    _check_acceptance(effnet, "sqnr>=25")


def test_sensitivities_are_reported_with_their_rank_agreement(effnet):
    sens = effnet["searcher"].sensitivity
    assert sens.used == "direct" and sens.direct_mode == "only"
    assert sens.spearman is not None and -1.0 <= sens.spearman <= 1.0
    rows = sens.groups
    assert sorted(g.rank_direct for g in rows) == list(range(1, len(rows) + 1))
    assert sorted(g.rank_proxy for g in rows) == list(range(1, len(rows) + 1))
    # the direct ranking puts the group whose INT8 alone loses most first
    first = min(rows, key=lambda g: g.rank_direct)
    assert first.direct_loss == max(g.direct_loss for g in rows)
    # for an SQNR budget the loss is the SQNR with the group alone in INT8, the score its noise power
    assert first.direct_sqnr_db == min(g.direct_sqnr_db for g in rows)
    assert first.score == max(g.score for g in rows) == pytest.approx(10 ** (-first.direct_sqnr_db / 10))
    assert all(g.score >= 0 for g in rows)


def test_minilm_embedding_search_from_token_ids_cli(minilm_path, minilm_tokens, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["search", "--model", str(minilm_path), "--data", str(minilm_tokens), "--limit", "160",
               "--task", "embedding", "--budget", "cosine>=0.99", "--samples", "32", "--search-samples", "24",
               "--eval-samples", "48", "--out", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    s = json.loads(cap.out)
    assert s["task"] == "embedding" and s["budget"]["expression"] == "cosine>=0.99"
    assert s["budget"]["harness_metric"] == "cosine"
    names = sorted(p.name for p in out.iterdir())
    stem = minilm_path.stem
    assert names == sorted(["plan.json", f"{stem}.mixed.onnx", f"{stem}.cache", f"{stem}.cache.json", "search.json",
                            "search.png"])
    assert json.loads((out / "search.json").read_text()) == s
    mixed = s["verification"]["mixed"]
    assert mixed["holds"] and float(mixed["measurement"]["value"]) >= 0.99
    assert s["search"]["evaluations_used"] <= s["max_evals"]
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the mixed model runs on the token ids
    from calib.backends.onnxruntime import OrtEngine

    d = np.load(minilm_tokens)
    res = OrtEngine(out / f"{stem}.mixed.onnx").run({k: d[k][:2] for k in ("input_ids", "attention_mask")})
    assert all(np.isfinite(v).all() for v in res.values() if v.dtype.kind == "f")


def test_same_seed_same_trace(minilm_path, minilm_tokens):
    """A tighter cosine budget makes the search run; twice with the same seed, the same trace."""
    import calib
    from calib.datasets import open_dataset

    def once():
        ds = open_dataset(minilm_tokens, minilm_path, limit=96, seed=3)
        return calib.search(minilm_path, dataset=ds, budget="cosine>=0.998", task="embedding", samples=24, seed=3,
                            search_samples=16, eval_samples=16, sensitivity="proxy", progress=False,
                            latency="roofline:h100")

    a, b = once(), once()
    ta, tb = a.summary["search"], b.summary["search"]
    assert len(ta["evaluations"]) > 1
    assert ta == tb
    assert a.summary["sensitivity"] == b.summary["sensitivity"]
    assert a.plan.dumps() == b.plan.dumps()
    # an H100 runs FP16 faster than FP32: every group in FP16 was measured, and its verdict
    # decides the precision reverted groups take (the notes say which)
    f16 = a.summary["all_fp16"]
    assert f16 == b.summary["all_fp16"] and 0.0 < f16["value"] <= 1.0
    assert f16["holds"] == (f16["value"] >= 0.998)
    reverted = {p for p in a.precisions.values() if p != "int8"}
    if f16["holds"]:
        assert any("go to FP16" in n for n in ta["notes"]) and reverted <= {"fp16"}


@pytest.mark.parametrize("budget, words", [
    ("agreement<=0.9", "points the wrong way"),
    ("ctc_agreement>=0.9", "valid metrics for classification: top1_drop, agreement, cosine, sqnr"),
    ("accuracy>=0.9", "unknown budget metric 'accuracy'"),
    ("agreement>=2", "from 0 to 1"),
])
def test_budget_errors_are_one_line(budget, words, efficientnet_path, imagenet_dir, tmp_path, capsys):
    rc = main(["search", "--model", str(efficientnet_path), "--data", str(imagenet_dir), "--task", "classification",
               "--budget", budget, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == BudgetError.exit_code and err.startswith("error: ") and "\n" not in err
    assert words in err
    assert not (tmp_path / "o").exists()


def test_budget_must_fit_the_task_and_the_labels(minilm_path, minilm_tokens, tmp_path, capsys):
    import calib
    from calib.datasets import open_dataset

    rc = main(["search", "--model", str(minilm_path), "--data", str(minilm_tokens), "--limit", "40",
               "--budget", "agreement>=0.99", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == BudgetError.exit_code and "\n" not in err
    assert "agreement does not apply to this embedding model; valid metrics for embedding: cosine, sqnr" in err
    ds = open_dataset(minilm_tokens, minilm_path, limit=40)
    with pytest.raises(BudgetError, match="against the labels, but the data has none"):
        calib.search(minilm_path, dataset=ds, budget="top1_drop<=0.5", progress=False)


def test_dry_run_lists_the_groups(efficientnet_path, capsys):
    assert main(["search", "--model", str(efficientnet_path), "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    ids = [g["id"] for g in d["groups"]]
    assert len(ids) == len(set(ids))
    assert sum(g["quantizable"] for g in d["groups"]) >= 40
    assert main(["search", "--model", str(efficientnet_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "quantizable" in out and "/_conv_stem/Conv" in out


def test_revert_errors_are_one_line(efficientnet_path, imagenet_dir, tmp_path, capsys):
    rc = main(["search", "--model", str(efficientnet_path), "--data", str(imagenet_dir), "--preset",
               "efficientnet-lite", "--budget", "sqnr>=25", "--algorithm", "bisect-prefix", "--revert", "fp32",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("error: ") and "\n" not in err and "revert applies to ours and greedy" in err
    assert not (tmp_path / "o").exists()


def test_search_refuses_to_overwrite(efficientnet_path, imagenet_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.json").write_text("{}")
    rc = main(["search", "--model", str(efficientnet_path), "--data", str(imagenet_dir), "--preset",
               "efficientnet-lite", "--budget", "agreement>=0.99", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and "plan.json" in err and (out / "plan.json").read_text() == "{}"
