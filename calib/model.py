"""ONNX model layer: load, check, shape inference, hashing, I/O description.

This is the lowest layer that knows about models. It never runs a model (see
:mod:`calib.backends`) and never rewrites one (see :mod:`calib.qdq`).
"""
from __future__ import annotations

import collections
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelLoadError, first_line

# ONNX TensorProto element type -> NumPy dtype (only the types a model input/output uses)
_ONNX_TO_NP = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
    7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}

QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "QLinearAdd", "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat",
    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QGemm", "ConvInteger", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention",
})


def onnx_opset(proto) -> int:
    """The default-domain (ai.onnx) opset of a ModelProto, 0 if it declares none."""
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of a model input or output.

    ``shape`` holds ints for fixed dimensions and strings (the symbolic name, or
    ``"?"``) for dynamic ones.
    """

    name: str
    shape: tuple
    dtype: np.dtype

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_dynamic(self) -> bool:
        return any(not isinstance(d, int) for d in self.shape)

    @property
    def fixed_batch(self) -> int | None:
        """The batch dimension if it is fixed, else None."""
        if self.shape and isinstance(self.shape[0], int):
            return self.shape[0]
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": np.dtype(self.dtype).name}


def _value_info_to_tensor_info(vi) -> TensorInfo:
    tt = vi.type.tensor_type
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append("?")
    dtype = np.dtype(_ONNX_TO_NP.get(tt.elem_type, np.float32))
    return TensorInfo(vi.name, tuple(dims), dtype)


class Model:
    """A loaded ONNX model with the facts the rest of the toolkit asks about.

    Build with :meth:`Model.load` (a path) or :meth:`Model.from_proto`.
    """

    def __init__(self, proto, path: Path | None = None):
        import onnx  # noqa: F401  (keeps `import calib` light)

        self.proto = proto
        self.path = path
        self._bytes: bytes | None = None
        self._sha256: tuple[bytes, str] | None = None

    # -- construction -------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Load an ONNX file (external data too). Raises :class:`ModelLoadError`."""
        import onnx

        p = Path(path)
        if not p.exists():
            raise ModelLoadError(f"model file not found: {p}")
        if p.is_dir():
            raise ModelLoadError(f"model path is a folder, expected an .onnx file: {p}")
        try:
            proto = onnx.load(str(p), load_external_data=True)
        except onnx.checker.ValidationError as exc:   # external data through a link, or outside the folder
            reason = first_line(exc)
            raise ModelLoadError(f"cannot read {p}: its external data is refused: {reason}") from None
        except Exception as exc:  # protobuf DecodeError, missing external data, ...
            reason = first_line(exc)
            raise ModelLoadError(f"cannot read {p} as an ONNX model (truncated or not ONNX?): {reason}") from None
        if len(proto.graph.node) == 0 or not proto.graph.output:
            raise ModelLoadError(f"{p} is not an ONNX model with a graph (no nodes or no outputs)")
        return cls(proto, p)

    @classmethod
    def from_proto(cls, proto, path: Path | None = None) -> Model:
        return cls(proto, path)

    # -- identity -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.stem if self.path else (self.proto.graph.name or "model")

    def serialize(self) -> bytes:
        """The model as bytes (cached; ONNX Runtime sessions are built from these)."""
        if self._bytes is None:
            self._bytes = self.proto.SerializeToString()
        return self._bytes

    @property
    def sha256(self) -> str:
        """Content hash of the serialized model (independent of file name and location); cached
        with the bytes it is computed from."""
        if self._sha256 is None or self._sha256[0] is not self.serialize():
            self._sha256 = (self.serialize(), hashlib.sha256(self.serialize()).hexdigest())
        return self._sha256[1]

    # -- description --------------------------------------------------------
    @property
    def initializer_names(self) -> set[str]:
        return {i.name for i in self.proto.graph.initializer}

    @property
    def inputs(self) -> list[TensorInfo]:
        """Real inputs (graph inputs that are not initializers)."""
        inits = self.initializer_names
        return [_value_info_to_tensor_info(i) for i in self.proto.graph.input if i.name not in inits]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [_value_info_to_tensor_info(o) for o in self.proto.graph.output]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size runs must be split to: the smallest fixed batch dimension among the
        inputs, or None when every input's batch dimension is dynamic."""
        fixed = [t.fixed_batch for t in self.inputs if t.fixed_batch is not None]
        return min(fixed) if fixed else None

    @property
    def opset(self) -> int:
        return onnx_opset(self.proto)

    @property
    def nodes(self) -> list:
        """Nodes in topological order (ONNX requires graphs to be sorted)."""
        return list(self.proto.graph.node)

    def op_counts(self) -> dict[str, int]:
        c = collections.Counter(n.op_type for n in self.proto.graph.node)
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    def custom_domains(self) -> list[str]:
        """Operator domains used by nodes that are neither ONNX nor ONNX Runtime's own."""
        known = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                 "ai.onnx.training", "ai.onnx.preview.training", "com.microsoft.experimental"}
        return sorted({n.domain for n in self.proto.graph.node if n.domain not in known})

    @property
    def is_quantized(self) -> bool:
        """True if the model already holds Q/DQ or QLinear*/integer ops."""
        return any(n.op_type in QUANT_OPS for n in self.proto.graph.node)

    @property
    def is_fp16(self) -> bool:
        """True if any input, output or floating initializer is float16."""
        if any(t.dtype == np.float16 for t in self.inputs + self.outputs):
            return True
        return any(i.data_type == 10 for i in self.proto.graph.initializer)

    def activation_tensors(self) -> list[str]:
        """Names of all tensors produced by nodes, in topological order (no initializers,
        no Constant outputs)."""
        out: list[str] = []
        seen: set[str] = set()
        for n in self.proto.graph.node:
            if n.op_type == "Constant":
                continue
            for o in n.output:
                if o and o not in seen:
                    seen.add(o)
                    out.append(o)
        return out

    def constant_tensors(self) -> set[str]:
        """Initializers plus outputs of Constant nodes."""
        s = set(self.initializer_names)
        for n in self.proto.graph.node:
            if n.op_type == "Constant":
                s.update(o for o in n.output if o)
        return s

    def producers(self) -> dict[str, object]:
        """tensor name -> node producing it."""
        return {o: n for n in self.proto.graph.node for o in n.output if o}

    def consumers(self) -> dict[str, list]:
        """tensor name -> nodes consuming it."""
        d: dict[str, list] = collections.defaultdict(list)
        for n in self.proto.graph.node:
            for i in n.input:
                if i:
                    d[i].append(n)
        return dict(d)

    def initializer(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        for i in self.proto.graph.initializer:
            if i.name == name:
                return numpy_helper.to_array(i)
        for n in self.proto.graph.node:
            if n.op_type == "Constant" and n.output and n.output[0] == name:
                for a in n.attribute:
                    if a.name == "value":
                        return numpy_helper.to_array(a.t)
        return None

    # -- checking -----------------------------------------------------------
    def check(self) -> None:
        """Run the ONNX checker; raise :class:`ModelLoadError` with its first line."""
        import onnx

        try:
            if self.proto.ByteSize() < 2_000_000_000:
                onnx.checker.check_model(self.proto)
            elif self.path is not None:
                onnx.checker.check_model(str(self.path))
        except Exception as exc:
            raise ModelLoadError(f"{self.name}: ONNX checker: {str(exc).splitlines()[0]}") from None

    def infer_shapes(self) -> Model:
        """Return a copy with inferred shapes for intermediate tensors (best effort)."""
        import onnx

        try:
            proto = onnx.shape_inference.infer_shapes(self.proto)
        except Exception:
            proto = self.proto
        return Model(proto, self.path)

    def describe(self) -> dict:
        """A JSON-able summary (used by `calib inspect --json` and provenance)."""
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "opset": self.opset,
            "ir_version": int(self.proto.ir_version),
            "producer": f"{self.proto.producer_name} {self.proto.producer_version}".strip(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "nodes": len(self.proto.graph.node),
            "op_counts": self.op_counts(),
            "quantized": self.is_quantized,
            "fp16": self.is_fp16,
            "custom_domains": self.custom_domains(),
        }


def load_model(model: str | os.PathLike | Model) -> Model:
    """Accept a path or a :class:`Model` and return a :class:`Model`."""
    return model if isinstance(model, Model) else Model.load(model)
