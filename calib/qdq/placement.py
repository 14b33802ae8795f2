"""Q/DQ placement: which tensors of the prepared graph get quantized, with which parameters.

A placement is a table per target from op type to a rule (as ONNX Runtime's quantizer registry
maps op types to its QDQ operator classes): :data:`TENSORRT_RULES` and :data:`ORT_RULES`. The
target's :class:`TargetPlacement` walks the graph in order and asks the rule of each INT8 node
(:class:`~calib.plan.PrecisionPlan` default ``int8``, standard ONNX domain) which of its inputs,
weights and outputs to quantize; nodes without a rule stay float. The result is a
:class:`Placement`, which :mod:`calib.qdq.rewrite` turns into nodes.

Activation parameters (:class:`QParams`) come from calibrated amax (:class:`AmaxLookup`, which
falls back to a data-movement neighbour's amax): symmetric, scale ``amax / 127`` (int8 zero
point 0 for TensorRT, uint8 zero point 128 for ONNX Runtime); for ONNX Runtime a tensor that can
only be >= 0 gets uint8 with zero point 0 and scale ``amax / 255``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..graph import STANDARD_DOMAINS, WEIGHTED_OPS, ConstEval, Graph, attr, clip_bounds, weight_axis
from ..plan import PrecisionPlan, node_key

# ONNX element types (TensorProto values)
FLOAT = 1
UINT8 = 2
INT8 = 3
FLOAT16 = 10

POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")
# ONNX Runtime: ops with an integer kernel reached from DQ -> op -> Q.
# Mul is left out on purpose: quantizing the Muls of hard-swish / gating blocks costs much
# accuracy (PP-OCRv4's recogniser) for no CNN speed-up.
ORT_INT8_OPS = ("Conv", "Gemm", "MatMul", "Add", "Concat", "GlobalAveragePool", "AveragePool")
# ops that only move or select data: int8 in, int8 out with the same scale
DATA_MOVEMENT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "MaxPool")
# ops a plan's fp32 entry keeps out of INT8 (reported as fp32 nodes), whatever the target
QUANTIZABLE_OPS = frozenset(WEIGHTED_OPS + POOL_OPS + ORT_INT8_OPS)
NON_NEGATIVE_OPS = ("Relu", "Sigmoid", "Softmax", "HardSigmoid")
# ops ONNX Runtime 1.32's CPU provider (x86-64) has a float16 kernel for: each was run on
# float16 inputs and its optimized graph checked for inserted Casts (docs/calibration.md,
# "Precision plans"). It runs every other op in float32 between Casts it inserts and then
# removes against the model's own Casts, which drops the float16 rounding.
ORT_FP16_OPS = frozenset(("Clip", "Concat", "Expand", "Flatten", "Gather", "Identity", "LayerNormalization", "Max",
                          "Reshape", "Round", "Sign", "Slice", "Squeeze", "Transpose", "Unsqueeze"))


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one activation tensor (per tensor)."""

    scale: float
    zero_point: int
    dtype: int        # INT8 / UINT8

    @property
    def qrange(self) -> tuple[int, int]:
        return (-128, 127) if self.dtype == INT8 else (0, 255)


def symmetric_params(amax: float, target: str) -> QParams:
    """Scale ``amax / 127`` (float32), int8 zero point 0, or for ``onnxruntime`` uint8 zero point
    128 (the same grid shifted). An all-zero tensor (amax 0) gets scale 1: zeros are exact."""
    scale = float(np.float32(amax) / np.float32(127.0)) if amax > 0 else 1.0
    if target == "onnxruntime":
        return QParams(scale, 128, UINT8)
    return QParams(scale, 0, INT8)


def relu_params(amax: float) -> QParams:
    """A tensor that is >= 0: uint8, zero point 0, scale ``amax / 255`` (1 for amax 0)."""
    return QParams(float(np.float32(amax) / np.float32(255.0)) if amax > 0 else 1.0, 0, UINT8)


