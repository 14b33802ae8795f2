"""Per-layer error attribution: SQNR of every intermediate tensor, candidate vs reference.

The reference (FP32) model and the candidate (Q/DQ INT8, mixed precision, FP16 ONNX)
are run with the same intermediate tensors captured. Names correspond because a
Q/DQ model keeps the float graph: a quantized tensor ``T`` becomes
``T -> QuantizeLinear -> DequantizeLinear -> T'`` and the consumers read ``T'``.
The candidate counterpart of ``T`` is found structurally (see :func:`map_tensors`:
the tensor a shared node reads in ``T``'s place, else the DequantizeLinear output of
a Q/DQ pair on ``T``, else ``T`` itself), which covers ONNX Runtime's quantizer naming
(``T_DequantizeLinear_Output``), calib.qdq's (``T_dequantized``) and any other.

Sums of ``ref**2`` and ``(cand - ref)**2`` per tensor are accumulated batch by
batch (float64), so only one batch of captures is held at a time.
SQNR(T) = 10 log10(sum ref^2 / sum (cand - ref)^2).

Where the error jumps: for each tensor, the *drop* is the SQNR of its worst
captured input (the error flowing in) minus its own SQNR -- the error added by
the node producing it. A tensor whose inputs are not captured falls back to the
previous tensor in topological order. The largest drops are named in the report.
An error-free tensor (infinite SQNR) counts as 100 dB in a drop, so the first
node that introduces error still shows up as a (large, finite) drop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..model import Model
from .stats import db

_NON_FLOAT_OPS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "ConstantOfShape", "Range",
                  "QuantizeLinear", "DynamicQuantizeLinear", "Equal", "Less", "Greater", "Not", "And", "Or"}
_FLOAT_TYPES = {1, 10, 11, 16}   # float, float16, double, bfloat16
EXACT_DB = 100.0                 # an error-free tensor counts as 100 dB when computing drops


def _elem_types(model: Model) -> dict[str, int]:
    m = model.infer_shapes()
    types = {}
    for vi in list(m.proto.graph.value_info) + list(m.proto.graph.output) + list(m.proto.graph.input):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def float_activations(model: Model) -> list[str]:
    """Float tensors produced by nodes (plus float graph inputs), topological order."""
    types = _elem_types(model)
    producers = model.producers()
    out = [t.name for t in model.inputs if np.dtype(t.dtype).kind == "f"]
    for name in model.activation_tensors():
        et = types.get(name)
        if et is not None:
            if et in _FLOAT_TYPES:
                out.append(name)
        elif producers[name].op_type not in _NON_FLOAT_OPS:
            out.append(name)
    return out


def map_tensors(reference: Model, candidate: Model, tensors: list[str] | None = None) -> list[tuple[str, str]]:
    """``[(reference tensor, candidate tensor)]`` in the reference's topological order.

    The counterpart of a reference tensor ``T`` is, in order of preference:

    1. the tensor that *replaces* ``T``: a node present in both graphs (same name and op)
       reads ``T`` in the reference and another tensor in the same input slot of the
       candidate (the DequantizeLinear output, or a Cast for FP16 islands). This also
       follows rewrites such as a Relu folded into the previous op's output quantization;
    2. the output of a DequantizeLinear fed by a QuantizeLinear that reads ``T`` (models
       whose nodes have no names);
    3. ``T`` itself if the candidate still has it;
    4. ``T_DequantizeLinear_Output`` (ONNX Runtime quantizer naming).

    Graph inputs are kept only when the candidate quantizes them (otherwise both sides
    are the same data). Tensors without a counterpart (folded away) are left out."""
    ref_tensors = tensors if tensors is not None else float_activations(reference)
    ref_inputs = {t.name for t in reference.inputs}
    ref_acts = set(reference.activation_tensors()) | ref_inputs
    cand_acts = set(candidate.activation_tensors())
    cand_known = cand_acts | {t.name for t in candidate.inputs}
    consumers = candidate.consumers()

    replaced: dict[str, str] = {}
    ref_nodes = {n.name: n for n in reference.nodes if n.name}
    for cn in candidate.nodes:
        rn = ref_nodes.get(cn.name) if cn.name else None
        if rn is None or rn.op_type != cn.op_type:
            continue
        for ri, ci in zip(rn.input, cn.input):
            if ri and ci and ri != ci and ri in ref_acts and ci in cand_acts and ri not in replaced:
                replaced[ri] = ci

    pairs = []
    for t in ref_tensors:
        match = replaced.get(t)
        if match is None and t in cand_known:
            match = _dequantized(t, consumers)
            if match is None and t not in ref_inputs:
                match = t
        if match is None and f"{t}_DequantizeLinear_Output" in cand_acts:
            match = f"{t}_DequantizeLinear_Output"
        if match is not None:
            pairs.append((t, match))
    return pairs


def _dequantized(t: str, consumers: dict) -> str | None:
    for q in consumers.get(t, []):
        if q.op_type == "QuantizeLinear" and q.input and q.input[0] == t:
            for d in consumers.get(q.output[0], []):
                if d.op_type == "DequantizeLinear" and d.input and d.input[0] == q.output[0]:
                    return d.output[0]
    return None


@dataclass
class LayerError:
    tensor: str
    candidate_tensor: str
    op: str
    index: int
    sqnr_db: float
    signal: float
    noise: float
    elements: int
    drop_db: float | None = None
    drop_from: str | None = None

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "candidate_tensor": self.candidate_tensor, "op": self.op,
                "index": self.index, "sqnr_db": self.sqnr_db, "drop_db": self.drop_db,
                "drop_from": self.drop_from, "elements": self.elements}


@dataclass
class Attribution:
    candidate: str
    layers: list[LayerError]
    samples: int
    top: int = 10
    notes: list[str] = field(default_factory=list)

    def worst(self, k: int | None = None) -> list[LayerError]:
        """Tensors with the lowest SQNR."""
        k = self.top if k is None else k
        return sorted((l for l in self.layers), key=lambda l: l.sqnr_db)[:k]

    def jumps(self, k: int | None = None) -> list[LayerError]:
        """Tensors where SQNR drops most relative to their inputs."""
        k = self.top if k is None else k
        with_drop = [l for l in self.layers if l.drop_db is not None and math.isfinite(l.drop_db)]
        return sorted(with_drop, key=lambda l: -l.drop_db)[:k]

    def to_dict(self) -> dict:
        return {"candidate": self.candidate, "samples": self.samples,
                "method": "SQNR = 10 log10(sum ref^2 / sum (cand-ref)^2) per tensor; drop = worst input SQNR - own SQNR",
                "largest_drops": [l.to_dict() for l in self.jumps()],
                "lowest_sqnr": [l.to_dict() for l in self.worst()],
                "layers": [l.to_dict() for l in self.layers], "notes": self.notes}


class LayerAccumulator:
    """Streaming per-tensor signal and noise sums for one candidate."""

    def __init__(self, candidate: str, reference: Model, pairs: list[tuple[str, str]]):
        self.candidate = candidate
        self.reference = reference
        self.pairs = pairs
        self.signal = np.zeros(len(pairs))
        self.noise = np.zeros(len(pairs))
        self.elements = np.zeros(len(pairs), dtype=np.int64)
        self.samples = 0
        self.notes: list[str] = []
        self._bad: set[str] = set()

    def update(self, ref_out: dict[str, np.ndarray], cand_out: dict[str, np.ndarray]) -> None:
        n = None
        for i, (rt, ct) in enumerate(self.pairs):
            r = ref_out.get(rt)
            c = cand_out.get(ct)
            if r is None or c is None:
                continue
            if r.shape != c.shape:
                if rt not in self._bad:
                    self._bad.add(rt)
                    self.notes.append(f"{rt}: shapes differ ({r.shape} vs {c.shape}); skipped")
                continue
            # float32 BLAS dot products (relative error well under 1e-3 per batch: far below what
            # a dB figure shows); each batch's sum is then accumulated in float64
            rf = np.ascontiguousarray(r, dtype=np.float32).ravel()
            e = np.ascontiguousarray(c, dtype=np.float32).ravel() - rf
            self.signal[i] += float(np.dot(rf, rf))
            self.noise[i] += float(np.dot(e, e))
            self.elements[i] += rf.size
            n = r.shape[0] if r.ndim else 1
        if n:
            self.samples += n

    def result(self, top: int = 10) -> Attribution:
        producers = self.reference.producers()
        index = {rt: i for i, (rt, _) in enumerate(self.pairs)}
        layers: list[LayerError] = []
        sq = {}
        for i, (rt, ct) in enumerate(self.pairs):
            if self.elements[i] == 0:
                continue
            s = float(db(self.signal[i] / self.noise[i])) if self.noise[i] > 0 else math.inf
            sq[rt] = s
            node = producers.get(rt)
            layers.append(LayerError(rt, ct, node.op_type if node is not None else "input", len(layers), s,
                                     float(self.signal[i]), float(self.noise[i]), int(self.elements[i])))
        prev = None
        for l in layers:
            node = producers.get(l.tensor)
            ins = [x for x in (node.input if node is not None else []) if x in sq and x in index]
            if ins:
                src = min(ins, key=lambda x: sq[x])
            else:
                src = prev.tensor if prev is not None else None
            if src is not None:
                a, b = min(sq[src], EXACT_DB), min(l.sqnr_db, EXACT_DB)
                l.drop_db = a - b
                l.drop_from = src
            prev = l
        return Attribution(self.candidate, layers, self.samples, top, list(self.notes))
