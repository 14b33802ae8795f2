"""Benchmark: peak memory of `calib evaluate` with and without --attribute.

Each case calibrates an INT8 Q/DQ candidate (`calib calibrate --no-eval`, not measured), then runs
`calib evaluate` twice in a fresh Python process, without and with `--attribute`, and reads the
process's peak resident set size (VmHWM) when it is done. The harness keeps the captured tensors
within `calib.harness.ATTRIBUTE_MEMORY` (docs/harness.md); the goal is under 1.5 GB whatever the
model and batch size.

    python benchmarks/attribution_memory.py [--cases lite0,rec,det736,det736-b1] [--json]

Models and data from ../shared beside the repository ($CALIB_SHARED).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED

# case -> (model, data folder, data flags for calibrate and evaluate, evaluate-only flags)
CASES = {
    "lite0": ("efficientnet_lite0", "imagenet-sample", ["--preset", "efficientnet-lite"], ["--limit", "64"]),
    "rec": ("ppocrv4_rec", "ocr-lines", ["--preset", "paddleocr-rec"], ["--limit", "64"]),
    "det736": ("ppocrv4_det", "imagenet-sample", ["--preset", "paddleocr-det", "--resize", "736", "--crop", "736"],
               ["--limit", "8", "--batch-size", "8"]),
    "det736-b1": ("ppocrv4_det", "imagenet-sample", ["--preset", "paddleocr-det", "--resize", "736", "--crop", "736"],
                  ["--limit", "8", "--batch-size", "1"]),
}

_CHILD = """
import sys
from calib.cli import main
rc = main(sys.argv[1:])
print("VmHWM_KB", [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1], file=sys.stderr)
sys.exit(rc)
"""


def peak_of(args: list[str]) -> tuple[float, float]:
    """(peak resident MiB, wall seconds) of `calib ARGS` in a fresh process."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"calib {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    kb = next(line for line in p.stderr.splitlines() if line.startswith("VmHWM_KB")).split()[1]
    return int(kb) / 1024, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="calib-bench-") as tmp:
        for case in args.cases.split(","):
            model, folder, data, extra = CASES[case]
            path = SHARED / "models" / f"{model}.onnx"
            flags = ["--data", str(SHARED / "data" / folder), *data]
            out = Path(tmp) / case
            if not (out / f"{model}.int8.onnx").exists():
                calib = ["calibrate", "--model", str(path), *flags, "--limit", "32", "--no-eval", "--out", str(out)]
                if model == "ppocrv4_det":
                    calib += ["--batch-size", "1"]
                peak_of(calib)
            row = {"case": case}
            for label, more in (("plain", []), ("attribute", ["--attribute"])):
                mib, wall = peak_of(["evaluate", "--model", str(path), "--candidate", str(out / f"{model}.int8.onnx"),
                                     *flags, *extra, "--no-plots", "--force", "--out", str(out / label), *more])
                row[f"{label}_mib"], row[f"{label}_s"] = round(mib), round(wall, 1)
            rows.append(row)
            if not args.json:
                print(f"{case:10s} plain {row['plain_mib']:6d} MiB {row['plain_s']:6.1f} s   "
                      f"--attribute {row['attribute_mib']:6d} MiB {row['attribute_s']:6.1f} s", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