@dataclass
class Placement:
    """What to quantize. Nodes are keyed by ``id(node)`` of the graph being placed; inputs by
    ``(id(node), input index)``."""

    int8_nodes: list = field(default_factory=list)             # node objects, topological
    weight_axis: dict = field(default_factory=dict)             # (node id, input idx) -> axis or None
    edges: dict = field(default_factory=dict)                   # (node id, input idx) -> tensor
    tparams: dict = field(default_factory=dict)                 # tensor -> QParams
    q_after: dict = field(default_factory=dict)                 # tensor -> producer-fused flag
    relu_fold: dict = field(default_factory=dict)               # producer node id -> relu node
    used_amax: list = field(default_factory=list)               # tensors whose own amax was used
    float_fallback: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    propagated: dict = field(default_factory=dict)
    fp16: list = field(default_factory=list)
    fp32: list = field(default_factory=list)

    def accept(self, G: Graph, n, ps: dict, weights: list[int]) -> None:
        """Mark node *n* INT8: its quantized activation inputs (index -> QParams) and weights."""
        self.int8_nodes.append(n)
        for k, q in ps.items():
            self.tparams[n.input[k]] = q
            self.edges[(id(n), k)] = n.input[k]
        for k in weights:
            self.weight_axis[(id(n), k)] = weight_axis(G, n, k)


class AmaxLookup:
    """Looks up activation amax with fallback through data-movement neighbours; records which
    tensors' amax was used, which were missing and which were propagated from where.
    With *amax* None every tensor has amax 1 (placement without calibration)."""

    def __init__(self, G: Graph, amax: Mapping[str, float] | None):
        self.G = G
        self.amax = amax
        self.used: list[str] = []
        self.missing: list[str] = []
        self.propagated: dict[str, str] = {}

    def _ok(self, t):
        if self.amax is None:
            return True
        v = self.amax.get(t)
        try:
            v = float(np.asarray(v).max()) if v is not None else None
        except (TypeError, ValueError):
            return False
        return v is not None and math.isfinite(v) and v > 0

    def value(self, t) -> float:
        return 1.0 if self.amax is None else float(np.asarray(self.amax[t]).max())

    def get(self, t: str) -> tuple[str, float] | None:
        """(source tensor, amax) for *t*: its own, else through data-movement ops."""
        if self._ok(t):
            self._use(t)
            return t, self.value(t)
        G = self.G
        cands = []
        p = G.producer.get(t)
        if p is not None and p.op_type in DATA_MOVEMENT_OPS:
            cands.append(p.input[0])
        for c in G.consumers.get(t, []):
            if c.op_type in DATA_MOVEMENT_OPS and c.input[0] == t:
                cands.append(c.output[0])
        for s in cands:
            if self._ok(s):
                self._use(s)
                self.propagated[t] = s
                return s, self.value(s)
        if t not in self.missing:
            self.missing.append(t)
        return None

    def _use(self, t):
        if t not in self.used:
            self.used.append(t)

    def reset(self) -> None:
        self.used, self.missing, self.propagated = [], [], {}


