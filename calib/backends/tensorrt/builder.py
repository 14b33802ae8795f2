"""Build a TensorRT engine from ONNX: implicit (calibration cache / calibrator, 8.6-10.x) or
explicit (Q/DQ model from :mod:`calib.qdq`, strongly typed network, >= 10.0; the only path on 11).

All TensorRT calls go through variables named as in
:data:`calib.backends.tensorrt.versions.HANDLE_TYPES` so the conformance test can check every
name against the real bindings.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ...version import __version__ as calib_version
from ...errors import (BackendError, CalibError, EngineMismatchError, InputMismatchError,
                       ModelLoadError)
from ...model import Model, load_model
from ...utils import atomic_write_all, atomic_write_bytes, check_outputs, sha256_bytes, sha256_file
from .matching import LayerAssignment, assign_plan, onnx_layer_basename
from .versions import Capabilities, TrtVersion

ENGINE_FORMAT = "calib-tensorrt-engine"
ENGINE_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- shapes
def parse_shapes(text: str | None, flag: str = "--shapes") -> dict[str, tuple[int, ...]]:
    """``"input:1x3x224x224,mask:1x16"`` -> ``{"input": (1, 3, 224, 224), "mask": (1, 16)}``."""
    out: dict[str, tuple[int, ...]] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, dims = part.rpartition(":")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims.strip()):
            raise CalibError(f"{flag}: cannot read {part!r}; expected NAME:DxDxD (e.g. input:8x3x224x224)")
        out[name.strip()] = tuple(int(d) for d in dims.strip().split("x"))
    return out


def resolve_profile(model: Model, mins: Mapping, opts: Mapping, maxs: Mapping,
                    data_shapes: Mapping[str, tuple] | None = None) -> dict[str, tuple[tuple, tuple, tuple]]:
    """min/opt/max shape per input: fixed inputs use their shape; dynamic ones take the flags,
    else the data's batch shape (min batch 1, opt = max = the data's). Pure Python."""
    names = {t.name for t in model.inputs}
    for flag, given in (("--min", mins), ("--opt", opts), ("--max", maxs)):
        unknown = sorted(set(given) - names)
        if unknown:
            raise InputMismatchError(f"{flag} names unknown input(s) {', '.join(unknown)} "
                                     f"(model inputs: {', '.join(sorted(names))})")
    prof = {}
    for t in model.inputs:
        if not t.is_dynamic:
            shp = tuple(int(d) for d in t.shape)
            for flag, given in (("--min", mins), ("--opt", opts), ("--max", maxs)):
                if t.name in given and tuple(given[t.name]) != shp:
                    raise InputMismatchError(f"{flag} {t.name}:{'x'.join(map(str, given[t.name]))} contradicts "
                                             f"the model's fixed shape {shp}")
            prof[t.name] = (shp, shp, shp)
            continue
        ds = tuple(data_shapes[t.name]) if data_shapes and t.name in data_shapes else None
        opt = opts.get(t.name) or maxs.get(t.name) or ds
        mx = maxs.get(t.name) or opt
        mn = mins.get(t.name) or (tuple([1, *opt[1:]]) if opt else None)
        if opt is None:
            raise InputMismatchError(
                f"input '{t.name}' has dynamic shape {list(t.shape)}: give --min/--opt/--max "
                f"{t.name}:DxDx... or --data so its shapes are known")
        mn, opt, mx = tuple(mn), tuple(opt), tuple(mx)
        if not (len(mn) == len(opt) == len(mx) == t.rank):
            raise InputMismatchError(f"input '{t.name}': profile shapes {mn}/{opt}/{mx} do not have rank {t.rank}")
        for i, d in enumerate(t.shape):
            if isinstance(d, int) and not (mn[i] == opt[i] == mx[i] == d):
                raise InputMismatchError(f"input '{t.name}': dimension {i} is fixed at {d} in the model but the "
                                         f"profile gives {mn[i]}/{opt[i]}/{mx[i]}")
            if not (1 <= mn[i] <= opt[i] <= mx[i]):
                raise InputMismatchError(f"input '{t.name}': profile needs min <= opt <= max, got {mn}/{opt}/{mx}")
        prof[t.name] = (mn, opt, mx)
    return prof


# --------------------------------------------------------------------------- sidecars
def engine_sidecar_path(engine_path: Path) -> Path:
    return Path(str(engine_path) + ".json")


def read_engine_sidecar(engine_path) -> dict | None:
    p = engine_sidecar_path(Path(engine_path))
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineMismatchError(f"{p}: engine sidecar cannot be read: {exc}") from None
    if not isinstance(d, dict) or d.get("format") != ENGINE_FORMAT:
        raise EngineMismatchError(f"{p}: not a calib engine sidecar (format {d.get('format') if isinstance(d, dict) else None!r})")
    return d


def check_engine_sidecar(sidecar: dict, engine_path, trt_version: str, gpu: dict) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU (pure Python).

    TensorRT engines are specific to the exact TensorRT release and to the GPU model they
    were built on (kernels are chosen per compute capability and timed on that GPU)."""
    built_v = str(sidecar.get("tensorrt", "?"))
    if TrtVersion.parse(built_v) != TrtVersion.parse(trt_version):
        raise EngineMismatchError(
            f"{engine_path} was built with TensorRT {built_v} but TensorRT {trt_version} is installed; "
            f"rebuild it here with calib build (engines only load in the release that built them)")
    built_gpu = sidecar.get("gpu") or {}
    if built_gpu.get("compute_capability") != gpu.get("compute_capability") or \
            built_gpu.get("name") != gpu.get("name"):
        raise EngineMismatchError(
            f"{engine_path} was built for {built_gpu.get('name', '?')} (compute capability "
            f"{built_gpu.get('compute_capability', '?')}) but this GPU is {gpu.get('name', '?')} "
            f"({gpu.get('compute_capability', '?')}); rebuild it here with calib build")


