"""Explicit quantization: write a Q/DQ (QuantizeLinear / DequantizeLinear) ONNX model.

``quantize_model(model, amax, target=...)`` rewrites an FP32 model so that the quantization
chosen by calibration is in the graph itself:

* activations: per tensor, scale ``amax / 127``, symmetric (int8 zero point 0 for
  ``tensorrt``; uint8 zero point 128 for ``onnxruntime``, the same grid shifted, because ONNX
  Runtime's x86 integer kernels want U8 activations and S8 weights);
* weights: int8 initializers with a DequantizeLinear, scale ``max|w| / 127`` per output channel
  (Conv axis 0, ConvTranspose axis 1, Gemm axis 0 with ``transB=1`` else 1, MatMul with a
  constant B: its last axis) or per tensor with ``per_channel=False``.

Two placements:

``target="tensorrt"``
    What TensorRT fuses in a strongly typed network (TensorRT developer guide, "Explicit
    quantization" / "Q/DQ layer-placement recommendations"): quantize the inputs of weighted
    ops (Conv, ConvTranspose, Gemm, MatMul: both inputs when both are activations), the input of
    pooling ops, and the residual (non-fused) input of an Add whose other input is the output of
    a weighted op that only feeds this Add (so TensorRT fuses Conv+Add); outputs stay float
    (TensorRT propagates Q/DQ and fuses on its own) and network outputs are never quantized.
    Biases stay float.

``target="onnxruntime"``
    What ONNX Runtime's CPU QDQ optimizer turns into integer kernels: inputs *and* outputs of
    Conv / Gemm / MatMul / Add / Concat / (Global)AveragePool are quantized so the chains
    DQ -> op -> Q become QLinearConv, QGemm, MatMulIntegerToFloat, QLinearAdd, ...; biases are
    int32 (scale = input scale x weight scale); a Relu or Clip(0, m) right after such an op is
    folded into the output quantization (uint8, zero point 0, scale ``amax / 255``, which clamps
    exactly as the Relu/Clip did); data-movement ops (Reshape, Transpose, Squeeze, Unsqueeze,
    Flatten, Slice, Gather, MaxPool) carry their input's scale through so ONNX Runtime runs them
    on int8 data. Gemm/MatMul producing a network output keep a float output.

Bias correction (both targets): rounding a layer's weights to 255 levels per channel gives an
error ``w_q - w`` whose effect on the output does not average out: output channel ``o`` of a
Conv, ConvTranspose or Gemm moves by ``sum((w_q - w)[o] * E[x])`` on average, and E[x] is far
from zero after a Relu (depthwise convolutions, nine weights per channel, are hit hardest). That
mean can be measured on calibration data and subtracted from the layer's float bias (the bias
correction of Nagel et al., "Data-Free Quantization", 2019, measured empirically, layer by layer).
``quantize_model(..., bias_probe=True)`` returns the Q/DQ model plus, for each such layer, a
reference branch (the same op on the same dequantized input, with the float weights and bias)
and a graph output holding each sample's per-channel mean of the difference, as
``quant_report.bias_probes`` lists them. ``calib.collect.bias_shifts`` averages those outputs
over the data, and ``quantize_model(..., bias_shift=...)`` subtracts the averages from the
biases. Only the weights' error is corrected, not the input's: clipping an input makes an error
that depends on the sample (a few large values), and a constant correction for it moves every
output to pay for them (in a trial on the PP-OCRv4 detector it lowered the probability map's
cosine to FP32). The cache is unaffected: it holds scales only.

Before placement, both targets apply exact graph simplifications: the opset is raised to 13
where it is lower (per-channel Q/DQ needs it; ``onnx.version_converter``), Dropout/Identity are
removed, constant zero Pads are folded into the following Conv's ``pads`` and a
BatchNormalization after a Conv is folded into its weights (so weights are quantized as they
will be used).

A :class:`~calib.plan.PrecisionPlan` chooses per node: ``fp32`` nodes get no Q/DQ on their
inputs and keep float weights, ``fp16`` nodes are wrapped in Cast nodes (float16 in, float32
out) and get no Q/DQ, ``int8`` nodes (the default) are quantized as the target places them.
The rewrite uses only standard ONNX ops, so ONNX Runtime runs the same graph TensorRT builds.

Output is deterministic (same inputs give byte-identical models); inserted nodes and tensors are
named after the tensor they quantize (``<tensor>_QuantizeLinear``, ``<tensor>_dequantized``).
``quantize_model(...).quant_report`` says what was quantized, folded and left in float.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .errors import AlreadyQuantizedError, ModelError
from .model import QUANT_OPS, Model, load_model, onnx_opset
from .plan import PrecisionPlan, load_plan, node_key

log = logging.getLogger("calib.qdq")

TARGETS = ("tensorrt", "onnxruntime")
MIN_OPSET = 13

_FLOAT = 1
_UINT8 = 2
_INT8 = 3
_INT32 = 6
_FLOAT16 = 10

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")
# ONNX Runtime: ops with an integer kernel reached from DQ -> op -> Q
# Mul is left out on purpose: quantizing the Muls of hard-swish / gating blocks costs a lot of
# accuracy (PP-OCRv4 rec: cosine to FP32 0.65 with, 0.93 without) for no CNN speed-up.
ORT_INT8_OPS = ("Conv", "Gemm", "MatMul", "Add", "Concat", "GlobalAveragePool", "AveragePool")
# ops that only move or select data: int8 in, int8 out with the same scale
DATA_MOVEMENT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "MaxPool")


class QuantizationError(ModelError):
    """The model cannot be rewritten with Q/DQ as asked."""


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


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: int        # _INT8 / _UINT8

    @property
    def qrange(self) -> tuple[int, int]:
        return (-128, 127) if self.dtype == _INT8 else (0, 255)


# --------------------------------------------------------------------------- helpers
def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node, name, value):
    from onnx import helper

    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


class _Graph:
    """Mutable view of a ModelProto's graph with the indexes the passes need."""

    def __init__(self, proto):
        self.proto = proto
        self.g = proto.graph
        self.arrays: dict[str, np.ndarray] = {}   # constant tensor -> its value, decoded once
        self.refresh()

    def refresh(self):
        from onnx import numpy_helper

        self.inits = {i.name: i for i in self.g.initializer}
        self.const_nodes = {n.output[0]: n for n in self.g.node if n.op_type == "Constant" and n.output}
        self.producer = {o: n for n in self.g.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.graph_inputs = [i.name for i in self.g.input if i.name not in self.inits]
        self.graph_outputs = {o.name for o in self.g.output}
        self._np = numpy_helper

    @property
    def opset(self) -> int:
        return onnx_opset(self.proto)

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.const_nodes

    def const(self, name: str) -> np.ndarray | None:
        """Value of initializer or Constant output *name* (read-only: decoded once and shared
        by every pass over this graph), else None."""
        v = self.arrays.get(name)
        if v is not None:
            return v
        if name in self.inits:
            v = self._np.to_array(self.inits[name])
        elif name in self.const_nodes:
            v = next((self._np.to_array(a.t) for a in self.const_nodes[name].attribute if a.name == "value"), None)
        if v is not None:
            v.flags.writeable = False
            self.arrays[name] = v
        return v

    def all_names(self) -> set[str]:
        s = set(self.inits) | {i.name for i in self.g.input} | {o.name for o in self.g.output}
        for n in self.g.node:
            s.update(n.input)
            s.update(n.output)
            if n.name:
                s.add(n.name)
        return s

    def remove_dead(self):
        """Drop nodes whose outputs nobody uses, then unused initializers."""
        while True:
            used = {i for n in self.g.node for i in n.input} | self.graph_outputs
            keep = [n for n in self.g.node if any(o in used for o in n.output if o)]
            if len(keep) == len(self.g.node):
                break
            del self.g.node[:]
            self.g.node.extend(keep)
        used = {i for n in self.g.node for i in n.input} | self.graph_outputs
        inits = [i for i in self.g.initializer if i.name in used]
        del self.g.initializer[:]
        self.g.initializer.extend(inits)
        kept_inits = {x.name for x in inits}
        ins = [i for i in self.g.input if i.name not in self.inits or i.name in kept_inits]
        del self.g.input[:]
        self.g.input.extend(ins)
        names = {o for n in self.g.node for o in n.output} | {i.name for i in self.g.input}
        vi = [v for v in self.g.value_info if v.name in names]
        del self.g.value_info[:]
        self.g.value_info.extend(vi)
        self.refresh()
        # a later pass may give a removed constant's name to a new one
        self.arrays = {k: v for k, v in self.arrays.items() if k in self.inits or k in self.const_nodes}


def _reduce_node(op: str, x: str, axes: list[int], out: str, opset: int, extra_inits: list,
                 name: str | None = None, axes_name: str | None = None):
    """A ``keepdims=0`` Reduce* node (*op*) of *x* over *axes*: the axes are an attribute before
    opset 18 and an int64 input from it (an initializer appended to *extra_inits*, named
    *axes_name*, default ``<out>_axes``). The node is named *name* (default *out*)."""
    from onnx import helper, numpy_helper

    if opset >= 18:
        an = axes_name or f"{out}_axes"
        extra_inits.append(numpy_helper.from_array(np.asarray(axes, np.int64), an))
        return helper.make_node(op, [x, an], [out], keepdims=0, name=name or out)
    return helper.make_node(op, [x], [out], axes=axes, keepdims=0, name=name or out)


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out = f"{name}_{k}"
        k += 1
    taken.add(out)
    return out


# --------------------------------------------------------------------------- preparation
def _upgrade_opset(proto, report_name: str):
    """Raise the default-domain opset to 13 (per-channel Q/DQ); returns the new proto."""
    import onnx
    from onnx import version_converter

    cur = onnx_opset(proto)
    if cur >= MIN_OPSET:
        return proto
    try:
        new = version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError/ValidationError with long texts
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise QuantizationError(f"{report_name}: cannot raise opset {cur} to {MIN_OPSET} for Q/DQ: {msg}") from None
    if new.ir_version < 7:
        new.ir_version = 7
    onnx.checker.check_model(new)
    return new


def _remove_identities(G: _Graph) -> list[str]:
    """Remove Identity and inference Dropout (mask unused) nodes whose output is not a graph output."""
    removed = []
    for n in list(G.g.node):
        if n.op_type not in ("Identity", "Dropout"):
            continue
        if n.op_type == "Dropout" and len(n.output) > 1 and n.output[1] and n.output[1] in G.consumers:
            continue
        if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
            continue  # training_mode input: leave alone
        src, dst = n.input[0], n.output[0]
        if dst in G.graph_outputs:
            continue
        for c in G.consumers.get(dst, []):
            for k, i in enumerate(c.input):
                if i == dst:
                    c.input[k] = src
        G.g.node.remove(n)
        removed.append(n.name or dst)
        G.refresh()
    return removed


def _const_eval(G: _Graph, name: str, opset: int, depth: int = 0):
    """Value of *name* if it only depends on constants (small subgraphs only), else None."""
    v = G.const(name)
    if v is not None or depth > 32:
        return v
    n = G.producer.get(name)
    if n is None or n.op_type in ("Shape", "Size") or n.domain not in ("", "ai.onnx"):
        return None
    vals = {}
    for i in n.input:
        if not i:
            continue
        vi = _const_eval(G, i, opset, depth + 1)
        if vi is None:
            return None
        vals[i] = vi
    try:
        from onnx.reference import ReferenceEvaluator

        res = ReferenceEvaluator(n, opsets={"": opset}).run(None, vals)
    except Exception:
        return None
    return np.asarray(res[list(n.output).index(name)])


def _fold_pads(G: _Graph) -> list[str]:
    """Fold Pad(constant 0, spatial pads only) into the single Conv that consumes it."""
    folded = []
    for pad in list(G.g.node):
        if pad.op_type != "Pad":
            continue
        cons = G.consumers.get(pad.output[0], [])
        if len(cons) != 1 or cons[0].op_type != "Conv" or cons[0].input[0] != pad.output[0]:
            continue
        if pad.output[0] in G.graph_outputs:
            continue
        conv = cons[0]
        mode = _attr(pad, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant" or _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        if len(pad.input) > 1 and pad.input[1]:
            pads = _const_eval(G, pad.input[1], G.opset)
        else:
            pads = _attr(pad, "pads")
        if pads is None:
            continue
        pads = [int(p) for p in np.asarray(pads).ravel()]
        if len(pad.input) > 2 and pad.input[2]:
            cv = _const_eval(G, pad.input[2], G.opset)
            if cv is None or np.any(np.asarray(cv) != 0):
                continue
        elif _attr(pad, "value", 0.0) != 0.0:
            continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # axes input: not handled
        r = len(pads) // 2
        if r < 3 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[r] or pads[r + 1]:
            continue
        sp = r - 2
        old = list(_attr(conv, "pads", [0] * (2 * sp)))
        new = [old[k] + pads[2 + k] for k in range(sp)] + [old[sp + k] + pads[r + 2 + k] for k in range(sp)]
        _set_attr(conv, "pads", new)
        conv.input[0] = pad.input[0]
        G.g.node.remove(pad)
        folded.append(pad.name or pad.output[0])
        G.refresh()
    return folded


def _fold_batchnorm(G: _Graph) -> list[str]:
    """Fold BatchNormalization (inference) into the Conv that only feeds it."""
    folded = []
    taken = G.all_names()
    for bn in list(G.g.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) > 1 and any(bn.output[1:]):
            continue
        conv = G.producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(G.consumers.get(bn.input[0], [])) != 1:
            continue
        if bn.input[0] in G.graph_outputs or not all(G.is_const(i) for i in bn.input[1:5]):
            continue
        w = G.const(conv.input[1])
        if w is None or len(G.consumers.get(conv.input[1], [])) != 1:
            continue
        b = G.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], np.float32)
        if b is None:
            continue
        gamma, beta, mean, var = (G.const(i).astype(np.float64) for i in bn.input[1:5])
        eps = float(_attr(bn, "epsilon", 1e-5))
        k = gamma / np.sqrt(var + eps)
        w2 = (w.astype(np.float64) * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        b2 = ((b.astype(np.float64) - mean) * k + beta).astype(np.float32)
        wn = _unique(f"{conv.input[1]}_bnfolded", taken)
        bname = _unique(f"{conv.name or conv.output[0]}_bnfolded_bias", taken)
        G.g.initializer.append(G._np.from_array(w2, wn))
        G.g.initializer.append(G._np.from_array(b2, bname))
        conv.input[1] = wn
        if len(conv.input) > 2:
            conv.input[2] = bname
        else:
            conv.input.append(bname)
        conv.output[0] = bn.output[0]
        G.g.node.remove(bn)
        folded.append(bn.name or bn.output[0])
        G.refresh()
    return folded


@dataclass(frozen=True)
class Preparation:
    """What :func:`prepare` did to a model (``prepare(model).preparation``)."""

    name: str                    # the original model's name, for messages
    opset_before: int
    folded: tuple[str, ...]      # nodes removed or folded
    node_keys: frozenset[str]    # the original nodes, which precision plans name


def _prepare(model: Model):
    """Copy, upgrade opset, simplify exactly; a model from :func:`prepare` is only copied.
    Returns (proto, :class:`Preparation`)."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    done = getattr(model, "preparation", None)
    if isinstance(done, Preparation):
        return proto, done
    proto = _upgrade_opset(proto, model.name)
    G = _Graph(proto)
    folded = _remove_identities(G)
    folded += _fold_pads(G)
    folded += _fold_batchnorm(G)
    G.remove_dead()
    return proto, Preparation(model.name, model.opset, tuple(folded),
                              frozenset(node_key(n) for n in model.proto.graph.node))


def prepare(model) -> Model:
    """The float model as :func:`quantize_model` rewrites it before placing Q/DQ: opset raised
    to 13 where lower, Identity/Dropout removed, zero Pads and BatchNorms folded into Convs.
    Computes the same function as *model* (up to float rounding of the BN fold).

    Its ``preparation`` (a :class:`Preparation`) lets :func:`quantize_model`,
    :func:`required_tensors` and :func:`calib.smooth.find_sites` take it without preparing it
    again, with the same result (and report) as for *model*."""
    model = load_model(model)
    proto, done = _prepare(model)
    out = Model.from_proto(proto)
    out.preparation = done
    return out


def _tensor_types(proto) -> dict[str, int]:
    """Element type of every tensor shape inference can tell (initializers and I/O included)."""
    import onnx

    try:
        inf = onnx.shape_inference.infer_shapes(proto)
    except Exception:
        inf = proto
    t = {}
    for vi in list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output):
        et = vi.type.tensor_type.elem_type
        if et:
            t[vi.name] = et
    for i in inf.graph.initializer:
        t[i.name] = i.data_type
    for n in inf.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    t[n.output[0]] = a.t.data_type
    return t


# --------------------------------------------------------------------------- placement
@dataclass
class _Placement:
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

    def accept(self, G: "_Graph", n, ps: dict, weights: list[int]) -> None:
        """Mark node *n* INT8: its quantized activation inputs (index -> QParams) and weights."""
        self.int8_nodes.append(n)
        for k, q in ps.items():
            self.tparams[n.input[k]] = q
            self.edges[(id(n), k)] = n.input[k]
        for k in weights:
            self.weight_axis[(id(n), k)] = _weight_axis(G, n, k)


def _weight_axis(G: _Graph, node, idx: int) -> int | None:
    """Per-channel axis of a constant weight input, or None if it is not a weight."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and idx == 1:
        return 0 if op == "Conv" else 1
    if op == "Gemm" and idx == 1:
        return 0 if _attr(node, "transB", 0) else 1
    if op == "Gemm" and idx == 0 and G.is_const(node.input[0]):
        return None
    if op == "MatMul" and idx == 1:
        w = G.const(node.input[1])
        return (w.ndim - 1) if w is not None and w.ndim >= 2 else None
    return None


class _Amax:
    """Looks up activation amax with fallback through data-movement neighbours."""

    def __init__(self, G: _Graph, amax: Mapping[str, float] | None):
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


def _sym_params(amax: float, target: str) -> QParams:
    # an all-zero tensor (amax 0) gets scale 1, as all-zero weight channels do: zeros are exact
    scale = float(np.float32(amax) / np.float32(127.0)) if amax > 0 else 1.0
    if target == "onnxruntime":
        return QParams(scale, 128, _UINT8)
    return QParams(scale, 0, _INT8)


def _relu_params(amax: float) -> QParams:
    return QParams(float(np.float32(amax) / np.float32(255.0)) if amax > 0 else 1.0, 0, _UINT8)


_NON_NEGATIVE_OPS = ("Relu", "Sigmoid", "Softmax", "HardSigmoid")


def _non_negative(G: _Graph, t: str) -> bool:
    """True if *t* can only hold values >= 0 (then ONNX Runtime gets uint8 with zero point 0)."""
    p = G.producer.get(t)
    if p is None:
        return False
    if p.op_type in _NON_NEGATIVE_OPS:
        return True
    if p.op_type == "Clip":
        lo = G.const(p.input[1]) if len(p.input) > 1 and p.input[1] else None
        if len(p.input) == 1:
            return float(_attr(p, "min", -1.0)) >= 0.0
        return lo is not None and float(lo) >= 0.0
    if p.op_type in DATA_MOVEMENT_OPS:
        return _non_negative(G, p.input[0])
    return False


def _foldable_activation(G: _Graph, node, plan) -> object | None:
    """The Relu / Clip(0, m) node right after *node* that can become its output quantization."""
    out = node.output[0]
    cons = G.consumers.get(out, [])
    if len(cons) != 1 or out in G.graph_outputs:
        return None
    r = cons[0]
    if plan is not None and plan.precision_for(node_key(r)) != "int8":
        return None
    if r.op_type == "Relu":
        pass
    elif r.op_type == "Clip":
        if len(r.input) > 1:
            lo = G.const(r.input[1]) if r.input[1] else None
            hi = G.const(r.input[2]) if len(r.input) > 2 and r.input[2] else None
            if lo is None or float(lo) != 0.0 or (len(r.input) > 2 and r.input[2] and hi is None):
                return None
        elif float(_attr(r, "min", -3.4e38)) != 0.0:
            return None
    else:
        return None
    y = r.output[0]
    if y in G.graph_outputs or not G.consumers.get(y):
        return None
    if plan is not None and any(plan.precision_for(node_key(c)) != "int8" for c in G.consumers[y]):
        return None
    return r


def _clip_max(G: _Graph, r) -> float:
    if r.op_type == "Clip":
        if len(r.input) > 2 and r.input[2]:
            return float(G.const(r.input[2]))
        if len(r.input) == 1:
            return float(_attr(r, "max", 3.4e38))
    return math.inf


def _place(G: _Graph, types: dict[str, int], target: str, plan: PrecisionPlan | None,
           amax: Mapping[str, float] | None) -> _Placement:
    P = _Placement()
    A = _Amax(G, amax)
    prec = (lambda n: plan.precision_for(node_key(n))) if plan is not None else (lambda n: "int8")
    is_float = lambda t: types.get(t) == _FLOAT  # noqa: E731
    activation = lambda t: bool(t) and not G.is_const(t) and is_float(t)  # noqa: E731

    for n in G.g.node:
        p = prec(n)
        if p == "fp16":
            P.fp16.append(n)
        elif p == "fp32" and (n.op_type in WEIGHTED_OPS + POOL_OPS + ORT_INT8_OPS):
            P.fp32.append(n)

    def params_for(t) -> QParams | None:
        if t in P.tparams:
            return P.tparams[t]
        got = A.get(t)
        if got is None:
            return None
        if target == "onnxruntime" and _non_negative(G, t):
            return _relu_params(got[1])
        return _sym_params(got[1], target)

    if target == "tensorrt":
        for n in G.g.node:
            op = n.op_type
            if prec(n) != "int8" or n.domain not in ("", "ai.onnx"):
                continue
            want: list[int] = []
            weights: list[int] = []
            if op in WEIGHTED_OPS:
                for k, t in enumerate(n.input[:2]):
                    if activation(t):
                        want.append(k)
                    elif G.is_const(t) and _weight_axis(G, n, k) is not None:
                        weights.append(k)
                if not want:
                    continue
            elif op in POOL_OPS:
                if activation(n.input[0]):
                    want = [0]
            elif op == "Add" and len(n.input) == 2 and all(activation(t) for t in n.input):
                fused = []
                for k, t in enumerate(n.input):
                    pr = G.producer.get(t)
                    if pr is not None and pr.op_type in WEIGHTED_OPS and len(G.consumers.get(t, [])) == 1 \
                            and t not in G.graph_outputs and prec(pr) == "int8":
                        fused.append(k)
                if fused:
                    want = [k for k in range(2) if k != fused[0]]
            if not want:
                continue
            ps = {}
            for k in want:
                q = params_for(n.input[k])
                if q is None:
                    break
                ps[k] = q
            if len(ps) != len(want):
                P.float_fallback[node_key(n)] = "no amax for input " + \
                    ", ".join(n.input[k] for k in want if k not in ps)
                continue
            P.accept(G, n, ps, weights)
    else:
        # ONNX Runtime: producer-fused output quantization, a fixpoint over data-movement chains
        relu_of = {}
        for n in G.g.node:
            if n.op_type in ORT_INT8_OPS and prec(n) == "int8":
                r = _foldable_activation(G, n, plan)
                if r is not None:
                    relu_of[id(n)] = r
        known_q: set[str] = set()
        for _ in range(4):
            P.tparams, P.int8_nodes, P.float_fallback, P.relu_fold = {}, [], {}, {}
            P.weight_axis, P.edges = {}, {}
            A.used, A.missing, A.propagated = [], [], {}
            dm_int8 = set()
            for n in G.g.node:
                op = n.op_type
                if prec(n) != "int8" or n.domain not in ("", "ai.onnx"):
                    continue
                if op in DATA_MOVEMENT_OPS:
                    t = n.input[0]
                    out = n.output[0]
                    if activation(t) and (t in P.tparams or t in known_q) and out not in G.graph_outputs \
                            and len(n.output) == 1:
                        q = params_for(t)
                        if q is None:
                            continue
                        P.tparams[t] = q
                        P.tparams[out] = q
                        dm_int8.add(id(n))
                        P.int8_nodes.append(n)
                    continue
                if op not in ORT_INT8_OPS:
                    continue
                acts = [k for k, t in enumerate(n.input) if activation(t)]
                weights = []
                if op in ("Conv", "Gemm", "MatMul"):
                    for k, t in enumerate(n.input[:2]):
                        if G.is_const(t) and is_float(t):
                            if _weight_axis(G, n, k) is None and op != "Gemm":
                                acts = []
                            weights.append(k)
                    if op == "Conv" and (0 not in acts or 1 not in weights):
                        continue
                    if op == "Gemm" and (0 not in acts or 1 not in weights or _attr(n, "transA", 0)):
                        continue
                    if op == "MatMul" and 0 not in acts:
                        continue
                elif op in ("Add", "Mul"):
                    if len(acts) != 2:
                        continue
                elif op == "Concat":
                    if len(acts) != len(n.input):
                        continue
                else:  # pools
                    if acts != [0]:
                        continue
                out = n.output[0]
                relu = relu_of.get(id(n))
                out_t = relu.output[0] if relu is not None else out
                float_out_ok = op in ("Gemm", "MatMul")
                if not is_float(out):
                    continue
                if out_t in G.graph_outputs and not float_out_ok:
                    P.float_fallback[node_key(n)] = "its output is a network output"
                    continue
                ps, miss = {}, []
                for k in acts:
                    q = params_for(n.input[k])
                    (miss.append(n.input[k]) if q is None else ps.__setitem__(k, q))
                qo = None
                if out_t not in G.graph_outputs:
                    if relu is not None:
                        got = A.get(out_t) if out_t not in P.tparams else (out_t, None)
                        if got is not None:
                            qo = P.tparams.get(out_t) or _relu_params(min(got[1], _clip_max(G, relu)))
                        else:
                            miss.append(out_t)
                    else:
                        qo = params_for(out)
                        if qo is None:
                            if not float_out_ok:
                                miss.append(out)
                if miss:
                    P.float_fallback[node_key(n)] = "no amax for " + ", ".join(miss)
                    continue
                P.accept(G, n, ps, weights)
                if qo is not None:
                    P.tparams[out_t] = qo
                    P.q_after[out_t] = True
                    if relu is not None:
                        P.relu_fold[id(n)] = relu
            new_known = set(P.tparams)
            if new_known == known_q:
                break
            known_q = new_known
        # data-movement nodes: their input edge is quantized
        int8_ids = {id(x) for x in P.int8_nodes}
        for n in G.g.node:
            if n.op_type in DATA_MOVEMENT_OPS and id(n) in int8_ids:
                P.edges[(id(n), 0)] = n.input[0]
                P.q_after[n.output[0]] = True
    P.used_amax = list(A.used)
    P.missing = list(A.missing)
    P.propagated = dict(A.propagated)
    return P


# --------------------------------------------------------------------------- rewriting
def _weight_q(w: np.ndarray, axis: int | None, per_channel: bool, wamax=None, min_scale=None):
    """int8 weights, float32 scales (per channel along *axis* or per tensor).

    A channel whose weights are all zero gets scale 1. *min_scale* raises
    the scale of channels whose int32 bias would otherwise overflow (tiny weights, big bias).
    """
    w = w.astype(np.float32)
    if per_channel and axis is not None:
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=red) if wamax is None else np.broadcast_to(
            np.asarray(wamax, np.float32), (w.shape[axis],))
        amax = amax.astype(np.float32)
        scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
        if min_scale is not None:
            scale = np.maximum(scale, np.asarray(min_scale, np.float32)).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        return q, scale
    amax = np.float32(np.abs(w).max() if wamax is None else np.max(wamax))
    scale = np.float32(amax / np.float32(127.0)) if amax > 0 else np.float32(1.0)
    if min_scale is not None:
        scale = np.float32(max(scale, np.max(min_scale)))
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, np.asarray(scale, np.float32)


