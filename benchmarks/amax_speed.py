"""compute_amax speed: each algorithm over many tensors' observers, after statistics are collected.

Two sets of observers, each algorithm timed over every observer of the set (the median of
``--rounds`` runs, after one untimed warm-up run that fills the entropy search's bounds table):

* ``synthetic``: 450 tensors of 5,000 values (Gaussian of spreads 1..7, every third one
  ReLU'd), the size of a large CNN's activation set;
* ``efficientnet_lite0``: the observers ``collect_statistics`` makes for every float tensor of
  EfficientNet-Lite0 over 8 ImageNet photographs (skipped with ``--no-model`` or without
  ../shared).

The script prints; it asserts nothing (the tests check the values, ``tests/test_algorithms.py``
and ``tests/test_collect.py``). Before each set it waits (up to 2 minutes) for idle CPUs; a set
that found no quiet is marked ``*``.

    python benchmarks/amax_speed.py
    python benchmarks/amax_speed.py --rounds 9 --no-model
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from _common import SHARED
from _quiet import wait_quiet
from calib.algorithms import ALGORITHMS, compute_amax
from calib.stats import TensorObserver


def synthetic(n: int = 450, size: int = 5000, seed: int = 10) -> list[TensorObserver]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        x = rng.standard_normal(size) * (1 + k % 7)
        if k % 3 == 0:
            x = np.maximum(x, 0)
        o = TensorObserver(f"t{k}")
        o.update(x.astype(np.float32))
        out.append(o)
    return out


def efficientnet(images: int) -> list[TensorObserver] | None:
    model_path = SHARED / "models" / "efficientnet_lite0.onnx"
    data = SHARED / "data" / "imagenet-sample"
    if not (model_path.is_file() and data.is_dir()):
        print(f"(no {model_path} or {data}: EfficientNet-Lite0 set skipped)", file=sys.stderr)
        return None
    from calib.collect import collect_statistics
    from calib.datasets import open_dataset
    from calib.model import Model

    model = Model.load(model_path)
    ds = open_dataset(data, model, "efficientnet-lite", limit=images, seed=0)
    return list(collect_statistics(model, ds.batches(batch_size=4, progress=False), progress=False).values())


def time_set(observers: list[TensorObserver], algorithm: str, rounds: int) -> float:
    """Median seconds to compute the amax of every observer."""
    for o in observers:
        compute_amax(o, algorithm)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for o in observers:
            compute_amax(o, algorithm)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="timed runs per algorithm and set (default 5)")
    ap.add_argument("--tensors", type=int, default=450, help="synthetic tensors (default 450)")
    ap.add_argument("--images", type=int, default=8, help="photographs for the EfficientNet-Lite0 set (default 8)")
    ap.add_argument("--no-model", action="store_true", help="synthetic set only")
    args = ap.parse_args(argv)

    sets = {"synthetic": synthetic(args.tensors)}
    if not args.no_model:
        eff = efficientnet(args.images)
        if eff is not None:
            sets["efficientnet_lite0"] = eff
    print(f"median of {args.rounds} rounds after a warm-up; * = the CPUs were busy before the set")
    print(f"{'set':<20} {'tensors':>7} {'algorithm':<10} {'total ms':>9} {'us/tensor':>9}")
    for name, observers in sets.items():
        noisy = "*" if wait_quiet() > 0.15 else ""
        for alg in ALGORITHMS:
            t = time_set(observers, alg, args.rounds)
            print(f"{name + noisy:<20} {len(observers):>7} {alg:<10} {1e3 * t:9.1f} {1e6 * t / len(observers):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
