"""The Q/DQ entry points: :func:`quantize_model`, :func:`required_tensors`, :func:`check_input`
(the algorithm is described in :mod:`calib.qdq`)."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import AlreadyQuantizedError, QuantizationError
from ..graph import Graph, tensor_types
from ..model import QUANT_OPS, Model, load_model
from ..plan import load_plan, node_key
from ..preparation import prepared_proto
from ..smooth import smooth_graph
from .placement import ORT_FP16_OPS, PLACEMENTS, place
from .rewrite import Emitter

log = logging.getLogger("calib.qdq")

TARGETS = tuple(PLACEMENTS)


@dataclass
class QuantReport:
    """What :func:`quantize_model` did (JSON-able via :meth:`to_dict`)."""

    target: str
    opset_before: int
    opset_after: int
    int8_nodes: list[str] = field(default_factory=list)
    fp16_nodes: list[str] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)           # plan said fp32
    float_fallback: dict[str, str] = field(default_factory=dict)  # node -> why it stayed float
    quantized_tensors: list[str] = field(default_factory=list)
    missing_amax: list[str] = field(default_factory=list)
    propagated_amax: dict[str, str] = field(default_factory=dict)  # tensor -> tensor it took amax from
    folded: list[str] = field(default_factory=list)
    unmatched_plan_entries: list[str] = field(default_factory=list)
    folded_plan_entries: dict[str, str] = field(default_factory=dict)  # entry of a folded node -> node it follows
    fp16_rounded: list[str] = field(default_factory=list)          # fp16 nodes left float32 between fp16 round trips
    smoothed: list[str] = field(default_factory=list)              # tensors smoothed (calib.smooth)
    bias_probes: dict[str, str] = field(default_factory=dict)      # probe output -> node (bias_probe=True)
    bias_corrected: list[str] = field(default_factory=list)        # nodes whose bias took a bias_shift

    def to_dict(self) -> dict:
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in self.__dict__.items()}

    def summary(self) -> str:
        s = (f"{self.target}: {len(self.int8_nodes)} int8 nodes, {len(self.quantized_tensors)} quantized "
             f"activations, {len(self.fp16_nodes)} fp16, {len(self.fp32_nodes)} fp32 by plan, "
             f"{len(self.float_fallback)} left float")
        if self.smoothed:
            s += f", {len(self.smoothed)} tensors smoothed"
        if self.bias_corrected:
            s += f", {len(self.bias_corrected)} biases corrected"
        if self.missing_amax:
            s += f", no amax for {len(self.missing_amax)} tensor(s): {', '.join(self.missing_amax[:3])}"
            s += "..." if len(self.missing_amax) > 3 else ""
        if self.unmatched_plan_entries:
            s += f", {len(self.unmatched_plan_entries)} plan entries match no node"
        return s


def check_input(model: Model, target: str) -> None:
    """Raise unless *model* can be quantized for *target*: not already quantized, not float16."""
    if target not in TARGETS:
        raise QuantizationError(f"unknown Q/DQ target {target!r} (expected one of {', '.join(TARGETS)})")
    if model.is_quantized:
        ops = sorted({n.op_type for n in model.proto.graph.node if n.op_type in QUANT_OPS})
        raise AlreadyQuantizedError(
            f"{model.name} is already quantized (has {', '.join(ops[:4])}{'...' if len(ops) > 4 else ''}); "
            f"quantize the FP32 model instead")
    if model.is_fp16:
        raise QuantizationError(f"{model.name} is a float16 model; quantize its FP32 version instead")


def required_tensors(model, target: str = "tensorrt", plan=None) -> list[str]:
    """Activation tensors whose amax the placement for *target* (and *plan*) uses, in
    topological order. Calibration may collect only these."""
    model = load_model(model)
    check_input(model, target)
    plan = load_plan(plan)
    proto, done = prepared_proto(model)
    G = Graph(proto)
    P = place(G, tensor_types(proto), target, done.plan(plan), None)
    order = {t: i for i, t in enumerate(G.graph_inputs + [o for n in G.g.node for o in n.output])}
    return sorted(set(P.used_amax), key=lambda t: order.get(t, len(order)))


def quantize_model(model, amax: Mapping[str, float], *, target: str = "tensorrt", plan=None,
                   per_channel: bool = True, weight_amax: Mapping[str, object] | None = None,
                   smooth: Mapping[str, object] | None = None, bias_probe: bool = False,
                   bias_shift: Mapping[str, object] | None = None, fp16_fallback: bool | None = None) -> Model:
    """Return a new :class:`Model` with Q/DQ nodes placed for *target* (see :mod:`calib.qdq`).

    *amax* maps activation tensor names to their calibrated absolute maximum. Tensors the
    placement needs but *amax* lacks take the amax of a data-movement neighbour, else the op
    stays float; ``result.quant_report`` lists both. *weight_amax* optionally maps weight
    initializer names to an amax (scalar or per channel) instead of max |w|. *smooth* maps
    tensors to per-channel smoothing factors (:mod:`calib.smooth`), applied exactly to the float
    graph before placement; the *amax* of a smoothed tensor must then be that of its smoothed
    values.

    *bias_shift* maps node keys (:func:`calib.plan.node_key`) of INT8 Conv / ConvTranspose / Gemm
    nodes to their measured mean output error per channel, which is subtracted from their bias
    (a new bias initializer; one is added where the node has none); the nodes corrected are in
    ``quant_report.bias_corrected``. ``bias_probe=True`` adds the graph outputs that measure that
    error (``quant_report.bias_probes``: output name -> node key), for
    :func:`calib.collect.bias_shifts`: such a model is for measuring, not for deployment.

    *plan* names the original model's nodes; a node preparation removed follows the node it was
    folded into (:class:`calib.preparation.Preparation`), and its entries are listed in
    ``quant_report.folded_plan_entries``. *fp16_fallback* (default: for the ``onnxruntime``
    target) keeps the plan's fp16 nodes whose op ONNX Runtime's CPU provider runs only in float32
    (not in :data:`~calib.qdq.placement.ORT_FP16_OPS`) computing in float32 on float16-rounded
    inputs, weights and outputs (``quant_report.fp16_rounded``), since ONNX Runtime would
    otherwise drop the rounding; without it every fp16 node computes in float16, as TensorRT
    builds it.
    """
    model = load_model(model)
    check_input(model, target)
    plan = load_plan(plan)
    if amax is None or not isinstance(amax, Mapping):
        raise QuantizationError("amax must be a mapping of activation tensor name -> float")
    proto, done = prepared_proto(model)
    G = Graph(proto)
    smoothed = []
    if smooth:
        try:
            smoothed = smooth_graph(G, smooth)
        except ValueError as exc:
            raise QuantizationError(f"{done.name}: {exc}") from None
    types = tensor_types(proto)
    P = place(G, types, target, done.plan(plan), amax)
    report = QuantReport(target=target, opset_before=done.opset_before, opset_after=G.opset)
    report.int8_nodes = [node_key(n) for n in P.int8_nodes]
    report.smoothed = smoothed
    report.quantized_tensors = sorted(P.tparams)
    report.float_fallback = dict(P.float_fallback)
    report.missing_amax = list(P.missing)
    report.propagated_amax = dict(P.propagated)
    report.fp32_nodes = [node_key(n) for n in P.fp32]
    if plan is not None:
        report.unmatched_plan_entries = plan.match(done.node_keys)[1]
        report.folded_plan_entries = {k: done.follows[k] for k in sorted(plan.layers) if k in done.follows}
    emitter = Emitter(G, P, report, target=target, per_channel=per_channel, weight_amax=weight_amax,
                      bias_probe=bias_probe, bias_shift=bias_shift)
    report.folded = list(done.folded) + emitter.rewrite()
    if P.fp16:
        if fp16_fallback is None:
            fp16_fallback = target == "onnxruntime"
        fp16 = [(n.op_type, tuple(n.output), node_key(n)) for n in P.fp16]
        report.fp16_nodes = emitter.wrap_fp16([(op, outs) for op, outs, _ in fp16], types,
                                              ORT_FP16_OPS if fp16_fallback else None)
        if fp16_fallback:
            report.fp16_rounded = [k for op, _, k in fp16 if k in report.fp16_nodes and op not in ORT_FP16_OPS]
    G.remove_dead()
    G.prune_value_info()
    meta = {"calib.qdq.target": target, "calib.qdq.per_channel": str(bool(per_channel)).lower()}
    kept = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for k, v in sorted(meta.items()):
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    try:
        import onnx

        onnx.checker.check_model(proto)
    except Exception as exc:  # a bug here, not a user error; still say which model
        raise QuantizationError(f"{done.name}: Q/DQ model fails the ONNX checker: "
                                f"{str(exc).strip().splitlines()[0]}") from None
    out = Model.from_proto(proto)
    out.quant_report = report
    if report.missing_amax or report.float_fallback:
        log.warning("%s: %s", done.name, report.summary())
    return out