def make_engine_sidecar(*, trt_version: str, gpu: dict, model: Model, mode: str, precision: str,
                        plan, cache_path: Path | None, cache_sha256: str | None, profiles: dict,
                        num_profiles: int, options: "BuildOptions", assignment: LayerAssignment | None,
                        build_seconds: float, engine_bytes: bytes) -> dict:
    return {
        "format": ENGINE_FORMAT, "version": ENGINE_FORMAT_VERSION,
        "calib": calib_version, "tensorrt": trt_version, "gpu": gpu,
        "model": {"name": model.name, "sha256": model.sha256,
                  "path": str(model.path) if model.path else None},
        "mode": mode, "precision": precision,
        "precision_plan": plan.to_dict() if plan is not None else None,
        "plan_unmatched": assignment.unmatched_entries if assignment else [],
        "layer_precisions": assignment.counts() if assignment else None,
        "calibration_cache": {"path": str(cache_path) if cache_path else None, "sha256": cache_sha256},
        "profiles": {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in profiles.items()},
        "num_profiles": num_profiles,
        "fp16": options.fp16, "workspace_mib": options.workspace_mib,
        "engine_sha256": sha256_bytes(engine_bytes),
        "build_seconds": round(build_seconds, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --------------------------------------------------------------------------- parser
def parser_errors(parser, model: Model | None, caps: Capabilities) -> list[str]:
    """One line per ONNX parser error, naming the failing node and its operator."""
    nodes = model.nodes if model is not None else []
    lines = []
    for i in range(parser.num_errors):
        perr = parser.get_error(i)
        name = op = None
        if caps.parser_error_names:
            name, op = perr.node_name(), perr.node_operator()
        idx = perr.node()
        if (not name or not op) and isinstance(idx, int) and 0 <= idx < len(nodes):
            name = name or onnx_layer_basename(nodes[idx])
            op = op or nodes[idx].op_type
        where = f"node '{name}' ({op})" if name else (f"node #{idx}" if isinstance(idx, int) and idx >= 0 else "model")
        lines.append(f"{where}: {perr.desc()} [{perr.code()}]")
    return lines


# --------------------------------------------------------------------------- options
@dataclass
class BuildOptions:
    mode: str | None = None                 # "implicit" | "explicit" | None (auto)
    fp16: bool = False
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    min_shapes: dict = field(default_factory=dict)
    opt_shapes: dict = field(default_factory=dict)
    max_shapes: dict = field(default_factory=dict)
    precision_constraints: str = "obey"     # "obey" | "prefer"
    profiles: int = 1                       # identical profiles, one per concurrent context
    calibrator: str | None = None           # "entropy" | "minmax" (default: from the cache header)
    save_cache: Path | None = None          # where TensorRT's own calibration cache goes (--data)
    calib_batch: int | None = None          # calibration batch for dynamic-batch models (--batch-size)
    verbose: bool = False


@dataclass
class BuildResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict
    lines: list[str]


def choose_mode(caps: Capabilities, requested: str | None, model: Model) -> str:
    if requested:
        caps.check_mode(requested)
        return requested
    if model.is_quantized:
        caps.check_mode("explicit")
        return "explicit"
    return caps.default_mode()


#: TensorRT types with no NumPy dtype (BF16 has one through ml_dtypes, which onnx installs, when it
#: imports): DataType member -> what it holds.
NO_NUMPY_DTYPE = {"BF16": "bfloat16, and ml_dtypes is missing", "FP8": "8-bit floats, E4M3", "INT4": "packed 4-bit integers",
                  "FP4": "packed 4-bit floats, E2M1", "E8M0": "8-bit power-of-two scales"}


def numpy_dtype(trt, dt, tensor: str) -> np.dtype:
    """The NumPy dtype of input/output *tensor* of TensorRT type *dt*. INT64 and BF16 exist from 10.0
    and are looked up with getattr, so this works on 8.6 as on 11.x; BF16 is ``ml_dtypes.bfloat16``.
    A type with no NumPy dtype (FP8, INT4, ...) raises :class:`BackendError`: calib feeds and reads
    tensors as NumPy arrays."""
    table = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT8: np.int8,
             trt.DataType.INT32: np.int32, trt.DataType.BOOL: np.bool_, trt.DataType.UINT8: np.uint8}
    int64 = getattr(trt.DataType, "INT64", None)
    if int64 is not None:
        table[int64] = np.int64
    bf16 = getattr(trt.DataType, "BF16", None)
    if bf16 is not None:
        try:
            import ml_dtypes  # a dependency of onnx
            table[bf16] = ml_dtypes.bfloat16
        except ImportError:
            pass
    if dt in table:
        return np.dtype(table[dt])
    member = getattr(dt, "name", None) or str(dt).rsplit(".", 1)[-1]
    what = NO_NUMPY_DTYPE.get(member, "a type calib does not know")
    raise BackendError(f"tensor '{tensor}' has TensorRT type {member} ({what}), which has no NumPy dtype; "
                       f"calib feeds and reads inputs and outputs as NumPy arrays: export the model with "
                       f"float32/float16 (or integer) inputs and outputs")


# --------------------------------------------------------------------------- build
def build_engine(model, out, *, cache=None, dataset=None, plan=None, options: BuildOptions | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = print,
                 amax_for: Callable[[Any], Mapping[str, float]] | None = None) -> BuildResult:
    """Build and serialize an engine for *model*; write ``out`` and ``out.json`` atomically.

    *amax_for(dataset)* gives activation ranges for the explicit (Q/DQ) path when it gets data
    instead of a cache; the caller supplies it (the CLI passes :func:`calib.calibrate`), so this
    backend never reaches up into the calibration pipeline.
    """
    from . import import_tensorrt
    from .cuda import device_properties, require_gpu
    from ...plan import load_plan

    options = options or BuildOptions()
    trt = import_tensorrt()
    caps = Capabilities(TrtVersion.parse(trt.__version__))
    require_gpu()
    model = load_model(model)
    plan = load_plan(plan)
    out = Path(out)
    cache_path = Path(cache) if cache is not None else None
    if cache_path is not None and dataset is None and not cache_path.exists():
        raise CalibError(f"calibration cache not found: {cache_path}")
    mode = choose_mode(caps, options.mode, model)
    if options.profiles < 1:
        raise CalibError("--profiles must be at least 1")

    # check every target (and that its folder can be written) before any work
    check_outputs([out, engine_sidecar_path(out)] + ([options.save_cache] if options.save_cache is not None else []),
                  overwrite)

    lines: list[str] = [f"TensorRT {trt.__version__}, {mode} quantization"]
    data_shapes = None
    if dataset is not None:
        first = next(iter(dataset.batches(batch_size=_calib_batch(model, options))), None)
        if first is None:
            raise CalibError("the calibration data holds no batch")
        data_shapes = {k: tuple(np.asarray(v).shape) for k, v in first.feed.items()}
    profile_shapes = resolve_profile(model, options.min_shapes, options.opt_shapes, options.max_shapes, data_shapes)

    # what to parse
    tmpdir = None
    parse_model = model
    server = None
    assignment = None
    cache_sha = sha256_file(cache_path) if cache_path is not None and cache_path.exists() else None
    if mode == "explicit" and not model.is_quantized:
        if options.fp16:
            raise CalibError("--fp16 does nothing in explicit mode (strongly typed networks take precision "
                             "from the graph): mark fp16 layers in the precision plan (--plan) instead")
        parse_model = _qdq_model(model, cache_path, dataset, plan, lines, amax_for)
    elif mode == "explicit" and plan is not None:
        lines.append("warning: the model is already Q/DQ; the precision plan is not applied again")

    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if mode == "explicit":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif caps.needs_explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    try:
        if parse_model is not model or parse_model.path is None:
            tmpdir = tempfile.TemporaryDirectory(prefix="calib-trt-")
            src = Path(tmpdir.name) / "model.onnx"
            src.write_bytes(parse_model.serialize())
        else:
            src = parse_model.path
        if not parser.parse_from_file(str(src)):
            errs = parser_errors(parser, parse_model, caps)
            raise ModelLoadError(f"TensorRT's ONNX parser rejected {model.name}: " + "; ".join(errs[:5])
                                 + (f" (+{len(errs) - 5} more)" if len(errs) > 5 else ""))
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()

    config = builder.create_builder_config()
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mib) << 20)

    # optimization profiles (one per concurrent context) and, for calibration, one fixed profile
    dynamic = any(t.is_dynamic for t in model.inputs)
    num_profiles = options.profiles if dynamic else 1
    if dynamic:
        for _ in range(num_profiles):
            profile = builder.create_optimization_profile()
            for name, (mn, opt, mx) in profile_shapes.items():
                profile.set_shape(name, mn, opt, mx)
            config.add_optimization_profile(profile)
        lines.append("profiles: " + "; ".join(f"{k} min {'x'.join(map(str, v[0]))} opt {'x'.join(map(str, v[1]))} "
                                              f"max {'x'.join(map(str, v[2]))}" for k, v in profile_shapes.items())
                     + (f" (x{num_profiles})" if num_profiles > 1 else ""))

    calibrator = None
    precision = "fp16" if (mode == "implicit" and options.fp16) else "fp32"
    if mode == "implicit":
        assignment = assign_plan(plan, [network.get_layer(i).name for i in range(network.num_layers)], model)
        wanted = set(assignment.precisions.values()) | ({"fp16"} if options.fp16 else set())
        if "int8" in wanted:
            if cache_path is None and dataset is None:
                raise CalibError("INT8 needs calibration scales: give --cache (from calib calibrate) or --data")
            config.set_flag(trt.BuilderFlag.INT8)
        if "fp16" in wanted:
            config.set_flag(trt.BuilderFlag.FP16)
        precision = "int8" if wanted == {"int8"} else ("mixed" if len(wanted) > 1 else next(iter(wanted), "fp32"))
        constrained = _apply_layer_precisions(trt, network, assignment, wanted)
        if constrained:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS if options.precision_constraints == "obey"
                            else trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        lines.extend(assignment.report_lines())
        if constrained:
            lines.append(f"{constrained} layer(s) constrained to fp32/fp16 ({options.precision_constraints.upper()} "
                         f"precision constraints)")
        if "int8" in wanted:
            calibrator, server = _implicit_calibrator(trt, caps, model, network, cache_path, dataset, options,
                                                      profile_shapes, overwrite, lines)
            config.int8_calibrator = calibrator
            if dynamic:
                profile = builder.create_optimization_profile()
                for name, (_, opt, _) in profile_shapes.items():
                    profile.set_shape(name, opt, opt, opt)
                config.set_calibration_profile(profile)
    else:
        precision = "int8" if (plan is None or plan.default == "int8") else "mixed"

    # timing cache
    tc_path = Path(options.timing_cache) if options.timing_cache else None
    if tc_path is not None:
        tc_bytes = tc_path.read_bytes() if tc_path.exists() else b""
        tcache = config.create_timing_cache(tc_bytes)
        config.set_timing_cache(tcache, False)
        lines.append(f"timing cache: {'loaded ' + str(len(tc_bytes)) + ' bytes from' if tc_bytes else 'new'} {tc_path}")

    t0 = time.perf_counter()
    try:
        host_mem = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.close()
    seconds = time.perf_counter() - t0
    if calibrator is not None and calibrator.error is not None:
        err = calibrator.error
        if isinstance(err, CalibError):
            raise err
        raise BackendError(f"calibration failed: {type(err).__name__}: {err}") from err
    if host_mem is None:
        raise BackendError(f"TensorRT could not build an engine for {model.name} (see TensorRT's messages "
                           f"above; try --workspace, --verbose, or fp32 for the failing layers in --plan)")
    engine_bytes = bytes(memoryview(host_mem))
    if calibrator is not None:
        if server is not None and server.served is not None:
            lines.append(f"calibration: served the cache {cache_path} (provenance checked); TensorRT did not calibrate")
        else:
            lines.append(f"calibration: TensorRT calibrated on {calibrator.batches_fed} batch(es)"
                         + (f", skipped {calibrator.skipped} partial" if calibrator.skipped else "")
                         + (f"; cache written to {server.written}" if server is not None and server.written else ""))
            if server is not None and server.written:
                cache_sha = sha256_file(server.written)

    if tc_path is not None:
        tcache = config.get_timing_cache()
        data = bytes(memoryview(tcache.serialize()))
        atomic_write_bytes(tc_path, data, overwrite=True)

    gpu = device_properties()
    sidecar = make_engine_sidecar(trt_version=str(trt.__version__), gpu=gpu, model=model, mode=mode,
                                  precision=precision, plan=plan,
                                  cache_path=(server.written if server is not None and server.written else cache_path),
                                  cache_sha256=cache_sha, profiles=profile_shapes, num_profiles=num_profiles,
                                  options=options, assignment=assignment, build_seconds=seconds,
                                  engine_bytes=engine_bytes)
    side = engine_sidecar_path(out)
    # the engine and its sidecar belong together: one set, both or neither
    atomic_write_all([(out, engine_bytes),
                      (side, (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode("utf-8"))],
                     overwrite=overwrite)
    lines.append(f"engine: {out} ({len(engine_bytes) / 1e6:.1f} MB, {precision}) built in {seconds:.1f} s on "
                 f"{gpu['name']} (sm {gpu['compute_capability']}); sidecar {side}")
    return BuildResult(out, side, sidecar, lines)


def _calib_batch(model: Model, options: BuildOptions) -> int:
    t = model.inputs[0] if model.inputs else None
    if t is not None and t.fixed_batch:
        return t.fixed_batch
    for given in (options.opt_shapes, options.max_shapes):
        if t is not None and t.name in given:
            return int(given[t.name][0])
    return int(options.calib_batch or 8)


def _apply_layer_precisions(trt, network, assignment: LayerAssignment, wanted: set) -> int:
    """Constrain layers the plan puts in fp32/fp16 when a lower precision is enabled."""
    if not (wanted & {"int8", "fp16"}):
        return 0
    skip = {trt.LayerType.CONSTANT, trt.LayerType.SHAPE, trt.LayerType.IDENTITY, trt.LayerType.CAST}
    floats = {trt.DataType.FLOAT, trt.DataType.HALF}
    n = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        p = assignment.precisions.get(layer.name)
        if p not in ("fp32", "fp16") or layer.type in skip:
            continue
        if p == "fp32" and wanted == {"fp32"}:
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outs or any(tensor.dtype not in floats for tensor in outs):
            continue  # shape/index computations keep their types
        dt = trt.DataType.FLOAT if p == "fp32" else trt.DataType.HALF
        layer.precision = dt
        for j in range(layer.num_outputs):
            layer.set_output_type(j, dt)
        n += 1
    return n


def _network_tensor_names(network) -> set[str]:
    names = set()
    for i in range(network.num_inputs):
        names.add(network.get_input(i).name)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            names.add(layer.get_output(j).name)
    return names


def _implicit_calibrator(trt, caps, model, network, cache_path, dataset, options, profile_shapes, overwrite, lines):
    from .cache_serving import TRT_ALGORITHMS, CacheServer, calibrator_for_cache
    from .calibrator import make_calibrator
    from .cuda import InputSpec

    specs = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        opt = profile_shapes[tensor.name][1]
        specs.append(InputSpec(tensor.name, opt, numpy_dtype(trt, tensor.dtype, tensor.name)))
    batch = specs[0].shape[0] if specs and specs[0].shape else 1
    algo = options.calibrator
    if dataset is None:
        server = CacheServer(cache_path, model, caps.version.cache_version,
                             calibrator="entropy", overwrite=overwrite)
        cache = server.load_checked()  # raises CacheMismatchError before any GPU work
        algo = algo or calibrator_for_cache(cache.algorithm)
        server.algorithm = TRT_ALGORITHMS[algo]
        covered = set(cache.scales) & _network_tensor_names(network)
        lines.append(f"cache {cache_path}: {len(cache.scales)} scales ({cache.algorithm}), "
                     f"{len(covered)} name network tensors; served through {algo} calibrator")
        calibrator = make_calibrator(trt, algo, specs, None, batch, server)
    else:
        algo = algo or "entropy"
        server = CacheServer(options.save_cache, model, caps.version.cache_version,
                             calibrator=algo, overwrite=overwrite,
                             data_description=_describe(dataset), serve=False)
        batches = dataset.batches(batch_size=batch)
        calibrator = make_calibrator(trt, algo, specs, batches, batch, server)
    return calibrator, server


def _describe(dataset):
    try:
        return dataset.describe()
    except Exception:
        return None


def _qdq_model(model: Model, cache_path, dataset, plan, lines, amax_for=None) -> Model:
    """The Q/DQ model for the explicit path, from a calib cache (amax = scale * 127) or data."""
    from ...qdq import quantize_model

    if cache_path is not None and cache_path.exists():
        from .cache_serving import CacheServer
        server = CacheServer(cache_path, model, 0)
        cache = server.load_checked()
        amax = cache.amax
        lines.append(f"explicit: Q/DQ from cache {cache_path} ({len(amax)} tensors)")
    elif dataset is not None and amax_for is not None:
        amax = dict(amax_for(dataset))
        lines.append(f"explicit: Q/DQ from {len(amax)} amax values calibrated on the CPU")
    else:
        raise CalibError("explicit quantization needs scales: give --cache (from calib calibrate) or --data")
    return quantize_model(model, amax, target="tensorrt", plan=plan)
