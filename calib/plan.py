"""Precision plans: a versioned, human-editable JSON file choosing a precision per ONNX node.

```json
{
  "comment": "keep the classifier in float",
  "default": "int8",
  "format": "calib-precision-plan",
  "layers": {"/_fc/Gemm": "fp32", "/_blocks.0/_project_conv/Conv": "fp16"},
  "version": 1
}
```

Keys of ``layers`` are ONNX node names; values are ``fp32``, ``fp16`` or ``int8``. Nodes not
named take ``default``. :mod:`calib.qdq` turns a plan into graph edits (no Q/DQ for ``fp32``,
Cast nodes around ``fp16``, Q/DQ for ``int8``); builders use :meth:`PrecisionPlan.match` to
report plan entries that name no node of the model.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PlanError
from .utils import atomic_write_text

FORMAT = "calib-precision-plan"
VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
_KEYS = {"format", "version", "default", "layers", "comment"}


def _check_precision(value, where: str) -> str:
    if not isinstance(value, str) or value.lower() not in PRECISIONS:
        raise PlanError(f"{where}: unknown precision {value!r} (expected one of {', '.join(PRECISIONS)})")
    return value.lower()


def node_key(node) -> str:
    """The name a plan uses for an ONNX node (a NodeProto): its name, or ``node_of_<first output>``
    for an unnamed node, which is how TensorRT's ONNX parser names the layer, so one plan entry
    means the same node in the Q/DQ rewrite and in a TensorRT build."""
    if not node.name and len(node.output):
        return "node_of_" + node.output[0]
    return node.name


@dataclass
class PrecisionPlan:
    """Node name -> precision, with a default for every node not named."""

    layers: dict[str, str] = field(default_factory=dict)
    default: str = "int8"
    comment: str | None = None

    def __post_init__(self):
        self.default = _check_precision(self.default, "plan default")
        if not isinstance(self.layers, Mapping):
            raise PlanError(f"plan layers must be an object of node name -> precision, "
                            f"got {type(self.layers).__name__}")
        layers = {}
        for k, v in self.layers.items():
            if not isinstance(k, str) or not k:
                raise PlanError(f"plan layer names must be non-empty strings, got {k!r}")
            layers[k] = _check_precision(v, f"plan layer '{k}'")
        self.layers = layers
        if self.comment is not None and not isinstance(self.comment, str):
            raise PlanError(f"plan comment must be a string, got {type(self.comment).__name__}")

    # -- queries ------------------------------------------------------------
    def precision_for(self, node_name: str) -> str:
        """The precision of *node_name*: its entry, else the default."""
        return self.layers.get(node_name, self.default)

    def match(self, node_names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """Return ``(matched, unmatched)``: plan entries naming a node in *node_names*
        (name -> precision), and the sorted plan entries that name no node."""
        names = set(node_names)
        matched = {k: v for k, v in sorted(self.layers.items()) if k in names}
        unmatched = sorted(k for k in self.layers if k not in names)
        return matched, unmatched

    # -- (de)serialisation --------------------------------------------------
    def to_dict(self) -> dict:
        d = {"format": FORMAT, "version": VERSION, "default": self.default,
             "layers": dict(sorted(self.layers.items()))}
        if self.comment is not None:
            d["comment"] = self.comment
        return d

    def dumps(self) -> str:
        """Deterministic JSON: sorted keys, indent 2, trailing newline."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d, source: str = "plan") -> PrecisionPlan:
        if not isinstance(d, dict):
            raise PlanError(f"{source}: a precision plan must be a JSON object, got {type(d).__name__}")
        fmt = d.get("format")
        if fmt != FORMAT:
            raise PlanError(f"{source}: not a precision plan (format is {fmt!r}, expected {FORMAT!r})")
        ver = d.get("version")
        if ver != VERSION or isinstance(ver, bool):
            raise PlanError(f"{source}: unsupported precision plan version {ver!r} "
                            f"(this calib reads version {VERSION})")
        unknown = sorted(set(d) - _KEYS)
        if unknown:
            raise PlanError(f"{source}: unknown plan key(s) {', '.join(map(repr, unknown))} "
                            f"(allowed: {', '.join(sorted(_KEYS))})")
        if "layers" in d and not isinstance(d["layers"], dict):
            raise PlanError(f"{source}: 'layers' must be an object of node name -> precision")
        try:
            return cls(layers=dict(d.get("layers") or {}), default=d.get("default", "int8"),
                       comment=d.get("comment"))
        except PlanError as exc:
            raise PlanError(f"{source}: {exc}") from None

    @classmethod
    def loads(cls, text: str, source: str = "plan") -> PrecisionPlan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        return cls.from_dict(d, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrecisionPlan:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PlanError(f"precision plan not found: {p}") from None
        except IsADirectoryError:
            raise PlanError(f"precision plan path is a folder: {p}") from None
        except UnicodeDecodeError:
            raise PlanError(f"{p}: precision plan is not UTF-8 text") from None
        return cls.loads(text, str(p))

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        return atomic_write_text(path, self.dumps(), overwrite=overwrite)


def load_plan(plan: PrecisionPlan | str | os.PathLike | Mapping | None) -> PrecisionPlan | None:
    """Accept a plan, a path to one, a dict, or None."""
    if plan is None or isinstance(plan, PrecisionPlan):
        return plan
    if isinstance(plan, Mapping):
        return PrecisionPlan.from_dict(dict(plan))
    return PrecisionPlan.load(plan)
