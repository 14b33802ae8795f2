"""`calib build` / `calib run`: without TensorRT, one line, what to install, non-zero exit; with the
TensorRT mock (tests/fake_tensorrt.py) and a stand-in engine, the shared flags: ``--out DIR`` is a
folder (build writes DIR/<model stem>.plan, run writes DIR/run.json) and ``--json`` is JSON on stdout."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import SHARED

no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                 reason="TensorRT is installed here; these tests cover machines without it")

MODEL = SHARED / "models" / "mnist_cntk.onnx"


@no_tensorrt
@pytest.mark.parametrize("argv", [
    ["build", "--model", str(MODEL), "--out", "OUT"],
    ["build", "--model", str(MODEL), "--cache", "m.cache", "--explicit", "--out", "OUT"],
    ["run", "--engine", "OUT/m.plan", "--batch-sizes", "1,8", "--contexts", "2"],
])
def test_one_line_and_exit_code(argv, tmp_path):
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    p = subprocess.run([sys.executable, "-m", "calib", *argv], capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 3, p.stderr
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"error: calib {argv[0]} needs TensorRT and an NVIDIA GPU")
    assert "pip install 'calib[tensorrt]'" in lines[0]
    assert p.stdout == ""
    assert not list(tmp_path.iterdir())           # nothing written


@no_tensorrt
def test_main_raises_tensorrt_unavailable(capsys, tmp_path):
    from calib.cli import main
    rc = main(["build", "--model", str(MODEL), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 3 and err.count("\n") == 1 and "TensorRT" in err


def test_help_works_without_tensorrt():
    for cmd in ("build", "run"):
        p = subprocess.run([sys.executable, "-m", "calib", cmd, "--help"], capture_output=True, text=True)
        assert p.returncode == 0 and "--out" in p.stdout or "--engine" in p.stdout


@no_tensorrt
def test_api_raises_the_error_class():
    from calib.backends.tensorrt import import_tensorrt
    from calib.errors import TensorRTUnavailableError
    with pytest.raises(TensorRTUnavailableError, match=r"pip install 'calib\[tensorrt\]'"):
        import_tensorrt()


# --------------------------------------------------------------------------- with the TensorRT mock
ROWS = [{"batch_size": 1, "contexts": 1, "iterations": 5, "warmup": 1, "median_ms": 0.5, "p90_ms": 0.6,
         "p99_ms": 0.7, "mean_ms": 0.55, "n": 5, "throughput_per_s": 2000.0, "wall_s": 0.0025}]


class _StandInEngine:
    """What `calib run` uses of TrtEngine, without a GPU: fixed timings, and the no-sidecar warning
    through *log* as the real engine gives it."""

    def __init__(self, path, *, contexts=1, log=None):
        from calib.backends.base import EngineInfo

        self.path, self.sidecar, self.max_batch = Path(path), None, 1
        self.gpu, self.slots = {"name": "Stand-in GPU"}, [None] * contexts
        self.info = EngineInfo(name="trt-int8", backend="tensorrt", precision="int8",
                               extra={"tensorrt": "10.16.1.11", "gpu": "Stand-in GPU", "engine": str(path),
                                      "contexts": contexts})
        log(f"warning: {self.path} has no calib sidecar; its TensorRT version and GPU cannot be checked")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def benchmark(self, sizes, iterations, warmup, feed=None):
        return [dict(r, iterations=iterations, warmup=warmup) for r in ROWS]


@pytest.fixture
def mock_trt(monkeypatch):
    """`calib build` / `calib run` see the TensorRT mock and a GPU; run's engine is the stand-in;
    build_engine records its arguments. Returns the recorded build calls."""
    import calib.backends.tensorrt.builder as builder
    import calib.backends.tensorrt.runner as runner
    import calib.cli.tensorrt as cli_trt
    import fake_tensorrt

    monkeypatch.setattr(cli_trt, "_require", lambda command: fake_tensorrt.make())
    monkeypatch.setattr(runner, "TrtEngine", _StandInEngine)
    calls = []

    def build_engine(model, out, **kw):
        calls.append(dict(kw, model=model, out=Path(out)))
        return types.SimpleNamespace(lines=[f"engine: {out}"])

    monkeypatch.setattr(builder, "build_engine", build_engine)
    return calls


def test_run_json_is_stdout_and_out_is_a_folder(mock_trt, tmp_path, capsys):
    from calib.cli import main

    engine = tmp_path / "m.plan"
    engine.write_bytes(b"stand-in")
    out = tmp_path / "timings"
    assert main(["run", "--engine", str(engine), "--iterations", "5", "--warmup", "1", "--json",
                 "--out", str(out)]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)                              # only the JSON on stdout
    assert doc["results"] == [dict(ROWS[0], iterations=5, warmup=1)] and doc["precision"] == "int8"
    assert doc == json.loads((out / "run.json").read_text())
    assert "no calib sidecar" in cap.err and f"wrote {out / 'run.json'}" in cap.err
    # never overwritten without --force: one line, file unchanged
    (out / "run.json").write_text("previous\n")
    assert main(["run", "--engine", str(engine), "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and "already exists" in cap.err and cap.out == ""
    assert (out / "run.json").read_text() == "previous\n"
    assert main(["run", "--engine", str(engine), "--out", str(out), "--force"]) == 0
    cap = capsys.readouterr()
    assert "median ms" in cap.out and json.loads((out / "run.json").read_text())["results"][0]["iterations"] == 200
    # a file name for --out (the old `--json FILE`) is refused, not made a folder
    assert main(["run", "--engine", str(engine), "--out", str(tmp_path / "t.json")]) != 0
    assert "--out is a folder" in capsys.readouterr().err and not (tmp_path / "t.json").exists()


def test_build_writes_model_stem_plan_into_out_folder(mock_trt, tmp_path, capsys):
    from calib.cli import main

    out = tmp_path / "engines"
    assert main(["build", "--model", str(MODEL), "--cache", "m.cache", "--out", str(out), "--force"]) == 0
    (call,) = mock_trt
    assert call["out"] == out / f"{MODEL.stem}.plan" and call["overwrite"] is True and call["cache"] == "m.cache"
    assert capsys.readouterr().out == f"engine: {out / MODEL.stem}.plan\n"
    assert main(["build", "--model", str(MODEL), "--out", str(tmp_path / "m.plan")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: --out is a folder") and err.count("\n") == 1
    assert len(mock_trt) == 1 and not (tmp_path / "m.plan").exists()
