"""ONNX graph toolkit: a mutable graph view, constant evaluation and exact simplifications.

Shared base layer: used by the artifact writers (:mod:`calib.preparation`, :mod:`calib.qdq`,
:mod:`calib.smooth`) and by collection (:mod:`calib.collect`); it imports nothing of calib but
:mod:`calib.errors`, :mod:`calib.utils` and :mod:`calib.model`. ``onnx`` is imported inside the
functions, so importing this module stays light.

* :class:`Graph` wraps a ``ModelProto`` to edit it in place, with the indexes passes need
  (producer and consumers of each tensor, initializers, Constant outputs, decoded constants).
  A pass that edits ``graph.g`` calls :meth:`Graph.refresh` before it reads an index again.
* :class:`ConstEval` gives the value of any tensor that depends on constants only (initializers,
  Constant nodes and standard-domain nodes fed by them), evaluated with ONNX's reference
  evaluator; :func:`clip_bounds` reads the bounds of a Relu / Clip with it.
* The passes :func:`remove_identities`, :func:`fold_pads` and :func:`fold_batchnorm` rewrite a
  graph exactly (the same function, up to float rounding of the BatchNorm fold) and return the
  names of the nodes they removed; :func:`upgrade_opset` converts a model to a newer opset.
* Small helpers: :func:`attr` / :func:`set_attr` (node attributes), :func:`unique_name`,
  :func:`toposort`, :func:`reduce_node`, :func:`weight_axis`, :func:`tensor_types`,
  :func:`concrete_shapes` (shape inference for given input shapes).

Every function is deterministic: the same graph gives the same names and the same bytes.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from .model import onnx_opset

STANDARD_DOMAINS = ("", "ai.onnx")
# ops with a constant weight whose output channels have an axis (:func:`weight_axis`)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# --------------------------------------------------------------------------- attributes and names
def attr(node, name: str, default=None):
    """The value of attribute *name* of *node* (a NodeProto), else *default*."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node, name: str, value) -> None:
    """Set attribute *name* of *node* to *value* (replacing it; appended last)."""
    from onnx import helper

    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def unique_name(name: str, taken: set[str]) -> str:
    """*name*, or ``<name>_1``, ``<name>_2``, ... : the first not in *taken*, which it is added to."""
    out, k = name, 1
    while out in taken:
        out = f"{name}_{k}"
        k += 1
    taken.add(out)
    return out


def toposort(nodes: list, available: Iterable[str]) -> list:
    """*nodes* in a stable topological order: the given order wherever it is already valid.

    A node waits only for inputs produced by another node of *nodes*; anything else (*available*
    tensors, Constant outputs, unknown names) counts as present. A cycle keeps the rest in the
    given order rather than looping.
    """
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


def subgraph_inputs(node) -> set[str]:
    """Every tensor name the subgraphs of *node* (If, Loop, Scan bodies) read, names of the outer
    graphs included (an empty set for a node without subgraphs)."""
    out: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                out.update(n.input)
                out |= subgraph_inputs(n)
    return out


def pruned(proto, outputs: Sequence[str]):
    """A copy of the ModelProto *proto* whose graph outputs are *outputs* (in order; a name that is
    not a declared output gets an empty value_info), with only the nodes, initializers and
    value_info those outputs need (:meth:`Graph.remove_dead`)."""
    import onnx
    import onnx.helper as oh

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    declared = {o.name: o for o in proto.graph.output}
    del out.graph.output[:]
    out.graph.output.extend(declared[o] if o in declared else oh.make_empty_tensor_value_info(o)
                            for o in dict.fromkeys(outputs))
    Graph(out).remove_dead()
    return out