class Placer:
    """The state one placement call shares with the rules: graph, element types, plan, amax
    lookup and the :class:`Placement` being built."""

    def __init__(self, G: Graph, types: dict[str, int], target: str, plan: PrecisionPlan | None,
                 amax: Mapping[str, float] | None):
        self.G = G
        self.types = types
        self.target = target
        self.plan = plan
        self.P = Placement()
        self.amax = AmaxLookup(G, amax)
        self.consts = ConstEval(G)
        self.known_q: set[str] = set()    # ONNX Runtime: tensors quantized by the previous walk

    def precision(self, n) -> str:
        return self.plan.precision_for(node_key(n)) if self.plan is not None else "int8"

    def is_float(self, t: str) -> bool:
        return self.types.get(t) == FLOAT

    def activation(self, t: str) -> bool:
        """A float tensor computed at run time (not a constant)."""
        return bool(t) and not self.G.is_const(t) and self.is_float(t)

    def non_negative(self, t: str) -> bool:
        """True if *t* can only hold values >= 0 (then ONNX Runtime gets uint8 with zero point 0)."""
        p = self.G.producer.get(t)
        if p is None:
            return False
        if p.op_type in NON_NEGATIVE_OPS:
            return True
        if p.op_type == "Clip":
            b = clip_bounds(p, self.consts)
            return b is not None and b[0] >= 0.0
        if p.op_type in DATA_MOVEMENT_OPS:
            return self.non_negative(p.input[0])
        return False

    def params_for(self, t: str) -> QParams | None:
        """The parameters of activation *t*: those already placed, else from its amax."""
        if t in self.P.tparams:
            return self.P.tparams[t]
        got = self.amax.get(t)
        if got is None:
            return None
        if self.target == "onnxruntime" and self.non_negative(t):
            return relu_params(got[1])
        return symmetric_params(got[1], self.target)

    def foldable_activation(self, node):
        """The Relu / Clip(0, hi) node right after *node* that can become its output quantization
        (its only consumer, INT8 like all of its own consumers, output not a network output)."""
        G, plan = self.G, self.plan
        out = node.output[0]
        cons = G.consumers.get(out, [])
        if len(cons) != 1 or out in G.graph_outputs:
            return None
        r = cons[0]
        if plan is not None and plan.precision_for(node_key(r)) != "int8":
            return None
        b = clip_bounds(r, self.consts)
        if b is None or b[0] != 0.0:
            return None
        y = r.output[0]
        if y in G.graph_outputs or not G.consumers.get(y):
            return None
        if plan is not None and any(plan.precision_for(node_key(c)) != "int8" for c in G.consumers[y]):
            return None
        return r


# --------------------------------------------------------------------------- TensorRT
class TensorRTRule:
    """Which inputs of an INT8 node TensorRT needs as Q/DQ to run it in INT8 (outputs stay float:
    TensorRT propagates Q/DQ and fuses on its own)."""

    def inputs(self, pl: Placer, n) -> tuple[list[int], list[int]]:
        """``(activation inputs to quantize, constant weight inputs)``; no activation: stays float."""
        raise NotImplementedError


class WeightedInputs(TensorRTRule):
    """Conv, ConvTranspose, Gemm, MatMul: the activation inputs among the first two (both when
    both are activations) and the constant weight with a channel axis."""

    def inputs(self, pl, n):
        want, weights = [], []
        for k, t in enumerate(n.input[:2]):
            if pl.activation(t):
                want.append(k)
            elif pl.G.is_const(t) and weight_axis(pl.G, n, k) is not None:
                weights.append(k)
        return want, weights


class PoolInput(TensorRTRule):
    """Pooling: its input."""

    def inputs(self, pl, n):
        return ([0] if pl.activation(n.input[0]) else []), []


class ResidualAdd(TensorRTRule):
    """Add of two activations, one of them the output of an INT8 weighted op that feeds only
    this Add (TensorRT fuses Conv+Add): the other (residual) input."""

    def inputs(self, pl, n):
        G = pl.G
        if len(n.input) != 2 or not all(pl.activation(t) for t in n.input):
            return [], []
        fused = []
        for k, t in enumerate(n.input):
            pr = G.producer.get(t)
            if pr is not None and pr.op_type in WEIGHTED_OPS and len(G.consumers.get(t, [])) == 1 \
                    and t not in G.graph_outputs and pl.precision(pr) == "int8":
                fused.append(k)
        return ([k for k in range(2) if k != fused[0]] if fused else []), []


TENSORRT_RULES: dict[str, TensorRTRule] = {
    **{op: WeightedInputs() for op in WEIGHTED_OPS},
    **{op: PoolInput() for op in POOL_OPS},
    "Add": ResidualAdd(),
}


# --------------------------------------------------------------------------- ONNX Runtime
class OrtRule:
    """An op ONNX Runtime's QDQ optimizer runs in INT8 when its inputs and output are Q/DQ."""

    def place(self, pl: Placer, n, relu) -> None:
        raise NotImplementedError