BIAS_CORRECTABLE_OPS = ("Conv", "ConvTranspose", "Gemm")


def _out_channels(G: _Graph, n) -> int | None:
    """Output channels of a Conv / ConvTranspose / Gemm with a constant weight (input 1)."""
    w = G.const(n.input[1]) if len(n.input) > 1 else None
    if w is None or w.ndim < 2:
        return None
    if n.op_type == "Conv":
        return int(w.shape[0])
    if n.op_type == "ConvTranspose":
        return int(w.shape[1]) * int(_attr(n, "group", 1))
    if n.op_type == "Gemm" and w.ndim == 2:
        return int(w.shape[0] if _attr(n, "transB", 0) else w.shape[1])
    return None


def _bias_correctable(G: _Graph, n, P: _Placement) -> bool:
    """An INT8 Conv / ConvTranspose / Gemm with a quantized activation input 0 and a quantized
    constant weight 1, whose bias (if any) is a constant vector of one value per output channel:
    a per-channel shift of its output can be folded into that bias."""
    if n.op_type not in BIAS_CORRECTABLE_OPS or (id(n), 0) not in P.edges or (id(n), 1) not in P.weight_axis:
        return False
    c = _out_channels(G, n)
    if c is None:
        return False
    if n.op_type == "Gemm" and float(_attr(n, "beta", 1.0)) == 0.0:
        return False
    if len(n.input) > 2 and n.input[2]:
        b = G.const(n.input[2])
        return b is not None and b.ndim == 1 and b.shape[0] == c
    return True


