"""Sweeps (issue 18): the TOML grid, statistics collected once and reused, the SQLite store, the
Pareto front, the CLI, and the acceptance sweep on EfficientNet-Lite0 killed with SIGKILL midway
and resumed.

The flow tests run on the bundled SqueezeNet 1.1 and photos (datasets/); the acceptance test on
EfficientNet-Lite0 and the shared ImageNet photos, kept small (a few calibration samples, a small
eval split, no CPU timing, no bias correction): it checks the machinery, not the accuracy.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from calib.cli import main
from calib.datasets import open_dataset
from calib.errors import CalibError
from calib.model import load_model
from calib.pipeline import CalibrationConfig, Statistics, calibrate, calibration_splits, gather_statistics
from calib.sweep import export_csv, load, make_grid, sweep
from calib.sweep.front import pareto
from calib.sweep.grid import load_grid
from calib.sweep.points import PointConfig
from calib.sweep.store import Store, csv_text
from conftest import REPO
from test_calibrate_cli import CLASSES, IMAGES, MODEL  # the bundled SqueezeNet and photos

LINE = re.compile(r"^\[\s*(\d+)/(\d+)\] (\w+)\s+(.*?): ")


def _grid(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.toml"
    p.write_text(text)
    return p


# --------------------------------------------------------------------------- grid
def test_grid_expands_axes_with_calibrates_defaults(tmp_path):
    g = load_grid(_grid(tmp_path, 'algorithm = ["max", "percentile", "percentile:99.9"]\nsamples = [8, 16]\n'
                                  'seed = 3\ntarget = ["onnxruntime"]\n[calibration]\nbias_correction = false\n'))
    d = CalibrationConfig()
    assert g.axes["algorithm"] == ("max", "percentile:99.99", "percentile:99.9")
    assert g.axes["seed"] == (3,) and g.axes["plan"] == ("int8",) and g.axes["batch_size"] == (d.batch_size,)
    assert g.calibration == {"bias_correction": False}
    pts = g.points()
    assert len(pts) == 6 and len(set(pts)) == 6
    # points sharing statistics (samples, seed) are adjacent, in the grid's order
    assert [(p.samples, p.algorithm) for p in pts[:3]] == [(8, "max"), (8, "percentile:99.99"), (8, "percentile:99.9")]
    assert g.varying() == ("algorithm", "samples")
    # a key covers every field, the model and the data; a batch size does not change the model's key
    a, b = pts[0], PointConfig(**dict(pts[0].to_dict(), batch_size=4))
    assert a.key("m", "d") != b.key("m", "d") and a.model_key("m", "d") == b.model_key("m", "d")
    assert a.key("m", "d") != a.key("m2", "d") != a.key("m", "d2")
    assert a.key("m", "d", {"eval_samples": 8}) != a.key("m", "d", {"eval_samples": 9})


@pytest.mark.parametrize("text, message", [
    ('algo = ["max"]', "unknown axis 'algo'; valid axes: algorithm, samples, seed, plan, batch_size, target"),
    ('algorithm = ["maximum"]', "algorithm 'maximum' is unknown; choose from entropy, max, mse, auto, percentile"),
    ('algorithm = ["percentile:120"]', "percentile must be a number in (0, 100]"),
    ('samples = [0]', "samples values must be integers of at least 1, got 0"),
    ('seed = ["a"]', "seed values must be integers, got 'a'"),
    ('target = ["gpu"]', "target 'gpu' is unknown; choose from tensorrt, onnxruntime"),
    ('plan = ["int4"]', "plan 'int4' is unknown and no such plan file exists; choose from int8, fp16"),
    ('samples = []', "samples is an empty list"),
    ('algorithm = ["max", "max"]', "algorithm lists 'max' twice"),
    ('[calibration]\nalpha = 1', "unknown [calibration] option 'alpha'; valid: smooth, bias_correction, trt_version"),
    ('[calibration]\nsmooth = 2.0', "[calibration] smooth must be a number in [0, 1]"),
    ('samples = [8', "not valid TOML"),
])
def test_grid_errors_are_one_line_naming_the_choices(tmp_path, capsys, text, message):
    path = _grid(tmp_path, text)
    with pytest.raises(CalibError) as exc:
        load_grid(path)
    assert message in str(exc.value) and "\n" not in str(exc.value) and str(path) in str(exc.value)
    # the CLI: one error line, before the model or the data are read (neither exists here)
    rc = main(["sweep", "--model", str(tmp_path / "none.onnx"), "--data", str(tmp_path / "none"), "--grid", str(path),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_plan_files_count_by_content(tmp_path):
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"format": "calib-precision-plan", "version": 1, "default": "int8",
                                "layers": {"conv1": "fp32"}}))
    g = make_grid({"plan": [str(plan)]})
    key = g.points()[0].key("m", "d")
    plan.write_text(json.dumps({"format": "calib-precision-plan", "version": 1, "default": "int8",
                                "layers": {"conv1": "fp16"}}))
    assert g.points()[0].key("m", "d") != key
    plan.write_text("{")
    with pytest.raises(CalibError, match="invalid JSON"):
        make_grid({"plan": [str(plan)]})


# --------------------------------------------------------------------------- statistics
def test_statistics_collected_once_serve_every_algorithm_exactly():
    """calibrate(statistics=) with one pass of statistics (stored as bytes, read back) writes the
    same cache and Q/DQ model, byte for byte, as calibrate collecting its own, for every algorithm."""
    m = load_model(MODEL)
    ds = open_dataset(IMAGES, m, "caffe", classes=CLASSES)
    base = CalibrationConfig(samples=8, seed=1, evaluate=False)
    calib_ds, _ = calibration_splits(ds, 8, 1)
    st = Statistics.from_bytes(gather_statistics(m, calib_ds, base, auto=True, histogram=True,
                                                 progress=False).to_bytes())
    assert st.ids == calib_ds.ids and st.auto_samples == 4 and len(st.parts) == 2 and st.histogram
    for alg in ("max", "percentile", "mse", "auto"):
        cfg = base.replace(algorithm=alg)
        own = calibrate(m, dataset=ds, config=cfg, write=False, progress=False)
        reused = calibrate(m, dataset=ds, config=cfg, write=False, progress=False, statistics=st)
        assert reused.summary["sha256"] == own.summary["sha256"], alg
        assert reused.summary["timing_s"]["collect"] == 0.0
    # statistics of other samples, another smoothing, or without histograms are refused
    with pytest.raises(CalibError, match="collected on other samples"):
        calibrate(m, dataset=ds, config=base.replace(seed=2), write=False, progress=False, statistics=st)
    with pytest.raises(CalibError, match="smoothing alpha"):
        calibrate(m, dataset=ds, config=base.replace(smooth=None), write=False, progress=False, statistics=st)
    ranges = gather_statistics(m, calib_ds, base.replace(algorithm="max"), progress=False)
    assert not ranges.histogram
    with pytest.raises(CalibError, match="needs histograms"):
        calibrate(m, dataset=ds, config=base, write=False, progress=False, statistics=ranges)
    with pytest.raises(ValueError, match="calib-statistics"):
        Statistics.from_bytes(b"PK\x03\x04 not an archive")


# --------------------------------------------------------------------------- front and store
def test_pareto_front():
    pts = [(1.0, 0.90), (2.0, 0.95), (2.0, 0.90), (3.0, 0.95), (0.5, 0.50), (2.0, 0.95)]
    assert pareto(pts) == [4, 0, 1, 5]          # (2, .95) twice: both; (3, .95) and (2, .90) are dominated
    assert pareto([(1.0, 5.0), (2.0, 1.0), (3.0, 0.5)], higher_is_better=False) == [0, 1, 2]
    assert pareto([(1.0, 1.0), (2.0, 5.0)], higher_is_better=False) == [0]
    assert pareto([]) == []


def test_a_front_fp32_dominates_is_empty_and_still_drawn():
    """On a loaded machine INT8 Q/DQ models can time slower on the CPU than FP32 with no better
    top-1: FP32 dominates every point, the CPU front is empty, and the table and plot say so."""
    from calib.sweep.front import Metric, front, front_table, plot_front

    def row(alg, rel, top1):
        return {"config": PointConfig(algorithm=alg, samples=4).to_dict(), "status": "ok",
                "cpu": {"latency_ms": 10.0 * rel, "fp32_latency_ms": 10.0},
                "metrics": {"top1": {"candidate": {"estimate": top1, "low": top1 - 0.1, "high": top1 + 0.1},
                                     "reference": {"estimate": 0.6}}}}

    metric = Metric("top1", higher_is_better=True, percent=True, labels=True)
    slow = [row("max", 1.3, 0.6), row("entropy", 1.1, 0.5)]
    assert front(slow, "cpu", metric) == []
    assert "no point: FP32" in front_table(slow, metric, ["cpu"])
    png = plot_front(slow, "cpu", metric, subject="m")
    assert png.startswith(b"\x89PNG")
    # one point faster than FP32 is the front
    fast = slow + [row("mse", 0.5, 0.55)]
    assert [r["config"]["algorithm"] for r in front(fast, "cpu", metric)] == ["mse"]
    assert plot_front(fast, "cpu", metric).startswith(b"\x89PNG")


def test_store_keeps_one_row_per_point(tmp_path):
    row = {"config": PointConfig(algorithm="max", samples=4).to_dict(), "status": "ok", "timing_s": {"total": 1.0},
           "fidelity": {"name": "top1_agreement", "candidate": {"estimate": 0.5, "low": 0.25, "high": 0.75}}}
    with Store(tmp_path / "sweep.db") as st:
        run = st.start_run({})
        st.put("k1", row, run)
        st.put("k1", dict(row, status="failed", error="boom"), run)
        st.put("k2", row, run)
        rows = st.rows()
        assert [(r["key"], r["status"]) for r in rows] == [("k1", "failed"), ("k2", "ok")]
        assert rows[1]["fidelity_low"] == 0.25 and rows[1]["algorithm"] == "max" and rows[1]["row"] == row
        assert st.status() == {"k1": "failed", "k2": "ok"}
        st.finish_run(run, 1, 0, 1)
        assert st.runs()[0]["failed"] == 1
        text = csv_text(rows)
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["key"] for r in table] == ["k1", "k2"] and table[0]["error"] == "boom" and table[1]["fidelity"] == "0.5"
    (tmp_path / "bad.db").write_text("not a database at all" * 100)
    with pytest.raises(CalibError, match="not a sweep store"):
        Store(tmp_path / "bad.db")
    with pytest.raises(CalibError, match="no sweep results"):
        Store(tmp_path / "none" / "sweep.db", create=False)


# --------------------------------------------------------------------------- a sweep, end to end
@pytest.fixture(scope="module")
def squeezenet_sweep(tmp_path_factory):
    """4 points of SqueezeNet on the bundled photos: max / entropy x int8 / fp16."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    lines: list[str] = []
    res = sweep(MODEL, IMAGES, {"algorithm": ["max", "entropy"], "samples": [6], "plan": ["int8", "fp16"],
                                "batch_size": [2]},
                out=out, preprocess="caffe", classes=CLASSES, timing_runs=4, eval_samples=10, progress=False,
                echo=lines.append)
    return res, out, lines


