"""Images/second for decoding + preprocessing: calib's reader vs a plain single-threaded Pillow loop.

    python benchmarks/readers.py [--data ../shared/data/imagenet-sample] [--preset efficientnet-lite]
                                 [--repeat 3] [--batch-size 32]

Both do the same work for the same preset (decode, RGB, resize shorter side, centre crop,
normalise, NCHW float32) for a 224x224 model input; the table reports the best of --repeat runs
(the first run also warms the OS file cache). Exit status 1 if the reader is slower than the loop.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import ROOT, SHARED

sys.path.insert(0, str(ROOT))

from calib.datasets import Preprocess, open_dataset
from calib.model import TensorInfo


def plain_loop(files: list[Path], pre: Preprocess) -> int:
    """What a careful engineer writes without a reader: one image at a time, no tricks."""
    from PIL import Image

    rs = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[pre.interp]
    mean = np.array(pre.mean if len(pre.mean) == 3 else pre.mean * 3, dtype=np.float32)
    std = np.array((pre.std or (1.0,)) * (1 if pre.std and len(pre.std) == 3 else 3), dtype=np.float32)
    s, c = pre.resize, pre.crop
    n = 0
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
        w, h = im.size
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        im = im.resize((nw, nh), rs)
        left, top = int(round((nw - c) / 2.0)), int(round((nh - c) / 2.0))
        im = im.crop((left, top, left + c, top + c))
        x = np.asarray(im, dtype=np.float32)
        if pre.bgr:
            x = x[:, :, ::-1]
        x = ((x * pre.scale - mean) / std).transpose(2, 0, 1)
        np.ascontiguousarray(x)
        n += 1
    return n


def reader(data: Path, pre: Preprocess, workers: int, batch_size: int) -> int:
    ds = open_dataset(data, [TensorInfo("input", ("N", 3, 224, 224), np.dtype(np.float32))], pre, workers=workers)
    n = 0
    for b in ds.batches(batch_size=batch_size):
        n += len(b)
    return n


def best_rate(fn, repeat: int) -> tuple[float, int]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t)
    return n / best, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "data" / "imagenet-sample"))
    p.add_argument("--preset", default="efficientnet-lite")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"error: {data} not found (the shared ImageNet sample)", file=sys.stderr)
        return 2
    pre = Preprocess.preset(args.preset)
    files = sorted(f for f in data.iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png"))
    rows = []
    base, n = best_rate(lambda: plain_loop(files, pre), args.repeat)
    rows.append(("plain Pillow loop, 1 thread", n, base))
    cores = os.cpu_count() or 1
    worker_counts = sorted({1, 2, cores, 2 * cores})
    rates = {}
    for w in worker_counts:
        r, n = best_rate(functools.partial(reader, data, pre, w, args.batch_size), args.repeat)
        rates[w] = r
        rows.append((f"calib reader, {w} worker thread{'s' if w > 1 else ''}", n, r))
    from calib.datasets import default_workers

    dw = default_workers()
    if dw not in rates:
        r, n = best_rate(lambda: reader(data, pre, dw, args.batch_size), args.repeat)
        rates[dw] = r
        rows.append((f"calib reader, {dw} worker threads", n, r))
    print(f"decode + preprocess ({pre.name}: {pre.describe()}), {len(files)} images, {cores} cores, "
          f"best of {args.repeat}")
    print(f"| {'what':<44} | {'images':>6} | {'images/s':>9} | {'vs plain':>8} |")
    print(f"|{'-' * 46}|{'-' * 8}|{'-' * 11}|{'-' * 10}|")
    for name, n, r in rows:
        tag = " (default)" if name.startswith("calib") and f", {dw} worker" in name else ""
        print(f"| {name + tag:<44} | {n:>6} | {r:>9.1f} | {r / base:>7.2f}x |")
    ok = rates[dw] >= base
    print("reader (default workers) is " + ("at least as fast as" if ok else "SLOWER than") + " the plain loop")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
