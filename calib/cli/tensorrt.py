"""`calib build` and `calib run`: build a TensorRT engine, run / time it (TensorRT + NVIDIA GPU).

Without TensorRT both print one line saying what is needed and how to install it, and exit
non-zero (:class:`calib.errors.TensorRTUnavailableError`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import CalibError, TensorRTUnavailableError
from .args import DataArgs, JsonArgs, ModelArgs, OutputArgs, RuntimeArgs, add_command, print_json


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


BUILD_DATA = DataArgs()
BUILD_OUTPUT = OutputArgs(required=True, writes="<model stem>.plan and its .plan.json sidecar",
                          not_suffixes=(".plan", ".engine", ".trt"))
RUN_DATA = DataArgs()
RUN_OUTPUT = OutputArgs(writes="run.json (the timings)", not_suffixes=(".json",))


def register(sub) -> None:
    b = add_command(sub, "build", help="build a TensorRT engine (needs TensorRT and a GPU)",
                    description="Build a TensorRT engine from an ONNX model with INT8 scales from a calib cache "
                                "(computed on any machine) or from data; writes DIR/<model stem>.plan and its "
                                "sidecar DIR/<model stem>.plan.json.",
                    groups=[ModelArgs(help="ONNX model"), BUILD_DATA, RuntimeArgs(), BUILD_OUTPUT], func=run_build)
    b.add_argument("--cache", help="calibration cache from calib calibrate (its sidecar is checked)")
    b.add_argument("--plan", help="precision plan JSON (ONNX node name -> fp32/fp16/int8)")
    b.add_argument("--fp16", action="store_true", help="also allow fp16 kernels (implicit mode)")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--explicit", dest="mode", action="store_const", const="explicit",
                      help="Q/DQ model + strongly typed network (TensorRT >= 10; the only mode on 11); with "
                           "--data, the ranges are calibrated on the CPU (--threads)")
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

    r = add_command(sub, "run", help="run / time a TensorRT engine (needs TensorRT and a GPU)",
                    description="Time a TensorRT engine: latency (median/p90/p99, CUDA events) and throughput "
                                "per batch size, with one or more execution contexts.",
                    groups=[ModelArgs(required=False, help="ONNX model for reading --data (default: the one in the "
                                                           "engine's sidecar)"),
                            RUN_DATA, RUN_OUTPUT, JsonArgs()], func=run_run)
    r.add_argument("--engine", required=True, help="engine file from calib build")
    r.add_argument("--batch-sizes", help="comma-separated batch sizes within the engine's profile (default: max)")
    r.add_argument("--contexts", type=int, default=1, help="concurrent execution contexts (default 1)")
    r.add_argument("--iterations", type=int, default=200, help="timed iterations per context (default 200)")
    r.add_argument("--warmup", type=int, default=20, help="warm-up iterations (default 20)")


def run_build(args) -> int:
    trt = _require("build")  # noqa: F841 - fail fast, before reading anything
    from ..backends.tensorrt.builder import BuildOptions, build_engine, parse_shapes

    out = BUILD_OUTPUT.parse(args)
    threads = RuntimeArgs.parse(args)
    model = ModelArgs.parse(args)
    opts = BuildOptions(mode=args.mode, fp16=args.fp16, workspace_mib=args.workspace,
                        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
                        min_shapes=parse_shapes(args.min_shapes, "--min"),
                        opt_shapes=parse_shapes(args.opt_shapes, "--opt"),
                        max_shapes=parse_shapes(args.max_shapes, "--max"),
                        precision_constraints="prefer" if args.prefer else "obey",
                        profiles=args.profiles, calibrator=args.calibrator,
                        save_cache=Path(args.save_cache) if args.save_cache else None, verbose=args.verbose,
                        calib_batch=args.batch_size)
    dataset = BUILD_DATA.parse(args, model)

    def amax_for(ds):   # explicit path with --data: ranges from the GPU-free calibration pipeline
        from ..pipeline import calibrate

        return calibrate(model, dataset=ds, write=False, evaluate=False, progress=False, threads=threads).amax

    res = build_engine(model, out.path(f"{model.name}.plan"), cache=args.cache, dataset=dataset, plan=args.plan,
                       options=opts, overwrite=out.force, amax_for=amax_for)
    for line in res.lines:
        print(line)
    return 0


def run_run(args) -> int:
    _require("run")
    from ..backends.tensorrt.runner import TrtEngine
    from ..model import load_model

    out = RUN_OUTPUT.parse(args)
    json_out = JsonArgs.parse(args)
    if out.dir is not None:
        out.check("run.json")
    sizes = None
    if args.batch_sizes:
        try:
            sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
        except ValueError:
            raise CalibError(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}") from None
    say = (lambda text: print(text, file=sys.stderr)) if json_out else print   # stdout holds only the JSON
    with TrtEngine(args.engine, contexts=args.contexts, log=say) as eng:
        feed = None
        if RUN_DATA.given(args):
            mpath = args.model or ((eng.sidecar or {}).get("model") or {}).get("path")
            if not mpath:
                raise CalibError("--data needs --model (the engine's sidecar names no model file)")
            ds = RUN_DATA.parse(args, load_model(mpath))
            first = next(iter(ds.batches(batch_size=max(sizes or [eng.max_batch]))), None)
            feed = first.feed if first is not None else None
        rows = eng.benchmark(sizes, iterations=args.iterations, warmup=args.warmup, feed=feed)
        result = {"engine": str(eng.path), **eng.info.extra, "precision": eng.info.precision, "results": rows}
        if not json_out:
            print(f"{eng.path.name}: TensorRT {eng.info.extra['tensorrt']} on {eng.gpu['name']}, "
                  f"{eng.info.precision}, {len(eng.slots)} context(s)")
            print(f"{'batch':>6} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'samples/s':>11}")
            for r in rows:
                print(f"{r['batch_size']:>6} {r['median_ms']:>10.3f} {r['p90_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                      f"{r['throughput_per_s']:>11.1f}")
    if out.dir is not None:
        path = out.write_json("run.json", result)
        say(f"wrote {path}")
    if json_out:
        print_json(result)
    return 0