def test_sweep_point_is_what_calibrate_writes(squeezenet_sweep):
    res, out, lines = squeezenet_sweep
    assert res.counts() == {"computed": 4, "cached": 0, "failed": 0}
    rows = {(r["config"]["algorithm"], r["config"]["plan"]): r for r in res.rows}
    m = load_model(MODEL)
    ds = open_dataset(IMAGES, m, "caffe", classes=CLASSES)
    for alg in ("max", "entropy"):
        own = calibrate(m, dataset=ds, algorithm=alg, samples=6, batch_size=2, evaluate=False, write=False,
                        progress=False)
        row = rows[(alg, "int8")]
        assert row["calibration"]["sha256"] == own.summary["sha256"], alg
        folder = out / "models" / row["model_dir"]
        assert (folder / "squeezenet1_1_fp32.int8.onnx").read_bytes() == own.qdq_model.serialize()
    # the fp16 plan keeps nothing in INT8, whatever the algorithm; its weights count 2 bytes
    fp16, int8 = rows[("max", "fp16")], rows[("max", "int8")]
    assert fp16["calibration"]["int8_nodes"] == 0 and fp16["calibration"]["fp16_nodes"] > 0
    assert int8["calibration"]["int8_nodes"] > 0
    fp32_bytes = int8["size"]["fp32_weight_bytes"]
    assert int8["size"]["weight_bytes"] < 0.3 * fp32_bytes
    assert 0.49 * fp32_bytes < fp16["size"]["weight_bytes"] < 0.51 * fp32_bytes
    assert len(lines) == 5 and sum("computed" in ln for ln in lines) == 4 and lines[0].startswith("statistics of n6 s0")


