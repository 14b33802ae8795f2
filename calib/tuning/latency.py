"""Latency models: seconds per sample (batch 1) of each quantization group at each precision.

Every model is a :class:`LatencyModel`: ``group_latency(group, precision)`` and
``predict(groups, precisions)`` (the sum over the groups), with a ``name`` and a one-line
``description`` saying plainly what produced the numbers. :func:`latency_model` makes one from
a spec:

``onnxruntime`` (:class:`OrtLatency`)
    Measured on this CPU. ONNX Runtime profiles (``SessionOptions.enable_profiling``, its JSON
    trace) several runs of the FP32 model and of the ``--target onnxruntime`` INT8 Q/DQ model (the
    caller passes it: ranges are not this layer's business); each profiled node's kernel time,
    median over the runs, goes to the group it comes from: ONNX Runtime's fused and quantized
    nodes (``QLinearConv``, a Conv fused with its activation, NCHWc reorders, Q/DQ nodes) are
    traced back through their names and their tensors in the optimized graph it saved. ``int8``
    is the INT8 model's time, ``fp32`` the FP32 model's. ``fp16`` is not measured: ONNX Runtime's
    CPU provider has no float16 kernels for convolutions, matrix products and most other ops
    (``calib.qdq.ORT_FP16_OPS``), so an fp16 group costs its FP32 time here, and the description
    says so.
``roofline:<gpu>`` (:class:`RooflineLatency`)
    Not measured: ``max(2 x MACs / peak, bytes / bandwidth) + launch`` per group, with the dense
    (no sparsity) peak tensor throughput of the precision, the memory bandwidth and a per-layer
    launch overhead of the GPUs in :data:`GPUS` (sources in ``docs/latency.md``). FP32 layers run
    as TensorRT builds them by default: TF32 tensor cores where the GPU has them (Ampere and
    later), FP32 CUDA cores otherwise. Bytes are the group's activations and weights at the
    precision's width (int8 1, fp16 2, fp32 4). A group that is not quantizable runs in FP32 when
    the plan says int8.
``tensorrt`` (:class:`TensorRTLatency`)
    Measured by TensorRT where it exists: per-layer times from its profiler
    (:meth:`calib.backends.tensorrt.runner.TrtEngine.layer_times`) on an engine per precision
    (built by ``calib build``: FP32, ``--fp16``, and the Q/DQ model for INT8); a layer's time,
    median over the runs, is split evenly among the groups of the ONNX nodes its name lists
    (``a + b``, ``PWN(a, b)``, ``{ForeignNode[a...b]}``, reformatting layers ``... to a``).

A mixed plan's prediction adds each group's time at its precision; the costs of converting
between precisions at group boundaries are not modelled.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import BackendError, CalibError
from ..model import Model, load_model
from ..plan import PRECISIONS
from .groups import QuantGroup, input_shapes

LATENCY_SPECS = ("onnxruntime", "roofline:<gpu>", "tensorrt")
_WIDTH = {"int8": 1, "fp16": 2, "fp32": 4}
# suffixes calib.qdq and ONNX Runtime add to the names of the tensors and nodes they derive
_MARKERS = ("_QuantizeLinear", "_DequantizeLinear", "_quantized", "_dequantized", "_to_fp16", "_fp16_rounded",
            "_to_fp32_Cast", "_unrounded", "_fp16", "_nchwc", "_token_", "_scale", "_zero_point")


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise CalibError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
    return precision


class LatencyModel:
    """Seconds per sample of each group at each precision (see the module docs)."""

    name: str = ""
    description: str = ""

    def group_latency(self, group: QuantGroup, precision: str) -> float:
        raise NotImplementedError

    def predict(self, groups: Sequence[QuantGroup], precisions: Mapping[str, str], default: str = "int8") -> float:
        """Seconds per sample of the whole model: each group at ``precisions[group.id]``, else
        at *default*."""
        return float(sum(self.group_latency(g, precisions.get(g.id, default)) for g in groups))


# --------------------------------------------------------------------------- attribution to groups
def _bases(name: str) -> list[str]:
    """*name*, then what is left of it before each suffix calib.qdq or ONNX Runtime adds."""
    out = [name]
    i = 0
    while i < len(out):
        for m in _MARKERS:
            k = out[i].find(m)
            if k > 0 and out[i][:k] not in out:
                out.append(out[i][:k])
        i += 1
    return out


class GroupIndex:
    """Which group an ONNX node name, a tensor name, or a name derived from one belongs to."""

    def __init__(self, model: Model, groups: Sequence[QuantGroup]):
        from ..plan import node_key

        self.node = {k: g.id for g in groups for k in g.nodes}
        self.order = [node_key(n) for n in model.nodes]
        self.position = {k: i for i, k in enumerate(self.order)}
        self.tensor: dict[str, str] = {}
        for n in model.nodes:
            gid = self.node.get(node_key(n))
            for t in n.output:
                if t and gid is not None:
                    self.tensor.setdefault(t, gid)
        inputs = {i.name for i in model.inputs}
        # graph inputs: the group of their first consumer that reads values (not a Shape)
        for n in sorted(model.nodes, key=lambda n: n.op_type in ("Shape", "Size")):
            gid = self.node.get(node_key(n))
            for t in n.input:
                if t in inputs and t not in self.tensor and gid is not None:
                    self.tensor[t] = gid

    def of_node(self, name: str) -> str | None:
        return next((self.node[c] for c in _bases(name) if c in self.node), None)

    def of_tensor(self, name: str, derived: Mapping[str, str] | None = None) -> str | None:
        for c in _bases(name):
            if derived and c in derived:
                return derived[c]
            if c in self.tensor:
                return self.tensor[c]
        return None

    def of_range(self, first: str, last: str) -> list[str]:
        """Groups of the nodes from *first* to *last* in topological order."""
        a, b = self.position.get(first), self.position.get(last)
        if a is None or b is None:
            return []
        lo, hi = min(a, b), max(a, b)
        return list(dict.fromkeys(self.node[k] for k in self.order[lo:hi + 1] if k in self.node))


# --------------------------------------------------------------------------- ONNX Runtime
def random_feed(model: Model, shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0) -> dict:
    """Inputs of batch 1 at :func:`~calib.tuning.groups.input_shapes`: standard normal floats,
    zeros for integer inputs."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in model.inputs:
        shape = input_shapes(model, shapes)[t.name]
        out[t.name] = (rng.standard_normal(shape).astype(t.dtype) if np.dtype(t.dtype).kind == "f"
                       else np.zeros(shape, t.dtype))
    return out


