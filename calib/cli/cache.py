"""`calib cache show FILE` and `calib cache diff A B`: inspect TensorRT calibration caches.

Tensor names come from the file: in the text tables, characters a terminal would act on (ESC of
an ANSI sequence, newlines, bidirectional overrides) are shown escaped (:func:`calib.utils.printable`);
``--json`` keeps them exact (JSON escapes them itself)."""
from __future__ import annotations

import math

from ..cache import CalibrationCache, read_cache
from ..errors import CalibError
from ..utils import printable
from .args import JsonArgs, add_command, print_json


def register(sub) -> None:
    p = sub.add_parser("cache", help="show or diff calibration caches",
                       description="Show a TensorRT calibration cache as a table, or compare two caches.")
    csub = p.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")

    s = add_command(csub, "show", help="print a cache as a table (tensor, amax, scale)",
                    description="Print every tensor of a TensorRT calibration cache with its amax "
                                "(scale * 127) and scale.", groups=[JsonArgs()], func=run_show)
    s.add_argument("file", metavar="FILE", help="calibration cache (TensorRT text format)")

    d = add_command(csub, "diff", help="compare two caches",
                    description="List tensors only in A, only in B, and tensors whose scale moved, "
                                "largest relative change first.", groups=[JsonArgs()], func=run_diff)
    d.add_argument("a", metavar="A", help="first cache")
    d.add_argument("b", metavar="B", help="second cache")
    d.add_argument("--threshold", type=float, default=0.0,
                   help="only list tensors whose relative change |B-A|/max(|A|,|B|) exceeds this (default 0)")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _rows(cache: CalibrationCache) -> list[dict]:
    return [{"tensor": k, "amax": v * 127.0, "scale": v} for k, v in cache.scales.items()]


def run_show(args) -> int:
    cache = read_cache(args.file)
    rows = _rows(cache)
    if JsonArgs.parse(args):
        print_json({"file": args.file, "version": cache.version, "algorithm": cache.algorithm, "tensors": rows})
        return 0
    print(f"{printable(args.file)}: TensorRT {cache.version}, {printable(cache.algorithm)}, {len(rows)} tensors")
    names = [printable(r["tensor"]) for r in rows]
    width = max([len("tensor")] + [len(n) for n in names])
    print(f"{'tensor':<{width}}  {'amax':>12}  {'scale':>12}")
    for name, r in zip(names, rows):
        print(f"{name:<{width}}  {r['amax']:>12.6g}  {r['scale']:>12.6g}")
    return 0


def rel_change(a: float, b: float) -> float:
    """|b - a| / max(|a|, |b|) (0 when both are 0); in [0, 1] for non-negative scales."""
    den = max(abs(a), abs(b))
    return 0.0 if den == 0 else abs(b - a) / den


def diff_caches(a: CalibrationCache, b: CalibrationCache, threshold: float = 0.0) -> dict:
    only_a = [k for k in a.scales if k not in b.scales]
    only_b = [k for k in b.scales if k not in a.scales]
    moved = []
    for k, sa in a.scales.items():
        if k in b.scales:
            sb = b.scales[k]
            r = rel_change(sa, sb)
            if r > threshold:
                moved.append({"tensor": k, "amax_a": sa * 127.0, "amax_b": sb * 127.0,
                              "ratio": (sb / sa) if sa else None, "rel_change": r})
    moved.sort(key=lambda m: (-m["rel_change"], m["tensor"]))
    return {"only_a": sorted(only_a), "only_b": sorted(only_b), "moved": moved,
            "common": sum(1 for k in a.scales if k in b.scales)}


def run_diff(args) -> int:
    if not (args.threshold >= 0) or math.isinf(args.threshold):
        raise CalibError(f"--threshold must be a finite number >= 0, got {args.threshold}")
    a = read_cache(args.a)
    b = read_cache(args.b)
    d = diff_caches(a, b, args.threshold)
    if JsonArgs.parse(args):
        print_json(dict(d, a=args.a, b=args.b, threshold=args.threshold,
                        header_a=f"TRT-{a.version}-{a.algorithm}", header_b=f"TRT-{b.version}-{b.algorithm}"))
        return 0
    print(f"A: {printable(args.a)} (TRT-{a.version}-{printable(a.algorithm)}, {len(a)} tensors)")
    print(f"B: {printable(args.b)} (TRT-{b.version}-{printable(b.algorithm)}, {len(b)} tensors)")
    for label, names in (("only in A", d["only_a"]), ("only in B", d["only_b"])):
        print(f"{label}: {len(names)}")
        for n in names:
            print(f"  {printable(n)}")
    print(f"moved (relative change > {args.threshold:g}): {len(d['moved'])} of {d['common']} common")
    if d["moved"]:
        shown = [printable(m["tensor"]) for m in d["moved"]]
        width = max(len("tensor"), *(len(n) for n in shown))
        print(f"  {'tensor':<{width}}  {'amax A':>12}  {'amax B':>12}  {'B/A':>8}  {'change':>7}")
        for name, m in zip(shown, d["moved"]):
            print(f"  {name:<{width}}  {m['amax_a']:>12.6g}  {m['amax_b']:>12.6g}  "
                  f"{'-' if m['ratio'] is None else format(m['ratio'], '.4g'):>8}  {m['rel_change'] * 100:>6.2f}%")
    return 0