def test_sweep_rows_hold_metrics_timings_and_predictions(squeezenet_sweep):
    res, out, _ = squeezenet_sweep
    for r in res.rows:
        assert r["status"] == "ok" and r["eval_samples"] == 10 and r["task"] == "classification"
        acc, fid = r["accuracy"], r["fidelity"]
        assert (acc["name"], fid["name"]) == ("top1", "top1_agreement")
        for m in (acc, fid):
            c = m["candidate"]
            assert 0.0 <= c["low"] <= c["estimate"] <= c["high"] <= 1.0
        assert acc["reference"]["estimate"] is not None and acc["difference"] is not None
        cpu = r["cpu"]
        assert cpu["runs"] == 4 and cpu["batch"] == 2
        assert 0 < cpu["latency_ms"] <= cpu["p90_ms"] and 0 < cpu["fp32_latency_ms"] <= cpu["fp32_p90_ms"]
        assert cpu["throughput"] > 0 and cpu["fp32_throughput"] > 0
        pred = r["predicted"]
        assert pred["predicted"] and pred["model"] == "roofline:h100" and pred["latency_ms"] > 0
        assert "skipped" in r["tensorrt"] and "TensorRT" in r["tensorrt"]["skipped"]
        assert r["reused"]["statistics"] is True      # the group's statistics were collected first, once
    assert len(list((out / "stats").glob("*.npz"))) == 1
    by = {(r["config"]["algorithm"], r["config"]["plan"]): r["predicted"]["latency_ms"] for r in res.rows}
    assert by[("max", "int8")] == by[("entropy", "int8")] < by[("max", "fp16")] < res.rows[0]["predicted"][
        "fp32_latency_ms"]


