"""TEMPORARY stand-in for calib.tuning.groups / calib.tuning.latency (the groups helper's modules),
used by the search tests until their code lands. Installed with ``install()`` into sys.modules."""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass

from calib.plan import PrecisionPlan, node_key

WEIGHTED = {"Conv", "Gemm", "MatMul", "ConvTranspose"}
FOLLOW = {"BatchNormalization", "Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Add"}
POOL = {"AveragePool", "GlobalAveragePool", "MaxPool"}


@dataclass(frozen=True)
class QuantGroup:
    id: str
    kind: str
    nodes: tuple
    anchor: str
    quantizable: bool
    macs: int
    activation_bytes: int
    weight_count: int
    order: int


def find_groups(model, shapes=None):
    import numpy as np

    nodes = [n for n in model.nodes]
    consumers = model.consumers()
    inits = {i.name: i for i in model.proto.graph.initializer}
    taken, groups = set(), []
    for n in nodes:
        k = node_key(n)
        if k in taken:
            continue
        members = [k]
        taken.add(k)
        if n.op_type in WEIGHTED:
            cur = n
            while True:
                cs = consumers.get(cur.output[0], [])
                if len(cs) != 1 or cs[0].op_type not in FOLLOW or node_key(cs[0]) in taken:
                    break
                cur = cs[0]
                members.append(node_key(cur))
                taken.add(node_key(cur))
            w = inits.get(n.input[1]) if len(n.input) > 1 else None
            wc = int(np.prod(w.dims)) if w is not None else 0
            kind = {"Conv": "conv", "Gemm": "gemm"}.get(n.op_type, "matmul")
            groups.append(QuantGroup(k, kind, tuple(members), k, True, wc * 100 + 1, 1000, wc, len(groups)))
        else:
            groups.append(QuantGroup(k, "pool" if n.op_type in POOL else "other", (k,), k, n.op_type in POOL,
                                     0, 100, 0, len(groups)))
    return groups


def group_plan(groups, precisions, *, default="int8", comment=None):
    layers = {}
    for g in groups:
        p = precisions.get(g.id)
        if p is not None and p != default:
            for k in g.nodes:
                layers[k] = p
    return PrecisionPlan(layers, default=default, comment=comment)


class LatencyModel:
    name = "standin"
    description = "stand-in: MACs over nominal throughput"

    def __init__(self, groups):
        self.groups = groups

    def group_latency(self, group, precision):
        rate = {"int8": 4e9, "fp16": 2e9, "fp32": 1e9}[precision]
        return group.macs / rate + 1e-6

    def predict(self, groups, precisions):
        return sum(self.group_latency(g, precisions.get(g.id, "int8") if g.quantizable else "fp32") for g in groups)


def latency_model(spec, model, groups, **kw):
    return LatencyModel(groups)


def install():
    for name, attrs in (("calib.tuning.groups", ("QuantGroup", "find_groups", "group_plan")),
                        ("calib.tuning.latency", ("LatencyModel", "latency_model"))):
        try:
            __import__(name)
            continue
        except ImportError:
            pass
        mod = types.ModuleType(name)
        for a in attrs:
            setattr(mod, a, globals()[a])
        sys.modules[name] = mod
        setattr(sys.modules["calib.tuning"], name.rsplit(".", 1)[1], mod)