# --------------------------------------------------------------------------- graph view
class Graph:
    """Mutable view of a ModelProto's graph with the indexes the passes need.

    ``proto`` is the model and ``g`` its graph, edited in place. After :meth:`refresh`:
    ``inits`` (initializer name -> TensorProto), ``const_nodes`` (Constant output -> node),
    ``producer`` (tensor -> node), ``consumers`` (tensor -> nodes, in graph order),
    ``graph_inputs`` (real inputs, initializers excluded) and ``graph_outputs`` (names).
    ``arrays`` caches decoded constants (see :meth:`const`).
    """

    def __init__(self, proto):
        self.proto = proto
        self.g = proto.graph
        self.arrays: dict[str, np.ndarray] = {}   # constant tensor -> its value, decoded once
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the indexes from ``g`` (call after editing nodes, initializers or I/O)."""
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

    @property
    def opset(self) -> int:
        """The default-domain opset."""
        return onnx_opset(self.proto)

    def is_const(self, name: str) -> bool:
        """Whether *name* is an initializer or the output of a Constant node."""
        return name in self.inits or name in self.const_nodes

    def const(self, name: str) -> np.ndarray | None:
        """Value of initializer or Constant output *name* (read-only: decoded once and shared
        by every pass over this graph), else None. A Constant node holding its value in another
        attribute than ``value`` gives None here; :class:`ConstEval` evaluates it."""
        v = self.arrays.get(name)
        if v is not None:
            return v
        from onnx import numpy_helper

        if name in self.inits:
            v = numpy_helper.to_array(self.inits[name])
        elif name in self.const_nodes:
            v = next((numpy_helper.to_array(a.t) for a in self.const_nodes[name].attribute if a.name == "value"),
                     None)
        if v is not None:
            v.flags.writeable = False
            self.arrays[name] = v
        return v

    def add_initializer(self, array: np.ndarray, name: str) -> str:
        """Append *array* as initializer *name* (not indexed until :meth:`refresh`); returns *name*."""
        from onnx import numpy_helper

        self.g.initializer.append(numpy_helper.from_array(array, name))
        return name

    def all_names(self) -> set[str]:
        """Every tensor and node name in use (to pick new ones with :func:`unique_name`)."""
        s = set(self.inits) | {i.name for i in self.g.input} | {o.name for o in self.g.output}
        for n in self.g.node:
            s.update(n.input)
            s.update(n.output)
            if n.name:
                s.add(n.name)
        return s

    def remove_dead(self) -> None:
        """Drop nodes whose outputs nobody uses, then unused initializers (and their graph
        inputs) and the value_info of tensors that no longer exist; refreshes."""
        # live nodes: those a graph output needs, found once backwards from the outputs (one copy
        # of the node list at most, whatever the order of the nodes)
        producer = {o: k for k, n in enumerate(self.g.node) for o in n.output if o}
        live: set[int] = set()
        stack = [producer[o] for o in self.graph_outputs if o in producer]
        while stack:
            k = stack.pop()
            if k not in live:
                live.add(k)
                n = self.g.node[k]
                stack.extend(producer[i] for i in [*n.input, *subgraph_inputs(n)] if i in producer)
        if len(live) < len(self.g.node):
            keep = [n for k, n in enumerate(self.g.node) if k in live]
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
        self.prune_value_info(keep_inputs=True)
        self.refresh()
        # a later pass may give a removed constant's name to a new one
        self.arrays = {k: v for k, v in self.arrays.items() if k in self.inits or k in self.const_nodes}

    def prune_value_info(self, keep_inputs: bool = False) -> None:
        """Keep the value_info of node outputs only (and of graph inputs with *keep_inputs*)."""
        names = {o for n in self.g.node for o in n.output}
        if keep_inputs:
            names |= {i.name for i in self.g.input}
        vi = [v for v in self.g.value_info if v.name in names]
        del self.g.value_info[:]
        self.g.value_info.extend(vi)


# --------------------------------------------------------------------------- constants
class ConstEval:
    """Values of tensors that depend on constants only, each computed once.

    :meth:`value` returns a constant's value (:meth:`Graph.const`) or evaluates the subgraph
    that computes the tensor (at most *limit* nodes, standard domain only, no graph input
    among its ancestors) with ``onnx.reference.ReferenceEvaluator``; otherwise, or when the
    evaluation fails, None. Results are cached by name: the graph may change while an evaluator
    is in use, but not the constant subgraphs it has read.
    """

    def __init__(self, graph: Graph, limit: int = 200):
        self.graph = graph
        self.limit = limit
        self.cache: dict[str, np.ndarray | None] = {}

    def value(self, name: str) -> np.ndarray | None:
        if name not in self.cache:
            v = self.graph.const(name)
            self.cache[name] = v if v is not None else self._evaluate(name)
        return self.cache[name]

    def _evaluate(self, name: str) -> np.ndarray | None:
        G = self.graph
        if name not in G.producer:
            return None
        # every ancestor must be a constant: no graph inputs, no custom domains
        nodes, todo, seen, ids = [], [name], set(), set()
        while todo:
            t = todo.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in G.inits:
                continue
            n = G.producer.get(t)
            if n is None or n.domain not in STANDARD_DOMAINS or len(nodes) >= self.limit:
                return None
            if id(n) not in ids:
                ids.add(id(n))
                nodes.append(n)
            todo.extend(n.input)
        try:
            import onnx.helper as oh
            from onnx.reference import ReferenceEvaluator

            inits = [G.inits[t] for t in sorted(seen) if t in G.inits]
            g = oh.make_graph(toposort(nodes[::-1], []), "const", [], [oh.make_empty_tensor_value_info(name)],
                              initializer=inits)
            m = oh.make_model(g, opset_imports=list(G.proto.opset_import), ir_version=G.proto.ir_version)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (v,) = ReferenceEvaluator(m).run(None, {})
            return np.asarray(v)
        except Exception:       # anything unusual: simply not a known constant
            return None


def clip_bounds(node, consts: ConstEval) -> tuple[float, float] | None:
    """``(lo, hi)`` of a Relu (``(0, inf)``) or of a Clip whose given bounds are constant float
    scalars (a bound not given is ``-inf`` / ``inf``; attributes before opset 11), else None."""
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    if consts.graph.opset < 11:
        return float(attr(node, "min", -math.inf)), float(attr(node, "max", math.inf))
    bounds = []
    for i, default in ((1, -math.inf), (2, math.inf)):
        if len(node.input) > i and node.input[i]:
            v = consts.value(node.input[i])
            if v is None or v.size != 1 or v.dtype.kind != "f":
                return None
            bounds.append(float(np.asarray(v, np.float32).reshape(-1)[0]))
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


# --------------------------------------------------------------------------- op facts
def weight_axis(G: Graph, node, idx: int) -> int | None:
    """Output-channel axis of the constant weight at input *idx* of a weighted op (Conv 0,
    ConvTranspose 1, Gemm 0 with ``transB`` else 1, MatMul with a constant B its last axis),
    or None if that input is not such a weight."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and idx == 1:
        return 0 if op == "Conv" else 1
    if op == "Gemm" and idx == 1:
        return 0 if attr(node, "transB", 0) else 1
    if op == "MatMul" and idx == 1:
        w = G.const(node.input[1])
        return (w.ndim - 1) if w is not None and w.ndim >= 2 else None
    return None