def test_sweep_show_and_exports(squeezenet_sweep, capsys, tmp_path):
    res, out, _ = squeezenet_sweep
    for name in ("front.md", "front_cpu.png", "front_gpu.png", "front_size.png"):
        assert (out / name).is_file(), name
    assert (out / "front_cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front_md = (out / "front.md").read_text()
    assert "### top1 against model size" in front_md
    assert "### top1 against GPU latency predicted by roofline:h100 (not measured)" in front_md
    assert main(["sweep", "show", str(out)]) == 0
    text = capsys.readouterr().out
    assert all(lbl in text for lbl in ("max int8", "max fp16", "entropy int8", "entropy fp16"))
    assert main(["sweep", "show", str(out), "--csv", str(tmp_path / "p.csv")]) == 0
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(table) == 4 and {r["plan"] for r in table} == {"int8", "fp16"}
    assert all(r["status"] == "ok" for r in table)
    capsys.readouterr()
    assert main(["sweep", "show", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["key"] for r in rows) == sorted(r["key"] for r in load(out))
    assert main(["sweep", "show", str(out), "--metric", "nope"]) != 0
    assert "no point has the metric 'nope'; the points have: " in capsys.readouterr().err
    assert export_csv(out).count("\n") == 5


def test_failing_point_is_stored_and_retried(tmp_path, monkeypatch):
    import calib.sweep.points as P

    real = P._calibrated

    def flaky(cfg, *a, **kw):
        if cfg.algorithm == "entropy":
            raise CalibError("entropy is broken today\nsecond line")
        return real(cfg, *a, **kw)

    monkeypatch.setattr(P, "_calibrated", flaky)
    out = tmp_path / "out"
    kw = dict(out=out, preprocess="caffe", classes=CLASSES, timing_runs=0, eval_samples=6, progress=False,
              latency=None, echo=lambda line: None)
    grid = {"algorithm": ["entropy", "max"], "samples": [4]}
    res = sweep(MODEL, IMAGES, grid, **kw)
    assert res.counts() == {"computed": 1, "cached": 0, "failed": 1}
    rows = {r["algorithm"]: r for r in load(out)}
    assert rows["entropy"]["status"] == "failed" and rows["entropy"]["error"] == "entropy is broken today"
    assert rows["max"]["status"] == "ok" and rows["max"]["cpu_ms"] is None and rows["max"]["predicted_ms"] is None
    monkeypatch.setattr(P, "_calibrated", real)
    res = sweep(MODEL, IMAGES, grid, **kw)           # a rerun retries the failed point, keeps the finished one
    assert res.counts() == {"computed": 1, "cached": 1, "failed": 0}
    assert {r["algorithm"]: r["status"] for r in load(out)} == {"entropy": "ok", "max": "ok"}


def test_sweep_refuses_another_model_in_the_folder(squeezenet_sweep, efficientnet_path, imagenet_dir):
    _, out, _ = squeezenet_sweep
    with pytest.raises(CalibError, match="holds a sweep of another model; choose another --out, or pass --force"):
        sweep(efficientnet_path, imagenet_dir, {"samples": [2]}, out=out, preprocess="efficientnet-lite", limit=8,
              progress=False)


def test_tensorrt_timings_where_tensorrt_exists(tmp_path, monkeypatch):
    """With TensorRT (the stand-in of tests/fake_tensorrt.py) and a GPU, a point's Q/DQ model is built
    as an explicit-quantization engine (FP16 allowed for a plan with fp16 layers) and timed beside an
    FP32 engine built once for the sweep; a failed build is the row's error, not the point's."""
    import calib.backends.tensorrt as trt
    import calib.backends.tensorrt.cuda as cuda
    import fake_tensorrt
    from calib.errors import BackendError
    from calib.sweep.points import tensorrt_timing

    builds, timed = [], []

    def build_engine(src, engine, *, options, overwrite, log):
        builds.append((Path(src).name, engine.name, options.mode, options.fp16))
        engine.write_bytes(b"engine")

    def benchmark(engine, *, batch_sizes, iterations, warmup):
        timed.append((engine.name, batch_sizes, iterations))
        return {}, [{"batch_size": b, "latency_ms": {"median": 1.0 / b}} for b in batch_sizes]

    monkeypatch.setattr(trt, "import_tensorrt", lambda *a: fake_tensorrt.make())
    monkeypatch.setattr(cuda, "require_gpu", lambda: None)
    monkeypatch.setattr(trt, "build_engine", build_engine, raising=False)
    monkeypatch.setattr(trt, "benchmark", benchmark, raising=False)
    folder = tmp_path / "models" / "k1"
    folder.mkdir(parents=True)
    res = tensorrt_timing(folder / "m.int8.onnx", "m.onnx", folder, 8, 20, fp16=True)
    assert builds == [("m.int8.onnx", "model.engine", "explicit", True), ("m.onnx", "fp32.engine", None, False)]
    assert timed == [("model.engine", [1, 8], 20), ("fp32.engine", [1, 8], 20)]
    assert [r["batch_size"] for r in res["candidate"]] == [1, 8] and res["fp32"][1]["latency_ms"]["median"] == 0.125
    other = tmp_path / "models" / "k2"
    other.mkdir()
    builds.clear()
    tensorrt_timing(other / "m.int8.onnx", "m.onnx", other, 1, 5, fp16=False)
    assert builds == [("m.int8.onnx", "model.engine", "explicit", False)]      # the FP32 engine is built once

    def broken(*a, **kw):
        raise BackendError("TensorRT could not parse the model\ndetails")

    monkeypatch.setattr(trt, "build_engine", broken, raising=False)
    (other / "model.engine").unlink()
    assert tensorrt_timing(other / "m.int8.onnx", "m.onnx", other, 1, 5, fp16=False) == {
        "error": "TensorRT could not parse the model"}


def test_search_plan_axis(tmp_path):
    out = tmp_path / "out"
    res = sweep(MODEL, IMAGES, {"algorithm": ["max"], "samples": [8], "plan": ["int8", "search:agreement>=0.99"]},
                out=out, preprocess="caffe", classes=CLASSES, timing_runs=0, eval_samples=10, progress=False,
                echo=lambda line: None)
    assert res.counts()["computed"] == 2
    rows = {r["config"]["plan"]: r for r in res.rows}
    found = rows["search:agreement>=0.99"]
    assert found["status"] == "ok" and found["calibration"]["search"]["budget"] == "agreement>=0.99"
    assert (out / "models" / found["model_dir"] / "plan.json").is_file()


# --------------------------------------------------------------------------- acceptance
ACCEPTANCE_GRID = """\
algorithm = ["max", "entropy", "percentile:99.99", "mse"]
samples = [8, 16, 24]
seed = [0, 1]
batch_size = [4]
[calibration]
bias_correction = false
"""


def _sweep_argv(model: Path, images: Path, classes: Path, grid: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--model", str(model), "--data", str(images), "--preset", "efficientnet-lite", "--classes",
            str(classes), "--limit", "60", "--grid", str(grid), "--out", str(out), "--eval-samples", "12",
            "--timing-runs", "0", *extra]


def _stored(out: Path) -> dict[str, tuple]:
    with sqlite3.connect(out / "sweep.db") as c:
        return {k: (run, fin, status) for k, run, fin, status in
                c.execute("SELECT key, run_id, finished, status FROM points")}


def _results(rows) -> dict:
    """What a point found, without its timings and where it ran."""
    keep = ("fidelity", "accuracy", "metrics", "size", "predicted", "eval_samples", "task")
    return {r["key"]: (r["status"], json.dumps({k: r["row"].get(k) for k in keep}, sort_keys=True),
                       r["row"]["calibration"]["sha256"]) for r in rows}


def test_acceptance_sweep_killed_midway_resumes(tmp_path, efficientnet_path, imagenet_dir, imagenet_classes, capsys):
    """4 algorithms x 3 sample counts x 2 seeds on EfficientNet-Lite0: SIGKILL after 6 computed
    points, rerun: the finished points come back cached (their rows untouched), the rest are
    computed, the store holds each of the 24 points once and each group's statistics were
    collected once. Then --jobs 2 (two worker processes, one ONNX Runtime thread each) computes the
    same results as --jobs 1 (this process, every core), timings aside."""
    grid = _grid(tmp_path, ACCEPTANCE_GRID)
    out = tmp_path / "out"
    argv = _sweep_argv(efficientnet_path, imagenet_dir, imagenet_classes, grid, out)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "calib", *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=REPO, env=env)
    first: list[str] = []
    try:
        for line in proc.stdout:
            first.append(line.rstrip("\n"))
            if sum(LINE.match(ln) is not None and LINE.match(ln).group(3) == "computed" for ln in first) == 6:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "\n".join(first)
    before = _stored(out)
    assert 6 <= len(before) < 24 and all(s == "ok" for _, _, s in before.values())
    axes = ("algorithm", "samples", "seed")
    done_labels = {PointConfig.from_dict(r["row"]["config"]).label(axes) for r in load(out)}
    assert len(done_labels) == len(before)
    stats_before = len(list((out / "stats").glob("*.npz")))

    assert main(argv) == 0
    second = capsys.readouterr().out.splitlines()
    status = {m.group(4): m.group(3) for m in map(LINE.match, second) if m}
    assert len(status) == 24
    assert {lbl for lbl, s in status.items() if s == "cached"} == done_labels
    assert all(s == "computed" for lbl, s in status.items() if lbl not in done_labels)
    after = _stored(out)
    assert len(after) == 24 and all(s == "ok" for _, _, s in after.values())
    assert {k: after[k] for k in before} == before          # finished points: same run id and timestamp
    with sqlite3.connect(out / "sweep.db") as c:
        assert c.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM points").fetchone() == (24, 24)
        runs = c.execute("SELECT computed, cached, finished FROM runs ORDER BY started").fetchall()
    assert runs[0][2] is None and runs[1][:2] == (24 - len(before), len(before))   # the killed run never finished
    # each (samples, seed) group's statistics collected once: the rerun collected only the missing ones
    assert len(list((out / "stats").glob("*.npz"))) == 6
    assert sum(ln.startswith("statistics of ") for ln in second) == 6 - stats_before

    # --jobs 2: the same results for the same points (a sub-grid, into another folder)
    (tmp_path / "sub").mkdir()
    sub = _grid(tmp_path / "sub", ACCEPTANCE_GRID.replace('"entropy", "percentile:99.99", ', "")
                .replace("[8, 16, 24]", "[16]"))
    out2 = tmp_path / "out2"
    assert main(_sweep_argv(efficientnet_path, imagenet_dir, imagenet_classes, sub, out2, "--jobs", "2")) == 0
    capsys.readouterr()
    two = _results(load(out2))
    one = _results(load(out))
    assert len(two) == 4 and all(s == "ok" for s, _, _ in two.values())
    assert {k: one[k] for k in two} == two
    pids = {r["row"]["pid"] for r in load(out2)}
    assert os.getpid() not in pids and len(pids) >= 1