@dataclass
class NodeProfile:
    """One profiled session: median kernel seconds per node, median seconds per run, and the
    optimized graph's nodes as ``(name, inputs, outputs)`` in order."""

    node_s: dict[str, float]
    run_s: float
    graph: list[tuple[str, tuple[str, ...], tuple[str, ...]]]
    runs: int


def profile_onnxruntime(model, feed: Mapping[str, np.ndarray], runs: int = 10, warmup: int = 3,
                        threads: int | None = None) -> NodeProfile:
    """Profile *runs* runs of *model* in ONNX Runtime (after *warmup* runs) at optimization level
    ``all``: the median over the runs of each node's kernel time and of the whole run."""
    import onnx
    import onnxruntime as ort

    from ..backends.onnxruntime import ort_message, session_options

    from ..plan import node_key

    model = load_model(model)
    if runs < 1:
        raise CalibError("runs must be at least 1")
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for n in proto.graph.node:      # ONNX Runtime would call an unnamed node <op>_<index>
        if not n.name:
            n.name = node_key(n)
    with tempfile.TemporaryDirectory(prefix="calib-profile-") as tmp:
        so = session_options(threads, "all")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        try:
            sess = ort.InferenceSession(proto.SerializeToString(), sess_options=so,
                                        providers=["CPUExecutionProvider"])
            for _ in range(warmup + runs):
                sess.run(None, dict(feed))
        except Exception as exc:
            raise BackendError(f"{model.name}: ONNX Runtime failed while profiling: {ort_message(exc)}") from None
        with open(sess.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
        graph = [(n.name, tuple(n.input), tuple(n.output))
                 for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node]
    spans = sorted((e["ts"], e["ts"] + e["dur"], e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")[-runs:]
    per_run: list[dict[str, float]] = [{} for _ in spans]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        for k, (lo, hi, _) in enumerate(spans):
            if lo <= e["ts"] <= hi:
                name = e["name"][:-len("_kernel_time")]
                per_run[k][name] = per_run[k].get(name, 0.0) + e["dur"] * 1e-6
                break
    names = {n for r in per_run for n in r}
    node_s = {n: statistics.median(r.get(n, 0.0) for r in per_run) for n in sorted(names)}
    return NodeProfile(node_s, statistics.median(d for _, _, d in spans) * 1e-6, graph, len(spans))


def attribute_profile(index: GroupIndex, prof: NodeProfile) -> tuple[dict[str, float], float]:
    """``({group id: seconds}, unattributed seconds)``: each profiled node's time goes to the group
    its name says, else the group of its outputs' or inputs' (original or derived) tensors."""
    derived: dict[str, str] = {}
    of_node: dict[str, str | None] = {}
    for name, ins, outs in prof.graph:
        gid = index.of_node(name) if name else None
        for t in outs:
            gid = gid or index.of_tensor(t, derived)
        gid = gid or (index.of_tensor(name, derived) if name else None)
        for t in ins:
            gid = gid or index.of_tensor(t, derived)
        if gid is not None:
            for t in outs:
                derived.setdefault(t, gid)
        of_node[name] = gid
    times: dict[str, float] = {}
    lost = 0.0
    for name, s in prof.node_s.items():
        gid = of_node.get(name) or index.of_node(name) or index.of_tensor(name, derived)
        if gid is None:
            lost += s
        else:
            times[gid] = times.get(gid, 0.0) + s
    return times, lost


class OrtLatency(LatencyModel):
    """Measured ONNX Runtime CPU times per group (see the module docs)."""

    name = "onnxruntime"

    def __init__(self, times: Mapping[str, Mapping[str, float]], whole: Mapping[str, float],
                 unattributed: Mapping[str, float], description: str):
        self.times = {p: dict(t) for p, t in times.items()}       # "fp32" / "int8" -> group id -> s
        self.whole = dict(whole)                                  # precision -> measured s per run
        self.unattributed = dict(unattributed)                    # precision -> s no group took
        self.description = description

    def group_latency(self, group: QuantGroup, precision: str) -> float:
        p = _check_precision(precision)
        return float(self.times["int8" if p == "int8" else "fp32"].get(group.id, 0.0))


def measure_onnxruntime(model, groups: Sequence[QuantGroup], int8_model, *, feed=None,
                        shapes: Mapping[str, Sequence[int]] | None = None, runs: int = 10,
                        warmup: int = 3, threads: int | None = None) -> OrtLatency:
    """:class:`OrtLatency` from profiling *model* (FP32) and *int8_model* (its
    ``quantize_model(..., target="onnxruntime")``) on *feed* (default: :func:`random_feed` at
    *shapes*, batch 1)."""
    import onnxruntime as ort

    from ..backends.onnxruntime import default_threads

    model, int8_model = load_model(model), load_model(int8_model)
    if not int8_model.is_quantized:
        raise CalibError(f"{int8_model.name} has no Q/DQ nodes: the onnxruntime latency model needs the "
                         f"--target onnxruntime INT8 model of {model.name}")
    feed = dict(feed) if feed is not None else random_feed(model, shapes)
    batch = max(1, int(next(iter(feed.values())).shape[0])) if feed else 1
    index = GroupIndex(model, groups)
    times, whole, lost = {}, {}, {}
    for p, m in (("fp32", model), ("int8", int8_model)):
        prof = profile_onnxruntime(m, feed, runs, warmup, threads)
        t, lost_s = attribute_profile(index, prof)
        times[p] = {k: v / batch for k, v in t.items()}
        whole[p], lost[p] = prof.run_s / batch, lost_s / batch
    desc = (f"measured: ONNX Runtime {ort.__version__} CPU provider on this machine "
            f"({threads or default_threads()} threads), median per-node kernel time over {runs} profiled runs "
            f"(batch {batch}) of the FP32 model and of the --target onnxruntime INT8 model; fp16 not measured "
            f"(no float16 kernels for these ops in ONNX Runtime's CPU provider): fp16 groups cost their FP32 time")
    return OrtLatency(times, whole, lost, desc)


# --------------------------------------------------------------------------- roofline
@dataclass(frozen=True)
class GpuSpec:
    """Peak dense throughput (no sparsity) and memory bandwidth of one GPU (``docs/latency.md``)."""

    key: str
    name: str
    fp32: float          # FLOP/s TensorRT's FP32 layers get: TF32 tensor cores, else FP32 CUDA cores
    fp32_unit: str       # "TF32 tensor cores" | "FP32 CUDA cores"
    fp16: float          # FP16 tensor FLOP/s, dense
    int8: float          # INT8 tensor OP/s, dense
    bandwidth: float     # bytes/s
    launch_s: float      # per-layer launch overhead (an assumption, not a datasheet figure)
    source: str


T = 1e12
GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("h100", "NVIDIA H100 SXM5 80GB", 494.5 * T, "TF32 tensor cores", 989.5 * T, 1979 * T,
                    3.35e12, 2e-6, "NVIDIA H100 Tensor Core GPU datasheet (sparse figures halved)"),
    "a100": GpuSpec("a100", "NVIDIA A100 SXM4 80GB", 156 * T, "TF32 tensor cores", 312 * T, 624 * T,
                    2.039e12, 2e-6, "NVIDIA A100 Tensor Core GPU datasheet"),
    "l4": GpuSpec("l4", "NVIDIA L4", 60 * T, "TF32 tensor cores", 121 * T, 242.5 * T,
                  300e9, 2e-6, "NVIDIA L4 Tensor Core GPU datasheet (sparse figures halved)"),
    "t4": GpuSpec("t4", "NVIDIA T4", 8.1 * T, "FP32 CUDA cores", 65 * T, 130 * T,
                  320e9, 2e-6, "NVIDIA T4 Tensor Core GPU datasheet"),
    "orin": GpuSpec("orin", "NVIDIA Jetson AGX Orin 64GB (GPU only)", 21.25 * T, "TF32 tensor cores", 42.5 * T,
                    85 * T, 204.8e9, 4e-6, "NVIDIA Jetson AGX Orin Series technical brief (GPU 170 sparse INT8 "
                    "TOPS; FP16 and TF32 derived at 1/2 and 1/4 of INT8)"),
}


class RooflineLatency(LatencyModel):
    """Roofline prediction for one GPU of :data:`GPUS` (see the module docs)."""

    def __init__(self, gpu: GpuSpec):
        self.gpu = gpu
        self.name = f"roofline:{gpu.key}"
        self.description = (f"predicted, not measured: roofline for {gpu.name} from datasheet dense peaks "
                            f"(fp32 on {gpu.fp32_unit} {gpu.fp32 / T:g}, fp16 {gpu.fp16 / T:g}, int8 {gpu.int8 / T:g} "
                            f"T(FL)OP/s, {gpu.bandwidth / 1e9:g} GB/s) and {gpu.launch_s * 1e6:g} us launch per "
                            f"group; see docs/latency.md")

    def precision_of(self, group: QuantGroup, precision: str) -> str:
        """The precision *group* runs at: a group that is never INT8 runs in FP32 under an int8 plan."""
        p = _check_precision(precision)
        return "fp32" if p == "int8" and not group.quantizable else p

    def group_latency(self, group: QuantGroup, precision: str) -> float:
        p = self.precision_of(group, precision)
        gpu = self.gpu
        peak = {"fp32": gpu.fp32, "fp16": gpu.fp16, "int8": gpu.int8}[p]
        nbytes = group.activation_bytes / 4 * _WIDTH[p] + group.weight_count * _WIDTH[p]
        if not (group.macs or group.activation_bytes):
            return 0.0
        return max(2.0 * group.macs / peak, nbytes / gpu.bandwidth) + gpu.launch_s


# --------------------------------------------------------------------------- TensorRT
_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to (.+)$")
_FOREIGN = re.compile(r"\{ForeignNode\[(.*?)\]\}")


def layer_groups(index: GroupIndex, layer: str) -> list[str]:
    """The groups a TensorRT layer name covers (see the module docs); empty if none is known."""
    m = _REFORMAT.match(layer.strip())
    parts: list = [m.group(1)] if m else []
    if not m:
        for f in _FOREIGN.finditer(layer):
            first, _, last = f.group(1).partition("...")
            parts.append((first.strip(), (last or first).strip()))
        rest = _FOREIGN.sub(" + ", layer).replace("PWN(", " + ").replace(")", " + ").replace(", ", " + ")
        parts += [t.strip() for t in rest.split(" + ") if t.strip()]
    out: list[str] = []
    for part in parts:
        if isinstance(part, tuple):
            found = index.of_range(*part)
        else:
            gid = index.of_node(part) or index.of_tensor(part)
            found = [gid] if gid else []
        out += [g for g in found if g not in out]
    return out


class TensorRTLatency(LatencyModel):
    """Measured TensorRT per-layer times per group (see the module docs)."""

    name = "tensorrt"

    def __init__(self, model, groups: Sequence[QuantGroup], layer_times: Mapping[str, Mapping[str, Sequence[float]]],
                 description: str | None = None):
        model = load_model(model)
        index = GroupIndex(model, groups)
        self.times: dict[str, dict[str, float]] = {}
        self.unattributed: dict[str, list[str]] = {}
        for p, layers in layer_times.items():
            _check_precision(p)
            per: dict[str, float] = {}
            lost = []
            for layer, ms in layers.items():
                if not len(ms):
                    continue
                gids = layer_groups(index, layer)
                if not gids:
                    lost.append(layer)
                    continue
                share = statistics.median(ms) * 1e-3 / len(gids)
                for g in gids:
                    per[g] = per.get(g, 0.0) + share
            self.times[p] = per
            self.unattributed[p] = lost
        self.description = description or (
            f"measured: TensorRT per-layer profiler times (median per layer) on the {', '.join(sorted(self.times))} "
            f"engine(s), split evenly among the groups each layer fuses")

    def group_latency(self, group: QuantGroup, precision: str) -> float:
        p = _check_precision(precision)
        if p not in self.times:
            raise CalibError(f"the tensorrt latency model has no {p} engine profiled "
                             f"(profiled: {', '.join(sorted(self.times)) or 'none'})")
        return float(self.times[p].get(group.id, 0.0))


def measure_tensorrt(model, groups: Sequence[QuantGroup], engines: Mapping[str, "str | os.PathLike"], *,
                     feed=None, iterations: int = 20, warmup: int = 5) -> TensorRTLatency:
    """:class:`TensorRTLatency` from TensorRT's profiler on *engines* (precision -> engine file,
    e.g. ``{"fp32": ..., "fp16": ..., "int8": ...}`` built by ``calib build``); raises
    :class:`~calib.errors.TensorRTUnavailableError` where TensorRT or a GPU is missing."""
    from ..backends.tensorrt.runner import TrtEngine

    times, info = {}, ""
    for p, path in engines.items():
        _check_precision(p)
        with TrtEngine(path) as eng:
            times[p] = eng.layer_times(feed, iterations=iterations, warmup=warmup)
            info = f"TensorRT {eng.info.extra.get('tensorrt')} on {eng.info.extra.get('gpu')}"
    return TensorRTLatency(model, groups, times, f"measured: {info} per-layer profiler times (median of "
                                                 f"{iterations} runs per layer) on the {', '.join(sorted(times))} "
                                                 f"engine(s), split evenly among the groups each layer fuses")


# --------------------------------------------------------------------------- factory
def latency_model(spec: str, model, groups: Sequence[QuantGroup], **kw) -> LatencyModel:
    """The latency model *spec* names: ``onnxruntime`` (``int8_model=`` required; ``feed``,
    ``shapes``, ``runs``, ``warmup``, ``threads``), ``roofline:<gpu>`` (a key of :data:`GPUS`),
    ``tensorrt`` (``engines={precision: path}``, or measured ``layer_times={precision: {layer:
    [ms, ...]}}``; ``feed``, ``iterations``, ``warmup``). Raises
    :class:`~calib.errors.CalibError` naming the valid specs."""
    spec = (spec or "").strip().lower()
    if spec == "onnxruntime":
        if kw.get("int8_model") is None:
            raise CalibError("the onnxruntime latency model needs int8_model: the --target onnxruntime "
                             "INT8 model (quantize_model(..., target='onnxruntime'))")
        return measure_onnxruntime(model, groups, **kw)
    if spec.startswith("roofline:"):
        gpu = spec.split(":", 1)[1]
        if gpu not in GPUS:
            raise CalibError(f"unknown GPU {gpu!r} for the roofline latency model (known: {', '.join(GPUS)})")
        if kw:
            raise CalibError(f"the roofline latency model takes no options (got {', '.join(sorted(kw))})")
        return RooflineLatency(GPUS[gpu])
    if spec == "tensorrt":
        layer_times = kw.pop("layer_times", None)
        if layer_times is not None:
            return TensorRTLatency(model, groups, layer_times)
        if not kw.get("engines"):
            raise CalibError("the tensorrt latency model needs engines={precision: engine file} "
                             "(built with calib build), or measured layer_times")
        return measure_tensorrt(model, groups, **kw)
    raise CalibError(f"unknown latency model {spec!r} (expected one of {', '.join(LATENCY_SPECS)}; "
                     f"GPUs: {', '.join(GPUS)})")