class OrtIntegerOp(OrtRule):
    """DQ -> op -> Q becomes an integer kernel (QLinearConv, QGemm, QLinearAdd, ...): quantize
    the activation inputs (:meth:`operands`) and the output; a foldable Relu / Clip(0, hi)
    after the op (*relu*) becomes the output quantization. ``float_output_ok``: the op may keep
    a float output where its output has no amax or is a network output (Gemm, MatMul)."""

    float_output_ok = False

    def operands(self, pl: Placer, n) -> tuple[list[int], list[int]] | None:
        """``(activation inputs, constant weight inputs)``, or None if the op stays float."""
        raise NotImplementedError

    def place(self, pl, n, relu):
        G, P = pl.G, pl.P
        got = self.operands(pl, n)
        if got is None:
            return
        acts, weights = got
        out = n.output[0]
        out_t = relu.output[0] if relu is not None else out
        if not pl.is_float(out):
            return
        if out_t in G.graph_outputs and not self.float_output_ok:
            P.float_fallback[node_key(n)] = "its output is a network output"
            return
        ps, miss = {}, []
        for k in acts:
            q = pl.params_for(n.input[k])
            if q is None:
                miss.append(n.input[k])
            else:
                ps[k] = q
        qo = None
        if out_t not in G.graph_outputs:
            if relu is not None:
                src = pl.amax.get(out_t) if out_t not in P.tparams else (out_t, None)
                if src is not None:
                    qo = P.tparams.get(out_t) or relu_params(min(src[1], clip_bounds(relu, pl.consts)[1]))
                else:
                    miss.append(out_t)
            else:
                qo = pl.params_for(out)
                if qo is None and not self.float_output_ok:
                    miss.append(out)
        if miss:
            P.float_fallback[node_key(n)] = "no amax for " + ", ".join(miss)
            return
        P.accept(G, n, ps, weights)
        if qo is not None:
            P.tparams[out_t] = qo
            P.q_after[out_t] = True
            if relu is not None:
                P.relu_fold[id(n)] = relu


class OrtWeighted(OrtIntegerOp):
    """Conv / Gemm / MatMul: activation input 0 and a constant float weight with a channel axis
    (Conv: weight 1 required; Gemm: weight 1 required, no ``transA``; MatMul: both inputs may be
    activations)."""

    def __init__(self, weight_required: bool = False, float_output_ok: bool = False):
        self.weight_required = weight_required
        self.float_output_ok = float_output_ok

    def operands(self, pl, n):
        G = pl.G
        acts = [k for k, t in enumerate(n.input) if pl.activation(t)]
        weights = []
        for k, t in enumerate(n.input[:2]):
            if G.is_const(t) and pl.is_float(t):
                if weight_axis(G, n, k) is None and n.op_type != "Gemm":
                    acts = []
                weights.append(k)
        if 0 not in acts or (self.weight_required and 1 not in weights):
            return None
        if n.op_type == "Gemm" and attr(n, "transA", 0):
            return None
        return acts, weights


class OrtAllInputs(OrtIntegerOp):
    """Add (two inputs) / Concat: every input an activation."""

    def __init__(self, count: int | None = None):
        self.count = count

    def operands(self, pl, n):
        acts = [k for k, t in enumerate(n.input) if pl.activation(t)]
        return (acts, []) if len(acts) == (self.count or len(n.input)) else None


class OrtPool(OrtIntegerOp):
    """(Global)AveragePool: its one input an activation."""

    def operands(self, pl, n):
        acts = [k for k, t in enumerate(n.input) if pl.activation(t)]
        return (acts, []) if acts == [0] else None


class OrtDataMovement(OrtRule):
    """Reshape, Transpose, ... MaxPool: where the input is already quantized, the op runs on int8
    data and its output takes the input's parameters (not at a network output)."""

    def place(self, pl, n, relu):
        P = pl.P
        t, out = n.input[0], n.output[0]
        if pl.activation(t) and (t in P.tparams or t in pl.known_q) and out not in pl.G.graph_outputs \
                and len(n.output) == 1:
            q = pl.params_for(t)
            if q is None:
                return
            P.tparams[t] = q
            P.tparams[out] = q
            P.int8_nodes.append(n)


