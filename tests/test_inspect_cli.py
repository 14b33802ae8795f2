"""`calib inspect --data`: the FP32 top-1/top-5 it prints, checked on real models and photographs
against an independent count (a sample is a top-k hit when fewer than k classes score above its label)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calib.backends.onnxruntime import OrtEngine
from calib.cli import main
from calib.datasets import open_dataset
from calib.model import Model
from conftest import SHARED

IMAGES = SHARED / "data" / "imagenet-sample"
CLASSES = SHARED / "data" / "imagenet1k_classes.tsv"
LIMIT = 96


def _model(name: str) -> Path:
    p = SHARED / "models" / name
    if not (p.exists() and IMAGES.is_dir() and CLASSES.exists()):
        pytest.skip("shared models and images not present")
    return p


def _reference(path: Path, preset: str) -> tuple[float, float, int]:
    """Top-1 and top-5 by rank of the label's score, from a separate FP32 run over the same sample."""
    model = Model.load(path)
    ds = open_dataset(str(IMAGES), model, preprocess=preset, limit=LIMIT, classes=str(CLASSES))
    engine = OrtEngine(model)
    ranks = []
    for batch in ds.batches(batch_size=1):
        scores = engine.run(batch.feed)[engine.output_names[0]].reshape(-1)
        label = scores[batch.labels[0]]
        above, tied = int((scores > label).sum()), int((scores == label).sum()) - 1
        assert tied == 0 or above >= 5, "a tie at the label's rank would make top-k ambiguous"
        ranks.append(above)
    ranks = np.array(ranks)
    return round(float((ranks < 1).mean()), 4), round(float((ranks < 5).mean()), 4), ranks.size


def _argv(path: Path, preset: str) -> list[str]:
    return ["inspect", "--model", str(path), "--data", str(IMAGES), "--classes", str(CLASSES),
            "--preset", preset, "--limit", str(LIMIT), "--threads", "1"]


def test_inspect_json_top1_top5_match_an_independent_count(capsys):
    path = _model("efficientnet_lite0.onnx")          # [N, 1000] logits
    assert main(_argv(path, "efficientnet-lite") + ["--json"]) == 0
    run = json.loads(capsys.readouterr().out)["fp32_run"]
    top1, top5, n = _reference(path, "efficientnet-lite")
    assert run["samples"] == run["labelled"] == n == LIMIT
    assert (run["top1"], run["top5"]) == (top1, top5)
    assert 0.75 < run["top1"] < run["top5"]             # top-5 really counts five classes


def test_inspect_prints_top1_top5_of_a_probability_output(capsys):
    path = _model("squeezenet1_1_fp32.onnx")          # [1, 1000, 1, 1] softmax, fixed batch 1
    assert main(_argv(path, "caffe")) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("accuracy")]
    top1, top5, n = _reference(path, "caffe")
    assert top1 < top5
    assert lines == [f"accuracy  top-1 {top1 * 100:.1f}%  top-5 {top5 * 100:.1f}%  over {n} labelled samples"]


def test_inspect_groups_json_and_table(capsys, shared_model):
    """`calib inspect --groups` lists what calib.tuning.find_groups returns, as JSON and as a table;
    a model with dynamic spatial dimensions needs --shapes (one error line, no traceback)."""
    from calib.tuning import find_groups

    effnet = shared_model("efficientnet_lite0")
    assert main(["inspect", "--model", str(effnet), "--groups", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["groups"]
    assert got == [g.to_dict() for g in find_groups(effnet)]
    assert main(["inspect", "--model", str(effnet), "--groups"]) == 0
    out = capsys.readouterr().out
    assert f"groups    {len(got)}: {sum(g['quantizable'] for g in got)} quantizable" in out
    row = next(line for line in out.splitlines() if " /_blocks.0/_project_conv/Conv " in line).split()
    assert row[2:] == ["conv", "1", f"{16 * 112 * 112 * 32:,}", f"{48 * 112 * 112 * 4:,}", "yes"]

    rec = shared_model("ppocrv4_rec")
    assert main(["inspect", "--model", str(rec), "--groups"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: input 'x' has dynamic dimensions") and "--shapes x:1x3xDxD" in err
    assert main(["inspect", "--model", str(rec), "--groups", "--shapes", "x:1x3x48x320", "--json"]) == 0
    kinds = [g["kind"] for g in json.loads(capsys.readouterr().out)["groups"]]
    assert kinds.count("attention") == 2
    assert main(["inspect", "--model", str(rec), "--shapes", "x:1x3x48x320"]) == 2
    assert capsys.readouterr().err == "error: --shapes is only used with --groups\n"
