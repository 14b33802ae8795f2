"""`calib build` and `calib run`: build a TensorRT engine, run / time it (TensorRT + NVIDIA GPU).

Without TensorRT both print one line saying what is needed and how to install it, and exit
non-zero (:class:`calib.errors.TensorRTUnavailableError`).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CalibError, TensorRTUnavailableError


def _has_data(args) -> bool:
    return bool(args.data or args.data_loader_script)


def _dataset(args, model):
    if not _has_data(args):
        return None
    from ..datasets import dataset_from_args
    return dataset_from_args(args, model)


def _require(command: str):
    """Import TensorRT and check for cuda-python and a GPU; one clear line if anything is missing."""
    from ..backends.tensorrt import import_tensorrt, unavailable_message
    from ..backends.tensorrt.cuda import require_gpu

    trt = import_tensorrt(command)
    try:
        require_gpu()
    except TensorRTUnavailableError as exc:
        raise TensorRTUnavailableError(unavailable_message(command, str(exc))) from None
    return trt


def register(sub) -> None:
    from ..datasets import add_data_arguments

    b = sub.add_parser("build", help="build a TensorRT engine (needs TensorRT and a GPU)",
                       description="Build a TensorRT engine from an ONNX model with INT8 scales from a "
                                   "calib cache (computed on any machine) or from data.")
    b.add_argument("--model", required=True, help="ONNX model")
    b.add_argument("--cache", help="calibration cache from calib calibrate (its sidecar is checked)")
    add_data_arguments(b)
    b.add_argument("--plan", help="precision plan JSON (ONNX node name -> fp32/fp16/int8)")
    b.add_argument("--fp16", action="store_true", help="also allow fp16 kernels (implicit mode)")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--explicit", dest="mode", action="store_const", const="explicit",
                      help="Q/DQ model + strongly typed network (TensorRT >= 10; the only mode on 11)")
    mode.add_argument("--implicit", dest="mode", action="store_const", const="implicit",
                      help="calibrator + INT8 builder flag (TensorRT 8.6-10.x; default there)")
    b.add_argument("--workspace", type=int, metavar="MiB", help="workspace memory pool limit")
    b.add_argument("--timing-cache", help="timing cache file to reuse and update")
    b.add_argument("--min", dest="min_shapes", metavar="NAME:DxD..", help="minimum input shapes (dynamic inputs)")
    b.add_argument("--opt", dest="opt_shapes", metavar="NAME:DxD..", help="optimal input shapes")
    b.add_argument("--max", dest="max_shapes", metavar="NAME:DxD..", help="maximum input shapes")
    b.add_argument("--profiles", type=int, default=1, help="identical optimization profiles (one per "
                   "concurrent context for calib run --contexts)")
    b.add_argument("--calibrator", choices=("entropy", "minmax"), help="TensorRT calibrator (default: "
                   "from the cache header, else entropy)")
    b.add_argument("--save-cache", help="with --data: write TensorRT's calibration cache here")
    b.add_argument("--prefer", action="store_true", help="PREFER instead of OBEY precision constraints")
    b.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    b.add_argument("--out", required=True, help="engine file to write (a .json sidecar goes beside it)")
    b.add_argument("--force", action="store_true", help="overwrite existing outputs")
    b.set_defaults(func=run_build)

    r = sub.add_parser("run", help="run / time a TensorRT engine (needs TensorRT and a GPU)",
                       description="Time a TensorRT engine: latency (median/p90/p99, CUDA events) and "
                                   "throughput per batch size, with one or more execution contexts.")
    r.add_argument("--engine", required=True, help="engine file from calib build")
    r.add_argument("--model", help="ONNX model for reading --data (default: the one in the engine's sidecar)")
    add_data_arguments(r)
    r.add_argument("--batch-sizes", help="comma-separated batch sizes within the engine's profile (default: max)")
    r.add_argument("--contexts", type=int, default=1, help="concurrent execution contexts (default 1)")
    r.add_argument("--iterations", type=int, default=200, help="timed iterations per context (default 200)")
    r.add_argument("--warmup", type=int, default=20, help="warm-up iterations (default 20)")
    r.add_argument("--json", dest="json_out", help="write the results as JSON here")
    r.add_argument("--force", action="store_true", help="overwrite --json output")
    r.set_defaults(func=run_run)


def run_build(args) -> int:
    trt = _require("build")  # noqa: F841 - fail fast, before reading anything
    from ..backends.tensorrt.builder import BuildOptions, build_engine, parse_shapes
    from ..model import load_model

    model = load_model(args.model)
    opts = BuildOptions(mode=args.mode, fp16=args.fp16, workspace_mib=args.workspace,
                        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
                        min_shapes=parse_shapes(args.min_shapes, "--min"),
                        opt_shapes=parse_shapes(args.opt_shapes, "--opt"),
                        max_shapes=parse_shapes(args.max_shapes, "--max"),
                        precision_constraints="prefer" if args.prefer else "obey",
                        profiles=args.profiles, calibrator=args.calibrator,
                        save_cache=Path(args.save_cache) if args.save_cache else None, verbose=args.verbose,
                        calib_batch=args.batch_size)
    dataset = _dataset(args, model)
    def amax_for(ds):   # explicit path with --data: ranges from the GPU-free calibration pipeline
        from ..pipeline import calibrate

        return calibrate(model, None, dataset=ds, write=False, evaluate=False, progress=False).amax

    res = build_engine(model, args.out, cache=args.cache, dataset=dataset, plan=args.plan, options=opts,
                       overwrite=args.force, amax_for=amax_for)
    for line in res.lines:
        print(line)
    return 0


def run_run(args) -> int:
    _require("run")
    from ..backends.tensorrt.runner import TrtEngine
    from ..utils import atomic_write_text, check_writable

    if args.json_out:
        check_writable(args.json_out, args.force)
    sizes = None
    if args.batch_sizes:
        try:
            sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
        except ValueError:
            raise CalibError(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}") from None
    with TrtEngine(args.engine, contexts=args.contexts, log=print) as eng:
        feed = None
        if _has_data(args):
            from ..model import load_model
            mpath = args.model or ((eng.sidecar or {}).get("model") or {}).get("path")
            if not mpath:
                raise CalibError("--data needs --model (the engine's sidecar names no model file)")
            ds = _dataset(args, load_model(mpath))
            first = next(iter(ds.batches(batch_size=max(sizes or [eng.max_batch]))), None)
            feed = first.feed if first is not None else None
        rows = eng.benchmark(sizes, iterations=args.iterations, warmup=args.warmup, feed=feed)
        print(f"{eng.path.name}: TensorRT {eng.info.extra['tensorrt']} on {eng.gpu['name']}, "
              f"{eng.info.precision}, {len(eng.slots)} context(s)")
        print(f"{'batch':>6} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'samples/s':>11}")
        for r in rows:
            print(f"{r['batch_size']:>6} {r['median_ms']:>10.3f} {r['p90_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                  f"{r['throughput_per_s']:>11.1f}")
        if args.json_out:
            atomic_write_text(args.json_out, json.dumps({"engine": str(eng.path), **eng.info.extra,
                                                         "precision": eng.info.precision, "results": rows},
                                                        indent=2) + "\n", overwrite=args.force)
    return 0
