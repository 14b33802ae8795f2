"""Quantization groups: the node sets TensorRT fuses into one layer and quantizes together.

A mixed-precision plan chooses one precision per group, not per node: a Conv and the BatchNorm,
bias and activation TensorRT fuses into it run at one precision, so choosing them apart would
only describe engines TensorRT does not build. :func:`find_groups` puts every node of the model
(the original nodes, which precision plans name) in exactly one :class:`QuantGroup`, by these
rules in this order, each node claimed once:

1. ``attention``: ``MatMul(Q, K^T)`` of two activations -> optional Mul / Div by a constant ->
   optional Add (a mask) -> Softmax -> ``MatMul(., V)``, with a Mul / Div by a constant that only
   scales an input of the first MatMul (Q's scale); anchored at the first MatMul.
2. ``conv`` (Conv, ConvTranspose), ``gemm`` (Gemm), ``matmul`` (MatMul): the weighted op and its
   epilogue, the pointwise ops that read only its output and constants: BatchNormalization, bias
   Add, Mul / Div / Sub / Pow by a constant, activations (Relu, Clip, Sigmoid, HardSigmoid,
   LeakyRelu, PRelu, Tanh, HardSwish, Gelu, Elu, ...), Identity / Dropout, and decomposed
   activations whose nodes all read the op's output and each other (swish ``x * sigmoid(x)``,
   hard-swish ``x * clip(x + 3, 0, 6) / 6``, Gelu's Erf and Tanh forms). The epilogue stops at a
   tensor read by anything else or at a network output.
3. ``residual``: an Add of two activations, one of them the end of a group's epilogue that feeds
   only this Add, joins that group (TensorRT fuses Conv + Add; where both inputs end groups, the
   one computed last, as its epilogue can add the other), which then goes on with the
   activation after the Add; the group's kind becomes ``residual``.
4. ``pool``: MaxPool, AveragePool, GlobalAveragePool, alone.
5. Nodes :func:`calib.preparation.prepare` removes (a zero Pad before a Conv, a BatchNorm folded
   into one, Identity / Dropout, the constants only they used) join the group of the node they
   follow; other nodes computed from constants only (Constant, ...) join the group of their
   first consumer.
6. ``other``: the remaining nodes, not quantizable: nodes joined by float tensors (a
   LayerNorm's decomposition, a Reshape / Transpose chain) form one group, and so do the joined
   nodes of a shape computation (Shape and what computes from it only: Gather, Concat, ...).

A group's ``id`` is the plan key (:func:`calib.plan.node_key`) of its anchor (the weighted op,
the attention's first MatMul, the pool, an ``other`` group's first node); groups are returned in
the topological order of their anchors, ``order`` being that position. Costs are per sample
(batch 1), from ONNX shape inference at concrete input shapes (:func:`calib.graph.concrete_shapes`;
tensors it cannot tell are measured by one ONNX Runtime run on zeros): ``macs`` counts the
multiply-accumulates of Conv (output elements x input channels per group x kernel size),
ConvTranspose (input elements x output channels per group x kernel size), Gemm and MatMul
(output elements x the reduced dimension); ``activation_bytes`` the float32 bytes of the
activations the group reads from other groups and writes for them (its internal tensors are
fused away; a Shape reads no values); ``weight_count`` the elements of the float constants its nodes read (weights, biases,
per-channel scales; scalars such as Clip bounds are not counted).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import CalibError, InputMismatchError, PlanError
from ..graph import STANDARD_DOMAINS, WEIGHTED_OPS, attr, concrete_shapes, tensor_types, unique_name
from ..model import Model, load_model
from ..plan import PRECISIONS, PrecisionPlan, node_key
from ..preparation import prepare
from ..qdq import POOL_OPS

KINDS = ("conv", "gemm", "matmul", "attention", "residual", "pool", "other")
# pointwise ops an epilogue may hold (binary ones with a constant or another epilogue tensor)
EPILOGUE_OPS = frozenset(("BatchNormalization", "Add", "Sub", "Mul", "Div", "Pow", "Relu", "Clip", "Sigmoid",
                          "HardSigmoid", "LeakyRelu", "PRelu", "Tanh", "HardSwish", "Gelu", "Erf", "Elu", "Selu",
                          "Softplus", "Mish", "Identity", "Dropout"))
MAX_EPILOGUE = 12          # nodes one pointwise step (a decomposed activation) may take
_MS_DOMAINS = ("com.microsoft",)   # Gelu / FastGelu of ONNX Runtime's contrib ops
_FLOAT_TYPES = (1, 10, 11, 16)     # float, float16, double, bfloat16: counted as float32 bytes
_ITEMSIZE = {2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 12: 4, 13: 8}
_METADATA_OPS = ("Shape", "Size")  # read a tensor's shape, not its values


@dataclass(frozen=True)
class QuantGroup:
    """One quantization group (see the module docs)."""

    id: str                      # the plan key of the anchor node
    kind: str                    # one of KINDS
    nodes: tuple[str, ...]       # plan keys of every node in the group, in topological order
    anchor: str                  # the node the group is built around
    quantizable: bool            # False: no node of it is ever INT8 (not a choice of the search)
    macs: int                    # multiply-accumulates per sample
    activation_bytes: int        # float32 bytes of the activations it reads and writes per sample
    weight_count: int            # elements of its weights, biases and per-channel scales
    order: int                   # position in topological order of the anchors

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nodes"] = list(self.nodes)
        return d


def input_shapes(model: Model, shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every model input: *shapes* where given, else the declared one; a
    dynamic first (batch) dimension is 1. Raises InputMismatchError naming what is missing."""
    shapes = dict(shapes or {})
    names = [t.name for t in model.inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise InputMismatchError(f"shapes name unknown input(s) {', '.join(unknown)} "
                                 f"(model inputs: {', '.join(names)})")
    out = {}
    for t in model.inputs:
        declared = list(t.shape)
        if t.name in shapes:
            got = [int(d) for d in shapes[t.name]]
            if len(got) != len(declared) or any(isinstance(d, int) and i > 0 and d != g
                                                for i, (d, g) in enumerate(zip(declared, got, strict=True))):
                raise InputMismatchError(f"input '{t.name}': shape {tuple(got)} does not fit the model's "
                                         f"{tuple(declared)}")
            if not isinstance(declared[0], int):
                got[0] = 1
            out[t.name] = tuple(got)
            continue
        dims = [d if isinstance(d, int) else (1 if i == 0 else None) for i, d in enumerate(declared)]
        if any(d is None for d in dims):
            example = "x".join(["1"] + [str(d) if isinstance(d, int) else "D" for d in declared[1:]])
            raise InputMismatchError(
                f"input '{t.name}' has dynamic dimensions {tuple(declared)}: give its concrete shape "
                f"(shapes= or --shapes {t.name}:{example}, each D a size; the batch counts as 1)")
        out[t.name] = tuple(dims)
    return out


def _shapes_of(model: Model, inputs: dict[str, tuple[int, ...]], needed: set[str]) -> dict[str, tuple]:
    """Shapes of *needed* tensors: shape inference, then one ONNX Runtime run on zeros for the
    ones it cannot tell."""
    got = concrete_shapes(model.proto, inputs)
    missing = sorted(t for t in needed if t not in got)
    if missing:
        from ..backends.onnxruntime import OrtEngine

        eng = OrtEngine(model, capture=missing, threads=1, optimize="basic")
        feed = {t.name: np.zeros(inputs[t.name], dtype=t.dtype) for t in model.inputs}
        for k, v in eng.run(feed).items():
            got.setdefault(k, tuple(int(d) for d in np.shape(v)))
    return got


class _Grouper:
    """The graph indexes and the node -> group assignment one :func:`find_groups` call builds."""

    def __init__(self, model: Model):
        g = model.proto.graph
        self.nodes = list(g.node)
        self.keys = [node_key(n) for n in self.nodes]
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for t in n.output:
                if t:
                    self.producer[t] = i
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)
        self.outputs = {o.name for o in g.output}
        self.const = {i.name for i in g.initializer}
        self.const_node = [False] * len(self.nodes)
        for i, n in enumerate(self.nodes):
            if n.domain in STANDARD_DOMAINS and all(t in self.const for t in n.input if t):
                self.const_node[i] = True
                self.const.update(t for t in n.output if t)
        self.group_of: list[int | None] = [None] * len(self.nodes)
        self.groups: list[dict] = []     # {kind, anchor, nodes: [index], end: frontier tensor}

    # -- small predicates ----------------------------------------------------
    def activation(self, t: str) -> bool:
        return bool(t) and t not in self.const

    def single_use(self, t: str) -> int | None:
        """The one node reading *t* (not a network output), else None."""
        cons = self.consumers.get(t, [])
        return cons[0] if len(cons) == 1 and t not in self.outputs else None

    def free(self, i: int) -> bool:
        return self.group_of[i] is None

    def new_group(self, kind: str, anchor: int, members: list[int], end: str | None = None) -> int:
        gi = len(self.groups)
        self.groups.append({"kind": kind, "anchor": anchor, "nodes": [], "end": end})
        self.claim(gi, members)
        return gi

    def claim(self, gi: int, members) -> None:
        for i in members:
            self.group_of[i] = gi
            self.groups[gi]["nodes"].append(i)

    def pointwise(self, i: int, inside: set[str]) -> bool:
        """Node *i* can join an epilogue whose tensors are *inside*: a pointwise op reading only
        them and constants (at least one of them), its extra outputs unused."""
        n = self.nodes[i]
        if n.op_type not in EPILOGUE_OPS or not self.free(i):
            return False
        if n.domain not in STANDARD_DOMAINS and not (n.op_type == "Gelu" and n.domain in _MS_DOMAINS):
            return False
        ins = [t for t in n.input if t]
        if not any(t in inside for t in ins) or not all(t in inside or t in self.const for t in ins):
            return False
        return all(not self.consumers.get(o) and o not in self.outputs for o in n.output[1:] if o)

    # -- rules -------------------------------------------------------------------
    def epilogue_step(self, t: str) -> tuple[list[int], str] | None:
        """The pointwise nodes after tensor *t* that form one step of an epilogue and the tensor
        they end in: the nodes read only *t*, constants and each other, every tensor among them
        but the last is read only by them (a single op, or a decomposed activation)."""
        if t in self.outputs or not self.consumers.get(t):
            return None
        step: list[int] = []
        inside = {t}
        for _ in range(MAX_EPILOGUE):
            produced = [t] + [o for i in step for o in self.nodes[i].output if o]
            open_ = [x for x in produced
                     if x in self.outputs or any(c not in step for c in self.consumers.get(x, []))]
            if step and len(open_) == 1 and open_[0] != t:
                return step, open_[0]
            cand = sorted({c for x in open_ for c in self.consumers.get(x, []) if c not in step})
            nxt = next((c for c in cand if self.pointwise(c, inside)), None)
            if nxt is None:
                return None
            step.append(nxt)
            inside.update(o for o in self.nodes[nxt].output if o)
        return None

    def extend_epilogue(self, gi: int, t: str) -> None:
        """Add epilogue steps after *t* to group *gi*; its ``end`` is the tensor they end in."""
        while True:
            got = self.epilogue_step(t)
            if got is None:
                break
            self.claim(gi, got[0])
            t = got[1]
        self.groups[gi]["end"] = t

    def scaled(self, i: int) -> str | None:
        """The activation node *i* multiplies or divides by a constant, if it is such a Mul / Div."""
        n = self.nodes[i]
        if n.op_type not in ("Mul", "Div") or n.domain not in STANDARD_DOMAINS or len(n.input) != 2:
            return None
        a, b = n.input
        if self.activation(a) and b in self.const:
            return a
        return b if n.op_type == "Mul" and self.activation(b) and a in self.const else None

    def attention(self, m1: int) -> list[int] | None:
        """The attention nodes from MatMul *m1* (see rule 1), or None."""
        n = self.nodes[m1]
        if len(n.input) != 2 or not all(self.activation(t) for t in n.input):
            return None
        members, t, masked = [m1], n.output[0], False
        while True:
            c = self.single_use(t)
            if c is None or not self.free(c) or self.nodes[c].domain not in STANDARD_DOMAINS:
                return None
            op = self.nodes[c].op_type
            if op == "Softmax":
                members.append(c)
                t = self.nodes[c].output[0]
                break
            if self.scaled(c) == t or (op == "Add" and not masked and len(self.nodes[c].input) == 2):
                masked = masked or op == "Add"
                members.append(c)
                t = self.nodes[c].output[0]
                continue
            return None
        m2 = self.single_use(t)
        if m2 is None or not self.free(m2) or self.nodes[m2].op_type != "MatMul" \
                or self.nodes[m2].input[0] != t or not self.activation(self.nodes[m2].input[1]):
            return None
        pre = []
        for x in n.input:
            p = self.producer.get(x)
            if p is not None and self.free(p) and self.single_use(x) == m1 and self.scaled(p) is not None:
                pre.append(p)
        return sorted(pre + members + [m2])

    def residual(self, add: int) -> None:
        """Rule 3 for Add node *add*."""
        n = self.nodes[add]
        if n.op_type != "Add" or n.domain not in STANDARD_DOMAINS or len(n.input) != 2 or not self.free(add) \
                or not all(self.activation(t) for t in n.input) or n.input[0] == n.input[1]:
            return
        ends = {g["end"]: gi for gi, g in enumerate(self.groups) if g["kind"] in ("conv", "gemm", "matmul")}
        cands = [ends[t] for t in n.input if t in ends and self.single_use(t) == add]
        if not cands:
            return
        gi = max(cands, key=lambda k: self.groups[k]["anchor"])
        self.claim(gi, [add])
        self.groups[gi]["kind"] = "residual"
        self.extend_epilogue(gi, n.output[0])

    def run(self, follows: Mapping[str, str], types: Mapping[str, int]) -> None:
        nodes = self.nodes
        for i, n in enumerate(nodes):
            if n.op_type == "MatMul" and self.free(i) and n.domain in STANDARD_DOMAINS:
                members = self.attention(i)
                if members is not None:
                    self.new_group("attention", i, members)
        for i, n in enumerate(nodes):
            if n.op_type in WEIGHTED_OPS and n.domain in STANDARD_DOMAINS and self.free(i) and not self.const_node[i]:
                kind = {"Conv": "conv", "ConvTranspose": "conv", "Gemm": "gemm"}.get(n.op_type, "matmul")
                gi = self.new_group(kind, i, [i])
                self.extend_epilogue(gi, n.output[0])
        for i in range(len(nodes)):
            self.residual(i)
        for i, n in enumerate(nodes):
            if n.op_type in POOL_OPS and n.domain in STANDARD_DOMAINS and self.free(i) and not self.const_node[i]:
                self.new_group("pool", i, [i])
        # the rest: runs of connected nodes, then what follows or feeds them
        index = {k: i for i, k in enumerate(self.keys)}
        rest = [i for i in range(len(nodes)) if self.free(i) and not self.const_node[i] and self.keys[i] not in follows]
        parent = {i: i for i in rest}

        def root(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        shape_calc = [False] * len(nodes)      # Shape / Size and what computes from them only
        for i, n in enumerate(nodes):
            src = [self.producer.get(t) for t in n.input if t and t not in self.const]
            shape_calc[i] = n.op_type in _METADATA_OPS or (
                bool(src) and all(p is not None and shape_calc[p] for p in src))
        for i in rest:
            for t in nodes[i].input:
                p = self.producer.get(t)
                if p in parent and shape_calc[p] == shape_calc[i] and (shape_calc[i] or types.get(t) in _FLOAT_TYPES):
                    a, b = root(p), root(i)
                    parent[max(a, b)] = min(a, b)
        runs: dict[int, list[int]] = {}
        for i in rest:
            runs.setdefault(root(i), []).append(i)
        for first, members in sorted(runs.items()):
            self.new_group("other", first, members)
        changed = True
        while changed:
            changed = False
            for i in reversed(range(len(nodes))):
                if not self.free(i):
                    continue
                host = index.get(follows.get(self.keys[i], ""))
                if host is None or self.free(host):
                    host = next((c for t in nodes[i].output for c in self.consumers.get(t, []) if not self.free(c)),
                                None)
                if host is not None and not self.free(host):
                    self.claim(self.group_of[host], [i])
                    changed = True
        for i in range(len(nodes)):
            if self.free(i):
                self.new_group("other", i, [i])


def find_groups(model, shapes: Mapping[str, Sequence[int]] | None = None) -> list[QuantGroup]:
    """The quantization groups of *model* (a :class:`~calib.model.Model` or a path: the original
    model, whose nodes precision plans name, not :func:`calib.preparation.prepare`'s), every node in
    exactly one, in topological order of their anchors (see the module docs). *shapes*: concrete
    input shapes (input name -> dims; a dynamic batch dimension is taken as 1), needed for inputs
    with dynamic dimensions other than the batch; raises
    :class:`~calib.errors.InputMismatchError` when they are missing or do not fit."""
    model = load_model(model)
    inputs = input_shapes(model, shapes)
    try:
        follows = {} if hasattr(model, "preparation") else prepare(model).preparation.follows
    except CalibError:        # an opset preparation cannot raise: nothing is folded then
        follows = {}
    types = tensor_types(model.proto)
    gr = _Grouper(model)
    gr.run(follows, types)
    nodes = gr.nodes
    batch = next(iter(inputs.values()))[0] if inputs else 1
    needed = set()
    members = []
    for g in gr.groups:
        idx = sorted(g["nodes"])
        inside = {o for i in idx for o in nodes[i].output if o}
        reads = {t for i in idx if nodes[i].op_type not in _METADATA_OPS
                 for t in nodes[i].input if t and t not in inside and t not in gr.const}
        writes = {t for t in inside if t not in gr.const and (t in gr.outputs or any(
            gr.group_of[c] != gr.group_of[idx[0]] for c in gr.consumers.get(t, [])))}
        weights = {t for i in idx if not gr.const_node[i] for t in nodes[i].input
                   if t and t in gr.const and types.get(t) in _FLOAT_TYPES}
        members.append((g, idx, reads | writes, weights))
        needed |= reads | writes | weights
        for i in idx:       # node_macs reads the shapes of a weighted op's two inputs and its output
            if nodes[i].op_type in WEIGHTED_OPS:
                needed |= {*nodes[i].input[:2], nodes[i].output[0]}
    shape = _shapes_of(model, inputs, needed)

    def size(t):
        s = shape.get(t)
        return int(np.prod(s, dtype=np.int64)) if s is not None else 0

    def nbytes(t):
        et = types.get(t, 1)
        return size(t) * (4 if et in _FLOAT_TYPES else _ITEMSIZE.get(et, 4))

    order = sorted(range(len(members)), key=lambda k: members[k][0]["anchor"])
    taken: set[str] = set()
    out = []
    for pos, k in enumerate(order):
        g, idx, acts, weights = members[k]
        macs = sum(node_macs(nodes[i], shape) for i in idx)
        anchor = gr.keys[g["anchor"]]
        kind = g["kind"]
        quantizable = kind != "other"
        out.append(QuantGroup(id=unique_name(anchor, taken), kind=kind, nodes=tuple(gr.keys[i] for i in idx),
                              anchor=anchor, quantizable=quantizable, macs=int(macs // max(batch, 1)),
                              activation_bytes=int(sum(nbytes(t) for t in acts) // max(batch, 1)),
                              weight_count=int(sum(size(t) for t in weights if size(t) > 1)), order=pos))
    return out


def node_macs(node, shapes: Mapping[str, Sequence[int]]) -> int:
    """Multiply-accumulates of one Conv / ConvTranspose / Gemm / MatMul node at *shapes* (tensor ->
    dims; see the module docs); 0 for other ops or unknown shapes."""
    op = node.op_type
    if op not in WEIGHTED_OPS or len(node.input) < 2:
        return 0
    a, w, y = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
    if a is None or w is None or y is None:
        return 0
    if op == "Conv":
        return int(np.prod(y, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":
        return int(np.prod(a, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "Gemm":
        k = a[0] if attr(node, "transA", 0) else a[-1]
        return int(np.prod(y, dtype=np.int64) * k)
    return int(np.prod(y, dtype=np.int64) * a[-1])     # MatMul: the reduced dimension of A


def group_plan(groups: Sequence[QuantGroup], precisions: Mapping[str, str], *, default: str = "int8",
               comment: str | None = None) -> PrecisionPlan:
    """A :class:`~calib.plan.PrecisionPlan` giving every node of each group in *precisions*
    (group id -> ``int8`` / ``fp16`` / ``fp32``) its group's precision; groups not named, and
    groups at *default*, take *default*. Raises :class:`~calib.errors.PlanError` for an unknown
    group id or precision."""
    by_id = {g.id: g for g in groups}
    unknown = sorted(set(precisions) - set(by_id))
    if unknown:
        raise PlanError(f"precisions name unknown group(s) {', '.join(unknown[:5])}"
                        f"{'...' if len(unknown) > 5 else ''}")
    layers = {}
    for gid, p in precisions.items():
        if not isinstance(p, str) or p.lower() not in PRECISIONS:
            raise PlanError(f"group '{gid}': unknown precision {p!r} (expected one of {', '.join(PRECISIONS)})")
        if p.lower() != str(default).lower():
            layers.update({k: p.lower() for k in by_id[gid].nodes})
    return PrecisionPlan(layers, default=default, comment=comment)
