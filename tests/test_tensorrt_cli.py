"""`calib build` / `calib run` without TensorRT: one line, what to install, non-zero exit."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import SHARED

if importlib.util.find_spec("tensorrt") is not None:
    pytest.skip("TensorRT is installed here; these tests cover machines without it", allow_module_level=True)

MODEL = SHARED / "models" / "mnist_cntk.onnx"


@pytest.mark.parametrize("argv", [
    ["build", "--model", str(MODEL), "--out", "OUT/m.plan"],
    ["build", "--model", str(MODEL), "--cache", "m.cache", "--explicit", "--out", "OUT/m.plan"],
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


def test_main_raises_tensorrt_unavailable(capsys):
    from calib.cli import main
    rc = main(["build", "--model", str(MODEL), "--out", "x.plan"])
    err = capsys.readouterr().err
    assert rc == 3 and err.count("\n") == 1 and "TensorRT" in err


def test_help_works_without_tensorrt():
    for cmd in ("build", "run"):
        p = subprocess.run([sys.executable, "-m", "calib", cmd, "--help"], capture_output=True, text=True)
        assert p.returncode == 0 and "--out" in p.stdout or "--engine" in p.stdout


def test_api_raises_the_error_class():
    from calib.backends.tensorrt import import_tensorrt
    from calib.errors import TensorRTUnavailableError
    with pytest.raises(TensorRTUnavailableError, match=r"pip install 'calib\[tensorrt\]'"):
        import_tensorrt()
