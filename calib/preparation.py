"""Preparation: the exact float-graph simplifications that Q/DQ placement and smoothing start from.

``prepare(model)`` copies the model and, with the passes of :mod:`calib.graph`:

1. raises the default-domain opset to :data:`MIN_OPSET` (13) where it is lower (per-channel
   Q/DQ needs it; ``onnx.version_converter``);
2. removes Identity and inference Dropout nodes;
3. folds constant zero Pads into the following Conv's ``pads``;
4. folds a BatchNormalization after a Conv into the Conv's weights and bias (so weights are
   quantized as they will be used);
5. drops what became dead.

The result computes the same function (up to float rounding of the BatchNorm fold). It carries a
:class:`Preparation` record, so :func:`calib.qdq.quantize_model`, :func:`calib.qdq.required_tensors`
and :func:`calib.smooth.find_sites` take it without preparing it again, with the same result (and
report) as for the original model. Placement and smoothing live above this module: both find
their sites on the prepared graph, and :mod:`calib.qdq` applies smoothing before placement.

Precision plans name the original nodes (:func:`calib.plan.node_key`). A node removed here
*follows* a node that remains (:attr:`Preparation.follows`): a BatchNorm or a zero Pad the Conv
it was folded into, an Identity / Dropout the node that reads its output, a constant that only
fed removed nodes the node those follow. :meth:`Preparation.plan` turns a plan on the original
nodes into one on the prepared graph: entries of removed nodes are dropped (they take the
precision of the node they follow), and a node whose key changed (an unnamed Conv takes its
BatchNorm's output, hence its ``node_of_<output>`` key) keeps its entry under the new key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import QuantizationError
from .graph import Graph, fold_batchnorm, fold_pads, remove_identities, upgrade_opset
from .model import Model, load_model, onnx_opset
from .plan import PrecisionPlan, node_key

MIN_OPSET = 13
_TAG = "calib.preparation:"


@dataclass(frozen=True)
class Preparation:
    """What :func:`prepare` did to a model (``prepare(model).preparation``)."""

    name: str                    # the original model's name, for messages
    opset_before: int
    folded: tuple[str, ...]      # nodes removed or folded
    node_keys: frozenset[str]    # the original nodes, which precision plans name
    # removed node (plan key) -> the original plan key of the remaining node it follows
    follows: dict[str, str] = field(default_factory=dict, compare=False)
    # original plan key -> plan key in the prepared graph, for remaining nodes whose key changed
    renamed: dict[str, str] = field(default_factory=dict, compare=False)

    def plan(self, plan: PrecisionPlan | None) -> PrecisionPlan | None:
        """*plan* (on the original nodes) for the prepared graph: see the module docs."""
        if plan is None or not (self.follows or self.renamed):
            return plan
        layers = {self.renamed.get(k, k): v for k, v in plan.layers.items() if k not in self.follows}
        return PrecisionPlan(layers, default=plan.default, comment=plan.comment)


def _followed(nodes: list, kept: set[int], final_producer: dict[str, int]) -> dict[int, int]:
    """Removed node index -> index of the remaining node it follows (see the module docs):
    the node that now writes its output (a folded BatchNorm), else the first node reading its
    output (itself followed if removed), else the producer of its first input."""
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            if t:
                consumers.setdefault(t, []).append(i)
        for t in n.output:
            if t:
                producer[t] = i
    out: dict[int, int] = {}

    def host(i: int, seen: frozenset) -> int | None:
        if i in kept:
            return i
        if i in out:
            return out[i]
        if i in seen:
            return None
        seen = seen | {i}
        n = nodes[i]
        for t in n.output:
            if t in final_producer:
                return final_producer[t]
        for t in n.output:
            for c in consumers.get(t, []):
                h = host(c, seen)
                if h is not None:
                    return h
        if n.input and n.input[0] in producer:
            return host(producer[n.input[0]], seen)
        return None

    for i in range(len(nodes)):
        if i not in kept:
            h = host(i, frozenset())
            if h is not None:
                out[i] = h
    return out


def prepared_proto(model: Model):
    """``(proto, preparation)``: a prepared copy of *model*'s ModelProto (free to edit) and its
    :class:`Preparation`; a model from :func:`prepare` is only copied. Raises
    :class:`~calib.errors.QuantizationError` when the opset cannot be raised."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    done = getattr(model, "preparation", None)
    if isinstance(done, Preparation):
        return proto, done
    try:
        proto = upgrade_opset(proto, MIN_OPSET)
    except ValueError as exc:
        raise QuantizationError(f"{model.name}: cannot raise opset {onnx_opset(proto)} to {MIN_OPSET} "
                                f"for Q/DQ: {exc}") from None
    G = Graph(proto)
    # the passes edit nodes in place and drop some: a temporary doc_string tag tells which
    # original node each remaining one is (restored below, so the bytes are unchanged)
    before = [onnx.NodeProto() for _ in G.g.node]
    saved = []
    for i, (copy, n) in enumerate(zip(before, G.g.node, strict=True)):
        copy.CopyFrom(n)
        saved.append(n.doc_string if n.HasField("doc_string") else None)
        n.doc_string = f"{_TAG}{i}"
    folded = remove_identities(G)
    folded += fold_pads(G)
    folded += fold_batchnorm(G)
    G.remove_dead()
    index = {}
    for n in G.g.node:
        i = int(n.doc_string[len(_TAG):])
        index[i] = n
        if saved[i] is None:
            n.ClearField("doc_string")
        else:
            n.doc_string = saved[i]
    final_producer = {t: i for i, n in index.items() for t in n.output if t}
    keys = [node_key(n) for n in before]
    renamed = {keys[i]: node_key(n) for i, n in index.items() if node_key(n) != keys[i]}
    follows = {keys[i]: keys[h] for i, h in _followed(before, set(index), final_producer).items()}
    return proto, Preparation(model.name, model.opset, tuple(folded),
                              frozenset(node_key(n) for n in model.proto.graph.node), follows, renamed)


def prepare(model) -> Model:
    """The float model as :func:`calib.qdq.quantize_model` rewrites it before placing Q/DQ (see
    the module docs); its ``preparation`` attribute is a :class:`Preparation`."""
    model = load_model(model)
    proto, done = prepared_proto(model)
    out = Model.from_proto(proto)
    out.preparation = done
    return out
