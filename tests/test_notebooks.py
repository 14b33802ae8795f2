"""The notebooks in notebooks/ keep working, without any Jupyter dependency.

Each notebook's code cells are pulled out with the json module, joined in order into one
script and run by this Python (the project's venv) in a fresh subprocess with
``MPLBACKEND=Agg``, cwd ``notebooks/`` and ``CALIB_NOTEBOOK_QUICK=1`` (notebooks that read it
use fewer images). A notebook whose metadata lists ``calib.requires_shared`` paths is skipped
when they are missing under ``../shared`` (``$CALIB_SHARED``).

The stored notebooks are also checked: executed (outputs present, no error output) and small.
Re-executing them in place (with Jupyter) is ``python notebooks/execute.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED

NOTEBOOKS = REPO / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
MAX_BYTES = 1_000_000


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_script(path: Path) -> str:
    """The notebook's code cells as one Python script (cell markers as comments)."""
    parts = []
    for i, cell in enumerate(_load(path)["cells"]):
        if cell.get("cell_type") != "code":
            continue
        src = _source(cell)
        magics = [l for l in src.splitlines() if l.lstrip().startswith(("%", "!"))]
        assert not magics, f"{path.name} cell {i}: IPython magics/shell lines cannot run as a script: {magics[0]!r}"
        parts.append(f"# ---- cell {i}\n{src}\n")
    return "\n".join(parts)


def run_notebook(path: Path, tmp_path: Path, **env_extra) -> subprocess.CompletedProcess:
    script = tmp_path / f"{path.stem}.py"
    script.write_text(notebook_script(path), encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg", "CALIB_NOTEBOOK_QUICK": "1", "PYTHONUNBUFFERED": "1", **env_extra}
    return subprocess.run([sys.executable, str(script)], cwd=NOTEBOOKS, env=env, capture_output=True,
                          text=True, timeout=600)


def _missing_shared(path: Path, shared: Path = SHARED) -> list[str]:
    needs = _load(path).get("metadata", {}).get("calib", {}).get("requires_shared", [])
    return [p for p in needs if not (shared / p).exists()]


def test_notebooks_exist():
    names = [p.name for p in PATHS]
    assert "01_calibration_walkthrough.ipynb" in names, names


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path: Path, tmp_path: Path):
    missing = _missing_shared(path)
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)} under {SHARED} (set $CALIB_SHARED)")
    proc = run_notebook(path, tmp_path)
    assert proc.returncode == 0, (f"{path.name} failed (exit {proc.returncode}); "
                                  f"stdout tail:\n{proc.stdout[-3000:]}\nstderr tail:\n{proc.stderr[-5000:]}")


def test_shared_notebooks_skip_gracefully(tmp_path: Path):
    """Without ../shared, a notebook that needs it prints a note and exits 0 (nothing downloaded)."""
    needing = [p for p in PATHS if _missing_shared(p, tmp_path / "nowhere")]
    if not needing:
        pytest.skip("no notebook needs ../shared")
    for path in needing:
        proc = run_notebook(path, tmp_path, CALIB_SHARED=str(tmp_path / "nowhere"))
        assert proc.returncode == 0, f"{path.name} without ../shared failed:\n{proc.stderr[-5000:]}"
        assert "NOTE" in proc.stdout, f"{path.name} without ../shared printed no note:\n{proc.stdout[-2000:]}"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_stored_notebook_is_executed_and_small(path: Path):
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size} bytes; keep stored notebooks under {MAX_BYTES}"
    nb = _load(path)
    code = [c for c in nb["cells"] if c.get("cell_type") == "code" and _source(c).strip()]
    assert code, f"{path.name} has no code cells"
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were not executed (run notebooks/execute.py)"
    errors = [o.get("ename") for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} is stored with errors: {errors}"
    counts = [c["execution_count"] for c in code]
    assert counts == sorted(counts), f"{path.name}: cells were not executed in order ({counts})"
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert images >= 1, f"{path.name} is stored without its plots"
