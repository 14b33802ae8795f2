"""`calibrate` / `calib calibrate` on the command line: outputs, errors, --force, Ctrl-C, quickstart.

Runs on the bundled data (datasets/: 48 ImageNet photographs and SqueezeNet 1.1), a few seconds
per calibration; the shared MobileNetV2 INT8 model is the already-quantized case.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import calib.utils
from calib.backends.onnxruntime import OrtEngine
from calib.cache import read_cache, read_sidecar
from calib.cli import main
from calib.model import Model

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "datasets"
IMAGES = BUNDLED / "imagenet-mini"
MODEL = BUNDLED / "models" / "squeezenet1_1_fp32.onnx"
CLASSES = BUNDLED / "imagenet1k_classes.tsv"
STEM = "squeezenet1_1_fp32"
SUMMARY = f"{STEM}.summary.json"
OUTPUTS = {f"{STEM}.cache", f"{STEM}.cache.json", f"{STEM}.int8.onnx", SUMMARY}

pytestmark = pytest.mark.skipif(not (IMAGES.is_dir() and MODEL.is_file()), reason="bundled datasets/ missing")


def _args(out, *extra):
    return ["calibrate", "--model", str(MODEL), "--data", str(IMAGES), "--preset", "caffe",
            "--classes", str(CLASSES), "--out", str(out), *extra]


def _files(d: Path) -> dict[str, bytes]:
    """Every file under *d* (hidden temp files included) -> its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()} \
        if d.exists() else {}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One default run (entropy, TensorRT placement, held-out check), shared by several tests."""
    out = tmp_path_factory.mktemp("cli") / "out"
    import io
    from contextlib import redirect_stderr, redirect_stdout

    so, se = io.StringIO(), io.StringIO()
    with redirect_stdout(so), redirect_stderr(se):
        rc = main(_args(out))
    return dict(out=out, rc=rc, stdout=so.getvalue(), stderr=se.getvalue(), files=_files(out))


def test_writes_exactly_the_four_outputs_and_prints_held_out(first_run):
    out = first_run["out"]
    assert first_run["rc"] == 0, first_run["stderr"]
    assert set(first_run["files"]) == OUTPUTS
    summary = json.loads(first_run["files"][SUMMARY])
    ho = summary["held_out"]
    # held-out agreement printed, with the same number the summary holds
    (cand,) = ho["report"]["candidates"]
    agree = next(m for m in cand["metrics"] if m["name"] == "top1_agreement")["candidate"]["estimate"]
    printed = [ln for ln in first_run["stdout"].splitlines() if ln.startswith("held-out")]
    assert len(printed) == 1 and f"top1_agreement {100 * agree:.2f}%" in printed[0]
    assert f"held-out ({ho['samples']} samples)" in printed[0] and 0.5 < agree <= 1.0
    for name in OUTPUTS:
        assert f"wrote {out / name}" in first_run["stdout"]
    # split: calibration + held-out = the 48 bundled images
    assert summary["calibration_samples"] + ho["samples"] == len(list(IMAGES.glob("*.JPEG")))
    # the artifacts are consistent with each other
    cache = read_cache(out / f"{STEM}.cache")
    side = read_sidecar(out / f"{STEM}.cache")
    assert side["model"]["sha256"] == Model.load(MODEL).sha256 == summary["model_sha256"]
    assert sorted(cache.scales) == side["cache"]["tensors"]
    q = Model.load(out / f"{STEM}.int8.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in q.nodes) and not Model.load(MODEL).is_quantized
    # and the Q/DQ model runs in ONNX Runtime
    x = np.random.default_rng(0).normal(0, 50, (1, 3, 224, 224)).astype(np.float32)
    assert OrtEngine(q).run({"data_0": x})["softmaxout_1"].shape == (1, 1000, 1, 1)


def test_again_without_force_fails_and_touches_nothing(first_run, capsys):
    out = first_run["out"]
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    rc = main(_args(out))
    cap = capsys.readouterr()
    assert rc != 0
    line = _one_error_line(cap.err)
    assert "already exists" in line and "--force" in line
    assert cap.out == ""
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_force_overwrites(first_run, capsys):
    out = first_run["out"]
    old = _files(out)
    # seed the summary with junk: --force must replace it
    (out / SUMMARY).write_text("junk")
    rc = main(_args(out, "--force", "--no-eval"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    new = _files(out)
    assert set(new) == OUTPUTS
    assert new[f"{STEM}.cache"] == old[f"{STEM}.cache"]          # same data, same scales
    assert new[f"{STEM}.int8.onnx"] == old[f"{STEM}.int8.onnx"]
    s = json.loads(new[SUMMARY])
    assert "held_out" not in s and s["outputs"]["cache"] == str(out / f"{STEM}.cache")


def test_json_output_is_valid(tmp_path, capsys):
    rc = main(_args(tmp_path / "o", "--json", "--no-eval", "--limit", "16"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    s = json.loads(cap.out)
    assert s["schema"] == "calib-calibrate-summary" and s["algorithm"] == "entropy"
    assert s == json.loads((tmp_path / "o" / SUMMARY).read_text())


def _amax(out: Path) -> dict[str, float]:
    return read_cache(out / f"{STEM}.cache").amax


def test_algorithms_and_onnxruntime_target(tmp_path, capsys):
    outs = {}
    for alg in ("entropy", "max", "percentile", "mse"):
        outs[alg] = tmp_path / alg
        rc = main(_args(outs[alg], "--algorithm", alg, "--no-eval", "--limit", "24"))
        err = capsys.readouterr().err
        assert rc == 0, err
        assert set(_files(outs[alg])) == OUTPUTS
        side = read_sidecar(outs[alg] / f"{STEM}.cache")
        assert side["algorithm"]["name"] == alg
        assert read_cache(outs[alg] / f"{STEM}.cache").algorithm == (
            "MinMaxCalibration" if alg == "max" else "EntropyCalibration2")
    amax = {alg: _amax(d) for alg, d in outs.items()}
    assert amax["max"].keys() == amax["entropy"].keys()
    # max is the largest |x| seen: no other algorithm's range exceeds it (float32 rounding aside);
    # and the algorithms really differ
    for alg in ("entropy", "percentile", "mse"):
        for t, v in amax[alg].items():
            assert v <= amax["max"][t] * (1 + 1e-6), (alg, t)
        assert any(amax[alg][t] < amax["max"][t] * 0.99 for t in amax[alg]), alg
    assert json.loads((outs["percentile"] / SUMMARY).read_text())["params"] == {"percentile": 99.99}

    # --algorithm auto: the same artifacts as the algorithm it chose, byte for byte; the choice is recorded
    auto = tmp_path / "auto"
    rc = main(_args(auto, "--algorithm", "auto", "--no-eval", "--limit", "24"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    s = json.loads((auto / SUMMARY).read_text())
    chosen = s["algorithm"]
    assert s["requested_algorithm"] == "auto" and chosen in outs and s["params"]["selection"]["chosen"] == chosen
    assert read_sidecar(auto / f"{STEM}.cache")["algorithm"]["params"]["selection"]["chosen"] == chosen
    for f in (f"{STEM}.cache", f"{STEM}.int8.onnx"):
        assert (auto / f).read_bytes() == (outs[chosen] / f).read_bytes(), f
    assert any(ln.startswith(f"auto chose {chosen} by kl_divergence") for ln in cap.out.splitlines())

    # --target onnxruntime: another placement, still a runnable Q/DQ model, and the cache is the same
    ort = tmp_path / "ort"
    rc = main(_args(ort, "--target", "onnxruntime", "--limit", "24"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert (ort / f"{STEM}.cache").read_bytes() == (outs["entropy"] / f"{STEM}.cache").read_bytes()
    assert (ort / f"{STEM}.int8.onnx").read_bytes() != (outs["entropy"] / f"{STEM}.int8.onnx").read_bytes()
    s = json.loads((ort / SUMMARY).read_text())
    assert s["target"] == "onnxruntime" and s["held_out"]["samples"] > 0
    assert any(ln.startswith("held-out") for ln in cap.out.splitlines())


@pytest.mark.parametrize("case", ["quantized", "empty", "no_images", "missing_model", "missing_data"])
def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys, case, shared_model):
    model, data = MODEL, IMAGES
    if case == "quantized":
        model = shared_model("mobilenetv2_12_int8_zoo")
        extra = ["--preset", "torchvision"]
    else:
        extra = ["--preset", "caffe"]
    if case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "no_images":
        data = tmp_path / "docs"
        data.mkdir()
        (data / "notes.txt").write_text("not an image\n")
    elif case == "missing_model":
        model = tmp_path / "nope.onnx"
    elif case == "missing_data":
        data = tmp_path / "nowhere"
    out = tmp_path / "out"
    before = _files(tmp_path)
    rc = main(["calibrate", "--model", str(model), "--data", str(data), *extra, "--out", str(out)])
    cap = capsys.readouterr()
    assert rc != 0
    line = _one_error_line(cap.err)
    expect = {"quantized": "already quantized", "empty": "empty", "no_images": "no images",
              "missing_model": "nope.onnx", "missing_data": "nowhere"}[case]
    assert expect in line, line
    assert not out.exists() and _files(tmp_path) == before


class _InterruptOn:
    """os.replace that raises KeyboardInterrupt on its n-th call (calls before and after work)."""

    def __init__(self, n: int):
        self.n, self.calls, self.real = n, 0, os.replace

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.real(*a, **kw)


@pytest.mark.parametrize("nth", [1, 2, 4])
def test_ctrl_c_while_writing_leaves_no_partial_output(tmp_path, monkeypatch, capsys, nth):
    out = tmp_path / "out"
    fake = _InterruptOn(nth)
    monkeypatch.setattr(calib.utils.os, "replace", fake)
    rc = main(_args(out, "--no-eval", "--limit", "12"))
    cap = capsys.readouterr()
    assert fake.calls >= nth            # the interrupt really happened while writing
    assert rc == 130
    assert "interrupted" in _one_error_line(cap.err)
    assert _files(out) == {}, sorted(_files(out))   # no artifacts, no temp files


@pytest.mark.parametrize("nth", [2, 5])
def test_ctrl_c_with_force_keeps_previous_outputs(tmp_path, monkeypatch, capsys, nth):
    out = tmp_path / "out"
    assert main(_args(out, "--no-eval", "--limit", "12")) == 0
    before = _files(out)
    assert set(before) == OUTPUTS
    fake = _InterruptOn(nth)
    monkeypatch.setattr(calib.utils.os, "replace", fake)
    # other data (seed 1 picks other samples) so that a half-done replacement would show
    rc = main(_args(out, "--no-eval", "--limit", "12", "--seed", "1", "--force"))
    cap = capsys.readouterr()
    assert rc == 130 and fake.calls >= nth
    _one_error_line(cap.err)
    assert _files(out) == before


def _console_script() -> Path:
    for cand in (REPO / ".venv" / "bin" / "calibrate", Path(sys.executable).parent / "calibrate"):
        if cand.is_file():
            return cand
    pytest.skip("calibrate console script not installed (pip install -e .)")


def test_readme_quickstart_command(tmp_path):
    """The README's quick-start calibrate command, run as written (console script), into tmp_path."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    (cmdline,) = [ln for ln in block.splitlines() if "calibrate" in ln]
    cmd = shlex.split(cmdline.split("&&")[-1].strip())
    assert Path(cmd[0]).name == "calibrate"
    cmd[0] = str(_console_script())
    out = tmp_path / "quickstart"
    i = cmd.index("--out")
    cmd[i + 1] = str(out)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert set(_files(out)) == OUTPUTS
    s = json.loads((out / SUMMARY).read_text())
    assert s["held_out"]["samples"] > 0 and s["calibration_samples"] > 0
    assert any(ln.startswith("held-out") and "top1_agreement" in ln for ln in proc.stdout.splitlines())
    assert any(ln.startswith("held-out") and "top1 " in ln for ln in proc.stdout.splitlines())   # labels used
    # the console script refuses to overwrite (the command has --force: without it, one line)
    proc2 = subprocess.run([c for c in cmd if c != "--force"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert proc2.returncode != 0 and "already exists" in _one_error_line(proc2.stderr)


def test_plan_keeps_named_layers_out_of_int8(tmp_path, capsys):
    """SqueezeNet's nodes are unnamed: a plan names them as TensorRT's parser does
    (node_of_<first output>). The fp32 node gets no Q/DQ; an entry naming no node is reported."""
    import json

    import onnx

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "calib-precision-plan", "version": 1, "default": "int8",
                                "layers": {"node_of_conv1_1": "fp32", "node_of_no_such_tensor": "fp16"}}))
    out = tmp_path / "out"
    rc = main(_args(out, "--plan", str(plan), "--no-eval"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "warning: 1 plan entries match no node: node_of_no_such_tensor" in cap.out
    summary = json.loads((out / SUMMARY).read_text())
    q = summary["quantization"]
    assert q["fp32_nodes"] == ["node_of_conv1_1"] and q["unmatched_plan_entries"] == ["node_of_no_such_tensor"]
    assert summary["plan"]["layers"]["node_of_conv1_1"] == "fp32"
    g = onnx.load(str(out / f"{STEM}.int8.onnx")).graph
    producers = {o: n for n in g.node for o in n.output}
    conv1 = next(n for n in g.node if n.op_type == "Conv" and n.output[0] == "conv1_1")
    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in conv1.input)
    # without the plan the same conv is quantized, so the check above can fail
    other = next(n for n in g.node if n.op_type == "Conv" and n.output[0] != "conv1_1")
    assert producers[other.input[1]].op_type == "DequantizeLinear"


def test_bad_plan_is_one_line_and_writes_nothing(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text('{"format": "calib-precision-plan", "version": 1, "layers": {"x": "int4"}}')
    out = tmp_path / "out"
    rc = main(_args(out, "--plan", str(plan)))
    line = _one_error_line(capsys.readouterr().err)
    assert rc != 0 and "int4" in line
    assert not out.exists()


def test_package_level_api_matches_the_cli(first_run, tmp_path):
    """calib.calibrate(model, data, ...) (the API the issue names) writes the same cache bytes as
    the CLI with the same defaults."""
    import calib

    res = calib.calibrate(MODEL, IMAGES, preprocess="caffe", classes=CLASSES, out=tmp_path, progress=False)
    assert {p.name for p in res.paths.values()} == OUTPUTS
    assert (tmp_path / f"{STEM}.cache").read_bytes() == first_run["files"][f"{STEM}.cache"]
    assert res.summary["held_out"]["samples"] > 0 and res.scales and all(v > 0 for v in res.scales.values())


# --------------------------------------------------------------------------- CalibrationConfig
@pytest.mark.parametrize("options, message", [
    ({"algorithm": "kl"}, "algorithm 'kl' is unknown; choose one of entropy, max, percentile, mse, auto"),
    ({"target": "cpu"}, "target 'cpu' is unknown; choose one of tensorrt, onnxruntime"),
    ({"smooth": 1.5}, "smooth must be a number in [0, 1] (or None for no smoothing), got 1.5"),
    ({"smooth": -0.25}, "smooth must be a number in [0, 1] (or None for no smoothing), got -0.25"),
    ({"samples": 0}, "samples must be an integer of at least 1 (or None), got 0"),
    ({"eval_samples": -3}, "eval_samples must be an integer of at least 1 (or None), got -3"),
    ({"threads": 0}, "threads must be an integer of at least 1 (or None), got 0"),
    ({"batch_size": 0}, "batch_size must be an integer of at least 1, got 0"),
    ({"percentile": 100.5}, "percentile must be a number in (0, 100], got 100.5"),
    ({"trt_version": 0}, "trt_version must be a positive integer such as 100900 (or None), got 0"),
    ({"bias_correction": "no"}, "bias_correction must be True or False, got 'no'"),
])
def test_config_validation_is_one_line(options, message, tmp_path):
    from calib import CalibrationConfig
    from calib.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        CalibrationConfig(**options)
    assert str(exc.value) == message and exc.value.option == next(iter(options))
    # the same check through calibrate()'s keyword options, before any work (the model is not even read)
    with pytest.raises(ConfigError) as exc:
        calib.calibrate(tmp_path / "missing.onnx", tmp_path / "nowhere", out=tmp_path / "o", **options)
    assert str(exc.value) == message and not (tmp_path / "o").exists()


def test_unknown_option_lists_the_valid_ones(tmp_path):
    from calib import CalibError, CalibrationConfig

    valid = ("algorithm, percentile, samples, batch_size, seed, target, trt_version, evaluate, eval_samples, "
             "threads, plan, smooth, bias_correction")
    with pytest.raises(CalibError) as exc:
        calib.calibrate(MODEL, IMAGES, preprocess="caffe", algoritm="max", out=tmp_path)
    assert str(exc.value) == f"unknown calibration option algoritm; valid: {valid}"
    with pytest.raises(CalibError, match="unknown calibration options bins, zero_bin; valid: algorithm"):
        calib.calibrate(MODEL, IMAGES, {"zero_bin": "keep", "bins": 2048}, preprocess="caffe", out=tmp_path)
    assert CalibrationConfig.names() == tuple(valid.split(", "))
    assert list(tmp_path.iterdir()) == []


def test_config_and_keyword_options_give_the_same_calibration():
    """A config object, a dict of fields, and keyword options are one thing; keywords override the config."""
    import calib.pipeline

    assert calib.calibrate is calib.pipeline.calibrate          # the module is no longer shadowed
    assert calib.CalibrationConfig is calib.pipeline.CalibrationConfig
    kw = dict(preprocess="caffe", write=False, progress=False)
    a = calib.calibrate(MODEL, IMAGES, samples=6, evaluate=False, **kw)
    b = calib.calibrate(MODEL, IMAGES, calib.CalibrationConfig(algorithm="max", samples=6, evaluate=False),
                        algorithm="entropy", **kw)
    c = calib.calibrate(MODEL, IMAGES, {"samples": 6, "evaluate": False, "algorithm": "max"}, **kw)
    assert a.summary["algorithm"] == b.summary["algorithm"] == "entropy" and c.summary["algorithm"] == "max"
    assert a.amax == b.amax and a.amax != c.amax
    assert a.summary["calibration_samples"] == 6 and "held_out" not in a.summary


@pytest.mark.parametrize("flags, message", [
    (["--samples", "0"], "error: --samples must be an integer of at least 1 (or None), got 0"),
    (["--smooth", "2"], "error: --smooth must be a number in [0, 1] (or None for no smoothing), got 2.0"),
    (["--percentile", "0"], "error: --percentile must be a number in (0, 100], got 0.0"),
    (["--eval-samples", "0"], "error: --eval-samples must be an integer of at least 1 (or None), got 0"),
])
def test_cli_options_are_validated_by_the_config(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    rc = main(_args(out, *flags))
    assert rc != 0 and _one_error_line(capsys.readouterr().err) == message
    assert not out.exists()
