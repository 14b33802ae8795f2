"""The code is clean under Ruff with the project's configuration (``[tool.ruff]`` in pyproject.toml).

Ruff comes with the ``test`` extra; without it the tests are skipped. To see and fix findings:
``ruff check calib tests benchmarks notebooks/execute.py`` (``--fix`` applies the safe fixes).
"""
from __future__ import annotations

import subprocess

import pytest

from conftest import REPO

PATHS = [
    "calib",
    "tests",
    "benchmarks",
    "notebooks/execute.py",
]


@pytest.mark.parametrize("path", PATHS)
def test_ruff_check_is_clean(path):
    ruff = pytest.importorskip("ruff.__main__", reason="ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([ruff.find_ruff_bin(), "check", "--no-cache", "--output-format", "concise", path],
                          cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"ruff check {path} found problems:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"
