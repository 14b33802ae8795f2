"""Re-execute the notebooks in place so that the stored outputs (plots included) are current.

Needs Jupyter tooling that calib itself does not depend on::

    pip install nbformat nbclient ipykernel
    python notebooks/execute.py                 # every notebook
    python notebooks/execute.py 01_calibration_walkthrough.ipynb

Each notebook runs with cwd=notebooks/ in the current Python's kernel, and is written back
only when it ran without error. tests/test_notebooks.py runs the same code cells without
Jupyter.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def execute(path: Path, timeout: int = 1200) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    for cell in nb.cells:             # no per-run noise in the diff
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, path)
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.name for p in HERE.glob("*.ipynb"))
    # a notebook's name here, or its path
    paths = [Path(n) if Path(n).is_file() else HERE / Path(n).name for n in names]
    missing = [str(n) for n, p in zip(names, paths) if not p.is_file()]
    if missing:
        sys.exit(f"error: no such notebook: {', '.join(missing)} (notebooks in {HERE}: "
                 f"{', '.join(sorted(p.name for p in HERE.glob('*.ipynb')))})")
    for path in paths:
        execute(path)
