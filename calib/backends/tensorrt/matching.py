"""Precision plan -> TensorRT layers, in pure Python (no TensorRT needed to test it).

TensorRT's ONNX parser names each layer it creates for an ONNX node after that node
(``getNodeName``: the node's name, or ``node_of_<first output>`` for an unnamed node) and makes
names unique by appending ``_<counter>`` when one node becomes several layers. Layers the
parser adds for its own needs (``ONNXTRT_*``) and unnamed ones (``(Unnamed Layer* 7) [Shuffle]``)
belong to no node and take the plan's default.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ...plan import node_key

# The name TensorRT's ONNX parser gives the layer(s) of a node is the plan's node key.
onnx_layer_basename = node_key


@dataclass
class LayerAssignment:
    """Result of :func:`assign_precisions`."""

    precisions: dict[str, str]                      # layer name -> fp32 | fp16 | int8
    origin: dict[str, str | None]                   # layer name -> plan entry / node it came from
    matched_entries: dict[str, list[str]] = field(default_factory=dict)  # plan entry -> layers
    unmatched_entries: list[str] = field(default_factory=list)           # plan entries with no layer

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for p in self.precisions.values():
            c[p] = c.get(p, 0) + 1
        return dict(sorted(c.items()))

    def report_lines(self) -> list[str]:
        lines = [f"precision plan: {len(self.matched_entries)} entr{'y' if len(self.matched_entries) == 1 else 'ies'} "
                 f"matched {sum(len(v) for v in self.matched_entries.values())} layer(s); layers by precision: "
                 + ", ".join(f"{k} {v}" for k, v in self.counts().items())]
        if self.unmatched_entries:
            shown = ", ".join(self.unmatched_entries[:10])
            more = f" (+{len(self.unmatched_entries) - 10} more)" if len(self.unmatched_entries) > 10 else ""
            lines.append(f"warning: {len(self.unmatched_entries)} plan entr"
                         f"{'y' if len(self.unmatched_entries) == 1 else 'ies'} matched no layer: {shown}{more}")
        return lines


def layer_origin(layer_name: str, node_names: Iterable[str]) -> str | None:
    """The ONNX node (parser base name) a TensorRT layer was made for, or None."""
    names = node_names if isinstance(node_names, (set, frozenset, dict)) else set(node_names)
    if layer_name in names:
        return layer_name
    m = re.match(r"^(.*)_(\d+)$", layer_name)
    while m:
        base = m.group(1)
        if base in names:
            return base
        m = re.match(r"^(.*)_(\d+)$", base)
    return None


def assign_precisions(layer_names: Sequence[str], node_names: Iterable[str], layers: Mapping[str, str],
                      default: str) -> LayerAssignment:
    """Give every layer a precision from a plan (``layers``: node name -> precision, ``default``).

    ``node_names`` are the parser base names of the model's ONNX nodes (see
    :func:`onnx_layer_basename`); layers that map to no node take ``default``. Plan entries that
    match no layer are reported (a typo, or a node TensorRT folded away such as a Constant).
    """
    names = set(node_names) | set(layers)
    precisions: dict[str, str] = {}
    origin: dict[str, str | None] = {}
    matched: dict[str, list[str]] = {}
    for ln in layer_names:
        node = layer_origin(ln, names)
        origin[ln] = node
        if node is not None and node in layers:
            precisions[ln] = layers[node]
            matched.setdefault(node, []).append(ln)
        else:
            precisions[ln] = default
    unmatched = sorted(k for k in layers if k not in matched)
    return LayerAssignment(precisions, origin, dict(sorted(matched.items())), unmatched)


def assign_plan(plan, layer_names: Sequence[str], model) -> LayerAssignment:
    """:func:`assign_precisions` for a :class:`calib.plan.PrecisionPlan` (or None: all default int8)
    and a :class:`calib.model.Model`."""
    node_names = [onnx_layer_basename(n) for n in model.nodes]
    if plan is None:
        return assign_precisions(layer_names, node_names, {}, "int8")
    return assign_precisions(layer_names, node_names, dict(plan.layers), plan.default)


def builder_precisions(assignment: LayerAssignment, fp16: bool = False) -> set[str]:
    """Which reduced precisions the builder must enable (``int8``/``fp16``) for an assignment."""
    used = set(assignment.precisions.values()) | ({"fp16"} if fp16 else set())
    return used & {"int8", "fp16"}