def _rewrite(G: _Graph, P: _Placement, target: str, per_channel: bool, weight_amax, types,
             bias_probe: bool = False, bias_shift: Mapping[str, object] | None = None,
             report: "QuantReport | None" = None) -> list[str]:
    from onnx import helper, numpy_helper

    taken = G.all_names()
    keys = {id(n): node_key(n) for n in G.g.node}   # before Relu folds rename outputs
    new_inits = []
    made_weights: dict[tuple, str] = {}
    nodes_out = []
    q_name: dict[str, str] = {}       # tensor -> quantized tensor name
    dq_count: dict[str, int] = {}
    int8_ids = {id(n) for n in P.int8_nodes}
    fp_exclude = {id(n) for n in P.fp16} | {id(n) for n in P.fp32}

    # bias correction: the float weight and bias of every correctable node, before any rewiring
    correctable = {id(n): (n.input[1], n.input[2] if len(n.input) > 2 else "")
                   for n in P.int8_nodes if _bias_correctable(G, n, P)}
    corrected: dict[str, np.ndarray] = {}   # new bias initializer -> value

    def const(name):
        return corrected[name] if name in corrected else G.const(name)

    # relu folds: the producer writes the activation's output name directly
    removed = set()
    folded_names = []
    for n in P.int8_nodes:
        r = P.relu_fold.get(id(n))
        if r is not None:
            n.output[0] = r.output[0]
            removed.add(id(r))
            folded_names.append(r.name or r.output[0])

    # ONNX Runtime: every consumer edge of a producer-quantized tensor reads DQ (fusion needs
    # the producer's only consumer to be the Q), except plan-excluded nodes.
    edges = dict(P.edges)
    if target == "onnxruntime":
        for t in P.q_after:
            for c in G.consumers.get(t, []):
                if id(c) in removed or id(c) in fp_exclude:
                    continue
                for k, i in enumerate(c.input):
                    if i == t:
                        edges[(id(c), k)] = t
        # relu-folded tensors: after the fold the raw tensor is pre-activation, so fp32/fp16
        # consumers were excluded from folding in _foldable_activation already.

    def scalar_inits(base, q: QParams):
        s = _unique(f"{base}_scale", taken)
        z = _unique(f"{base}_zero_point", taken)
        new_inits.append(numpy_helper.from_array(np.asarray(q.scale, np.float32), s))
        zdt = np.uint8 if q.dtype == _UINT8 else np.int8
        new_inits.append(numpy_helper.from_array(np.asarray(q.zero_point, zdt), z))
        return s, z

    qp_names: dict[str, tuple] = {}

    def emit_q(t):
        if t in q_name:
            return
        q = P.tparams[t]
        s, z = scalar_inits(t, q)
        qp_names[t] = (s, z)
        out = _unique(f"{t}_quantized", taken)
        nodes_out.append(helper.make_node("QuantizeLinear", [t, s, z], [out],
                                          name=_unique(f"{t}_QuantizeLinear", taken)))
        q_name[t] = out

    def emit_dq(t) -> str:
        s, z = qp_names[t]
        k = dq_count.get(t, 0)
        dq_count[t] = k + 1
        sfx = "" if k == 0 else f"_{k}"
        out = _unique(f"{t}_dequantized{sfx}", taken)
        nodes_out.append(helper.make_node("DequantizeLinear", [q_name[t], s, z], [out],
                                          name=_unique(f"{t}_DequantizeLinear{sfx}", taken)))
        return out

    def weight_dq(n, k, axis):
        wname = n.input[k]
        min_scale = None
        # Both targets: runtimes fold the float bias into the int32 accumulator (ONNX Runtime's
        # QDQ fusion does it for the tensorrt placement too), so near-zero weight channels
        # (EfficientNet-Lite0's stem has max|w| ~ 1e-9) must not get scales that overflow it.
        if k == 1 and n.op_type in ("Conv", "Gemm") and len(n.input) > 2 \
                and n.input[2] and (id(n), 0) in edges and const(n.input[2]) is not None:
            # int32 bias = b / (s_in * s_w) must fit: |b| / (s_in * s_w) <= 2**31 - 1
            s_in = P.tparams[edges[(id(n), 0)]].scale
            b = np.abs(const(n.input[2]).astype(np.float64)).ravel()
            min_scale = (b / (s_in * (2.0 ** 31 - 1))).astype(np.float32) * np.float32(1.0001)
        key = (wname, axis if per_channel else None, None if min_scale is None else min_scale.tobytes())
        if key in made_weights:
            return made_weights[key]
        w = G.const(wname)
        wa = weight_amax.get(wname) if weight_amax else None
        q, scale = _weight_q(w, axis, per_channel, wa, min_scale)
        qn = _unique(f"{wname}_quantized", taken)
        sn = _unique(f"{wname}_scale", taken)
        zn = _unique(f"{wname}_zero_point", taken)
        new_inits.append(numpy_helper.from_array(q, qn))
        new_inits.append(numpy_helper.from_array(scale, sn))
        new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8), zn))
        out = _unique(f"{wname}_dequantized", taken)
        attrs = {"axis": int(axis)} if scale.ndim == 1 else {}
        nodes_out.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [out],
                                          name=_unique(f"{wname}_DequantizeLinear", taken), **attrs))
        made_weights[key] = out
        made_weights[("scale", out)] = scale
        return out

    def bias_dq(n, in_scale: float, w_scale: np.ndarray):
        bname = n.input[2]
        b = const(bname)
        if b is None:
            return None
        s = (np.float32(in_scale) * w_scale.astype(np.float32)).astype(np.float32)
        s = np.broadcast_to(s, b.shape).astype(np.float32) if s.ndim == 1 and s.shape != b.shape else s
        s = np.where(s > 0, s, np.float32(1e-12)).astype(np.float32)
        q = np.clip(np.rint(b.astype(np.float64) / s), -2**31, 2**31 - 1).astype(np.int32)
        base = f"{bname}_{n.name}" if len(G.consumers.get(bname, [])) > 1 and n.name else bname
        qn = _unique(f"{base}_quantized", taken)
        sn = _unique(f"{base}_scale", taken)
        zn = _unique(f"{base}_zero_point", taken)
        new_inits.append(numpy_helper.from_array(q, qn))
        new_inits.append(numpy_helper.from_array(s.astype(np.float32), sn))
        new_inits.append(numpy_helper.from_array(np.zeros(s.shape, np.int32), zn))
        out = _unique(f"{base}_dequantized", taken)
        attrs = {"axis": 0} if s.ndim == 1 else {}
        nodes_out.append(helper.make_node("DequantizeLinear", [qn, sn, zn], [out],
                                          name=_unique(f"{base}_DequantizeLinear", taken), **attrs))
        return out

    def correct_bias(n, shift) -> bool:
        """Subtract *shift* (one value per output channel) from *n*'s bias, in a new initializer."""
        c = _out_channels(G, n)
        shift = np.asarray(shift, np.float64).ravel()
        if shift.shape != (c,) or not np.all(np.isfinite(shift)):
            return False
        _, b = correctable[id(n)]
        old = np.zeros(c, np.float64) if not b else const(b).astype(np.float64)
        beta = float(_attr(n, "beta", 1.0)) if n.op_type == "Gemm" else 1.0
        new = (old - shift / beta).astype(np.float32)
        name = _unique(f"{b or keys[id(n)]}_corrected", taken)
        new_inits.append(numpy_helper.from_array(new, name))
        corrected[name] = new
        while len(n.input) < 3:
            n.input.append("")
        n.input[2] = name
        return True

    probe_outputs: dict[str, str] = {}   # graph output -> node key

    def emit_probe(n):
        """The op again with float weights and bias on the same (dequantized) input, and each
        sample's per-channel mean of (INT8 output - that reference) as a graph output."""
        w, b = correctable[id(n)]
        x = n.input[0]    # the dequantized input: the error measured is the weights' alone
        key = keys[id(n)]
        ref = _unique(f"{key}_bias_probe_reference", taken)
        rn = helper.make_node(n.op_type, [x, w] + ([b] if b else []), [ref],
                              name=_unique(f"{key}_bias_probe_reference", taken))
        rn.attribute.extend(n.attribute)
        diff = _unique(f"{key}_bias_probe_error", taken)
        nodes_out.extend([rn, helper.make_node("Sub", [n.output[0], ref], [diff],
                                               name=_unique(f"{key}_bias_probe_Sub", taken))])
        out = diff
        if n.op_type != "Gemm":   # [N, C, spatial...] -> [N, C]
            axes = list(range(2, G.const(w).ndim))
            out = _unique(f"{key}_bias_probe", taken)
            nodes_out.append(_reduce_node("ReduceMean", diff, axes, out, G.opset, new_inits,
                                          name=_unique(f"{key}_bias_probe_ReduceMean", taken),
                                          axes_name=_unique(f"{key}_bias_probe_axes", taken)))
        probe_outputs[out] = key
        G.g.output.append(helper.make_tensor_value_info(out, _FLOAT, [None, _out_channels(G, n)]))  # [sample, channel]

    edge_tensors = set(edges.values())   # edges is complete here and not changed below
    for t in G.graph_inputs:
        if t in P.tparams and t in edge_tensors:
            emit_q(t)
    for n in list(G.g.node):
        if id(n) in removed:
            continue
        if id(n) in correctable and bias_shift and keys[id(n)] in bias_shift:
            if correct_bias(n, bias_shift[keys[id(n)]]) and report is not None:
                report.bias_corrected.append(keys[id(n)])
        # inputs
        for k, t in enumerate(list(n.input)):
            key = (id(n), k)
            if key in edges:
                emit_q(t)  # no-op if the producer already emitted it
                n.input[k] = emit_dq(t)
            elif key in P.weight_axis and id(n) in int8_ids:
                n.input[k] = weight_dq(n, k, P.weight_axis[key])
        if target == "onnxruntime" and id(n) in int8_ids and n.op_type in ("Conv", "Gemm") \
                and len(n.input) > 2 and n.input[2] and const(n.input[2]) is not None \
                and (id(n), 0) in edges and (id(n), 1) in P.weight_axis:
            in_scale = P.tparams[edges[(id(n), 0)]].scale
            w_scale = made_weights[("scale", n.input[1])]
            if n.op_type == "Gemm" and float(_attr(n, "beta", 1.0)) != 1.0:
                pass
            else:
                bdq = bias_dq(n, in_scale, w_scale)
                if bdq is not None:
                    n.input[2] = bdq
        nodes_out.append(n)
        if bias_probe and id(n) in correctable:
            emit_probe(n)
        for o in n.output:
            if o in P.q_after and o in P.tparams and o in edge_tensors:
                emit_q(o)
    # Q nodes for tensors whose producer came later than a consumer cannot happen (topological),
    # but a Q emitted lazily before its consumer must follow its producer: reorder.
    nodes_out = _toposort(nodes_out, set(G.graph_inputs) | set(G.inits) | {i.name for i in new_inits})
    del G.g.node[:]
    G.g.node.extend(nodes_out)
    G.g.initializer.extend(new_inits)
    G.refresh()
    if report is not None:
        report.bias_probes = probe_outputs
    return folded_names