def reduce_node(op: str, x: str, axes: list[int], out: str, opset: int, extra_inits: list,
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


def tensor_types(proto) -> dict[str, int]:
    """ONNX element type of every tensor shape inference can tell (initializers, Constant
    outputs and graph inputs / outputs included); 0 (undefined) types are left out."""
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


def concrete_shapes(proto, input_shapes) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor that ONNX shape inference (with data propagation) can tell when the
    graph inputs have the concrete shapes *input_shapes* (input name -> ints; inputs not named
    keep their declared shape). Initializers, Constant outputs and graph inputs included; a
    tensor with a dimension left unknown is left out. *proto* is not changed."""
    import onnx

    p = onnx.ModelProto()
    p.CopyFrom(proto)
    for vi in p.graph.input:
        if vi.name in input_shapes:
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for d in input_shapes[vi.name]:
                shape.dim.add().dim_value = int(d)
    del p.graph.value_info[:]
    try:
        p = onnx.shape_inference.infer_shapes(p, data_prop=True)
    except Exception:
        pass
    out: dict[str, tuple[int, ...]] = {}
    for vi in list(p.graph.input) + list(p.graph.value_info) + list(p.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for i in p.graph.initializer:
        out[i.name] = tuple(int(d) for d in i.dims)
    for n in p.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = tuple(int(d) for d in a.t.dims)
    return out


# --------------------------------------------------------------------------- passes
def upgrade_opset(proto, version: int):
    """*proto* itself if its default-domain opset is at least *version*, else a converted copy
    (``onnx.version_converter``; IR version raised to 7 where lower; checked by the ONNX
    checker). Raises ValueError holding the converter's last message line when it cannot."""
    import onnx
    from onnx import version_converter

    if onnx_opset(proto) >= version:
        return proto
    try:
        new = version_converter.convert_version(proto, version)
    except Exception as exc:  # the converter raises RuntimeError/ValidationError with long texts
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(msg) from None
    if new.ir_version < 7:
        new.ir_version = 7
    onnx.checker.check_model(new)
    return new


def remove_identities(G: Graph) -> list[str]:
    """Remove Identity and inference Dropout (mask unused, no ``training_mode`` input) nodes whose
    output is not a graph output; their consumers read the input instead."""
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


def fold_pads(G: Graph) -> list[str]:
    """Fold each Pad (mode constant, value 0, constant non-negative pads on the spatial axes
    only, no ``axes`` input) into the ``pads`` of the one Conv that consumes it (``auto_pad``
    NOTSET), unless the Pad's output is a graph output."""
    folded = []
    consts = ConstEval(G)
    for pad in list(G.g.node):
        if pad.op_type != "Pad":
            continue
        cons = G.consumers.get(pad.output[0], [])
        if len(cons) != 1 or cons[0].op_type != "Conv" or cons[0].input[0] != pad.output[0]:
            continue
        if pad.output[0] in G.graph_outputs:
            continue
        conv = cons[0]
        mode = attr(pad, "mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant" or attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        if len(pad.input) > 1 and pad.input[1]:
            pads = consts.value(pad.input[1])
        else:
            pads = attr(pad, "pads")
        if pads is None:
            continue
        pads = [int(p) for p in np.asarray(pads).ravel()]
        if len(pad.input) > 2 and pad.input[2]:
            cv = consts.value(pad.input[2])
            if cv is None or np.any(np.asarray(cv) != 0):
                continue
        elif attr(pad, "value", 0.0) != 0.0:
            continue
        if len(pad.input) > 3 and pad.input[3]:
            continue  # axes input: not handled
        r = len(pads) // 2
        if r < 3 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[r] or pads[r + 1]:
            continue
        sp = r - 2
        old = list(attr(conv, "pads", [0] * (2 * sp)))
        new = [old[k] + pads[2 + k] for k in range(sp)] + [old[sp + k] + pads[r + 2 + k] for k in range(sp)]
        set_attr(conv, "pads", new)
        conv.input[0] = pad.input[0]
        G.g.node.remove(pad)
        folded.append(pad.name or pad.output[0])
        G.refresh()
    return folded


def fold_batchnorm(G: Graph) -> list[str]:
    """Fold each inference BatchNormalization (constant parameters, one output) into the Conv
    that only feeds it, when the Conv's weight (and bias) are constants used by it alone: the
    weights become ``w * k`` and the bias ``(b - mean) * k + beta`` with
    ``k = gamma / sqrt(var + epsilon)`` (in float64, stored as float32, new initializers)."""
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
        eps = float(attr(bn, "epsilon", 1e-5))
        k = gamma / np.sqrt(var + eps)
        w2 = (w.astype(np.float64) * k.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        b2 = ((b.astype(np.float64) - mean) * k + beta).astype(np.float32)
        wn = G.add_initializer(w2, unique_name(f"{conv.input[1]}_bnfolded", taken))
        bname = G.add_initializer(b2, unique_name(f"{conv.name or conv.output[0]}_bnfolded_bias", taken))
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
