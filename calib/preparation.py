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
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import QuantizationError
from .graph import Graph, fold_batchnorm, fold_pads, remove_identities, upgrade_opset
from .model import Model, load_model, onnx_opset
from .plan import node_key

MIN_OPSET = 13


@dataclass(frozen=True)
class Preparation:
    """What :func:`prepare` did to a model (``prepare(model).preparation``)."""

    name: str                    # the original model's name, for messages
    opset_before: int
    folded: tuple[str, ...]      # nodes removed or folded
    node_keys: frozenset[str]    # the original nodes, which precision plans name


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
    folded = remove_identities(G)
    folded += fold_pads(G)
    folded += fold_batchnorm(G)
    G.remove_dead()
    return proto, Preparation(model.name, model.opset, tuple(folded),
                              frozenset(node_key(n) for n in model.proto.graph.node))


def prepare(model) -> Model:
    """The float model as :func:`calib.qdq.quantize_model` rewrites it before placing Q/DQ (see
    the module docs); its ``preparation`` attribute is a :class:`Preparation`."""
    model = load_model(model)
    proto, done = prepared_proto(model)
    out = Model.from_proto(proto)
    out.preparation = done
    return out