def _toposort(nodes, available: set[str]):
    """Stable topological sort (keeps the given order wherever it is already valid)."""
    avail = set(available)
    for n in nodes:
        if n.op_type == "Constant":
            avail.update(n.output)
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    out, done = [], [False] * len(nodes)
    pending = list(range(len(nodes)))
    while pending:
        progressed = False
        rest = []
        for i in pending:
            n = nodes[i]
            need = [x for x in n.input if x and x in produced_by and not done[produced_by[x]]
                    and produced_by[x] != i]
            if need:
                rest.append(i)
                continue
            out.append(n)
            done[i] = True
            progressed = True
        if not progressed:  # a cycle would be a bug; keep order rather than loop forever
            out.extend(nodes[i] for i in rest)
            break
        pending = rest
    return out


def _wrap_fp16(G: _Graph, nodes: list, types: dict[str, int]) -> list[str]:
    """Cast float32 inputs of *nodes* ((op_type, outputs) keys) to float16 and their float
    outputs back to float32."""
    import onnx
    from onnx import helper

    taken = G.all_names()
    wrapped = []
    new_nodes = []
    # the graph's node messages were copied by the rewrite: find the nodes by their outputs
    keys = set(nodes)
    for n in list(G.g.node):
        if (n.op_type, tuple(n.output)) not in keys:
            new_nodes.append(n)
            continue
        try:
            schema = onnx.defs.get_schema(n.op_type, G.opset, n.domain)
        except Exception:
            new_nodes.append(n)
            continue
        out_tc = {schema.outputs[min(k, len(schema.outputs) - 1)].type_str for k in range(len(n.output))}
        key = node_key(n)   # before its outputs are renamed below
        pre, post = [], []
        for k, t in enumerate(n.input):
            if not t or types.get(t) != _FLOAT:
                continue
            f = schema.inputs[min(k, len(schema.inputs) - 1)]
            if f.type_str not in out_tc or f.type_str.startswith("tensor("):
                continue
            o = _unique(f"{t}_to_fp16_{n.name}" if n.name else f"{t}_to_fp16", taken)
            pre.append(helper.make_node("Cast", [t], [o], name=_unique(f"{o}_Cast", taken), to=_FLOAT16))
            n.input[k] = o
        if not pre:
            new_nodes.append(n)
            continue
        for k, t in enumerate(n.output):
            if not t or types.get(t) != _FLOAT:
                continue
            o = _unique(f"{t}_fp16", taken)
            n.output[k] = o
            post.append(helper.make_node("Cast", [o], [t], name=_unique(f"{t}_to_fp32_Cast", taken), to=_FLOAT))
        new_nodes.extend(pre + [n] + post)
        wrapped.append(key)
    del G.g.node[:]
    G.g.node.extend(new_nodes)
    G.refresh()
    return wrapped