ORT_RULES: dict[str, OrtRule] = {
    "Conv": OrtWeighted(weight_required=True),
    "Gemm": OrtWeighted(weight_required=True, float_output_ok=True),
    "MatMul": OrtWeighted(float_output_ok=True),
    "Add": OrtAllInputs(2),
    "Concat": OrtAllInputs(),
    "GlobalAveragePool": OrtPool(),
    "AveragePool": OrtPool(),
    **{op: OrtDataMovement() for op in DATA_MOVEMENT_OPS},
}


# --------------------------------------------------------------------------- targets
class TargetPlacement:
    """One target's walk over the graph with its rule table."""

    rules: dict

    def run(self, pl: Placer) -> None:
        raise NotImplementedError

    def int8_rule(self, pl: Placer, n):
        """The rule for *n* if it is an INT8 node of the standard domain, else None."""
        if pl.precision(n) != "int8" or n.domain not in STANDARD_DOMAINS:
            return None
        return self.rules.get(n.op_type)


class TensorRTPlacement(TargetPlacement):
    """What TensorRT fuses in a strongly typed network: Q/DQ on the inputs the rules name."""

    rules = TENSORRT_RULES

    def run(self, pl):
        P = pl.P
        for n in pl.G.g.node:
            rule = self.int8_rule(pl, n)
            if rule is None:
                continue
            want, weights = rule.inputs(pl, n)
            if not want:
                continue
            ps = {}
            for k in want:
                q = pl.params_for(n.input[k])
                if q is None:
                    break
                ps[k] = q
            if len(ps) != len(want):
                P.float_fallback[node_key(n)] = "no amax for input " + \
                    ", ".join(n.input[k] for k in want if k not in ps)
                continue
            P.accept(pl.G, n, ps, weights)


class OnnxRuntimePlacement(TargetPlacement):
    """What ONNX Runtime's CPU QDQ optimizer turns into integer kernels. Output quantization
    makes later data-movement ops INT8, which may quantize more inputs: the walk repeats (at
    most 4 times) until the quantized tensors stop changing."""

    rules = ORT_RULES

    def run(self, pl):
        G, P = pl.G, pl.P
        relu_of = {}
        for n in G.g.node:
            if isinstance(self.int8_rule(pl, n), OrtIntegerOp):
                r = pl.foldable_activation(n)
                if r is not None:
                    relu_of[id(n)] = r
        for _ in range(4):
            P.tparams, P.int8_nodes, P.float_fallback, P.relu_fold = {}, [], {}, {}
            P.weight_axis, P.edges = {}, {}
            pl.amax.reset()
            for n in G.g.node:
                rule = self.int8_rule(pl, n)
                if rule is not None:
                    rule.place(pl, n, relu_of.get(id(n)))
            new_known = set(P.tparams)
            if new_known == pl.known_q:
                break
            pl.known_q = new_known
        # data-movement nodes: their input edge is quantized
        for n in P.int8_nodes:
            if isinstance(self.rules.get(n.op_type), OrtDataMovement):
                P.edges[(id(n), 0)] = n.input[0]
                P.q_after[n.output[0]] = True


PLACEMENTS: dict[str, TargetPlacement] = {"tensorrt": TensorRTPlacement(), "onnxruntime": OnnxRuntimePlacement()}


def place(G: Graph, types: dict[str, int], target: str, plan: PrecisionPlan | None,
          amax: Mapping[str, float] | None) -> Placement:
    """The :class:`Placement` of prepared graph *G* for *target* (a key of :data:`PLACEMENTS`).

    *types*: element type per tensor (:func:`calib.graph.tensor_types`). *amax*: calibrated
    absolute maximum per activation tensor, or None to place without values (every amax 1).
    Nodes the *plan* makes fp16 or fp32 are recorded (fp32 only for ops that could be INT8)
    and get no Q/DQ.
    """
    pl = Placer(G, types, target, plan, amax)
    P = pl.P
    for n in G.g.node:
        p = pl.precision(n)
        if p == "fp16":
            P.fp16.append(n)
        elif p == "fp32" and n.op_type in QUANTIZABLE_OPS:
            P.fp32.append(n)
    PLACEMENTS[target].run(pl)
    P.used_amax = list(pl.amax.used)
    P.missing = list(pl.amax.missing)
    P.propagated = dict(pl.amax.propagated)
    return P