# --------------------------------------------------------------------------- public API
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
    proto, _ = _prepare(model)
    G = _Graph(proto)
    types = _tensor_types(proto)
    P = _place(G, types, target, plan, None)
    order = {t: i for i, t in enumerate(G.graph_inputs + [o for n in G.g.node for o in n.output])}
    return sorted(set(P.used_amax), key=lambda t: order.get(t, len(order)))


def quantize_model(model, amax: Mapping[str, float], *, target: str = "tensorrt", plan=None,
                   per_channel: bool = True, weight_amax: Mapping[str, object] | None = None,
                   smooth: Mapping[str, object] | None = None, bias_probe: bool = False,
                   bias_shift: Mapping[str, object] | None = None) -> Model:
    """Return a new :class:`Model` with Q/DQ nodes placed for *target* (see module docs).

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
    """
    model = load_model(model)
    check_input(model, target)
    plan = load_plan(plan)
    if amax is None or not isinstance(amax, Mapping):
        raise QuantizationError("amax must be a mapping of activation tensor name -> float")
    proto, done = _prepare(model)
    G = _Graph(proto)
    smoothed = []
    if smooth:
        from .smooth import _apply

        try:
            smoothed = _apply(G, smooth)
        except ValueError as exc:
            raise QuantizationError(f"{done.name}: {exc}") from None
    types = _tensor_types(proto)
    P = _place(G, types, target, plan, amax)
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
    report.folded = list(done.folded) + _rewrite(G, P, target, per_channel, weight_amax or {}, types,
                                                 bias_probe=bias_probe, bias_shift=bias_shift, report=report)
    if P.fp16:
        fp16 = [(n.op_type, tuple(n.output)) for n in P.fp16]
        report.fp16_nodes = _wrap_fp16(G, fp16, types)
    G.remove_dead()
    _drop_stale_value_info(G)
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


def _drop_stale_value_info(G: _Graph):
    names = {o for n in G.g.node for o in n.output}
    vi = [v for v in G.g.value_info if v.name in names]
    del G.g.value_info[:]
    G.g.value_info.extend(vi)
