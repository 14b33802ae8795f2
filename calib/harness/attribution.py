"""Per-layer error attribution: SQNR of every intermediate tensor, candidate vs reference.

The reference (FP32) model and the candidate (Q/DQ INT8, mixed precision, FP16 ONNX)
are run with the same intermediate tensors captured. Names correspond because a
Q/DQ model keeps the float graph: a quantized tensor ``T`` becomes
``T -> QuantizeLinear -> DequantizeLinear -> T'`` and the consumers read ``T'``.
The candidate counterpart of ``T`` is found structurally (see :func:`map_tensors`:
the tensor a shared node reads in ``T``'s place, else the DequantizeLinear output of
a Q/DQ pair on ``T``, else ``T`` itself), which covers ONNX Runtime's quantizer naming
(``T_DequantizeLinear_Output``), calib.qdq's (``T_dequantized``) and any other.

Sums of ``ref**2`` and ``(cand - ref)**2`` per tensor are accumulated as captured
tensors arrive (float64 sums), so nothing but the running sums outlives a run; how many
tensors and samples one run captures is :mod:`calib.harness.capture`'s business.
SQNR(T) = 10 log10(sum ref^2 / sum (cand - ref)^2).

Masked entries. Additive attention masks hold ``-inf`` (or an exporter's stand-in:
``float32.min``, ``-1e30``, ``-1e9``) where a position is masked; summing their squares would
make the tensor's SQNR ``inf``/``nan`` (or a meaningless +700 dB), and the Softmax after it
would top the largest drops. An entry is *masked* when the reference holds a non-finite value
or one of magnitude at least :data:`MASK_MAGNITUDE` there; masked entries are left out of both
sums, whatever the candidate holds (after the Softmax both are 0), and counted
(``LayerError.masked``). An entry the reference holds finite (and unmasked) but the candidate
does not (an overflow, a NaN) is an error of infinite size: the tensor's SQNR is ``-inf`` and
``LayerError.nonfinite`` counts such entries -- a broken candidate must not look clean.

Smoothed tensors. :mod:`calib.smooth` divides channel ``c`` of a tensor ``X`` by ``s_c`` in
the Q/DQ model (and every tensor of the chain of elementwise ops that absorbs ``1/s``) and
multiplies its consumers' weights; the candidate's ``X`` is then compared with the reference
after multiplying it back by ``s`` (so a correctly quantized smoothed tensor compares equal in
float, and its quantization error is measured in the units its consumers see). The factors
come from the caller (``compare(..., smoothing=...)``, e.g. ``CalibrationResult.smoothing``)
or, by default, from the candidate itself: :func:`smoothing_factors` reads them off the
constants the rewrite scaled (exact up to float32 rounding for the ``affine`` and
``batchnorm`` sites calib smooths by default; a site whose ``1/s`` went into quantized
weights -- the ``weights`` producer, off by default -- needs the explicit factors).

Where the error jumps: for each tensor, the *drop* is the SQNR of its worst
captured input (the error flowing in) minus its own SQNR -- the error added by
the node producing it. A tensor whose inputs are not captured falls back to the
previous tensor in topological order. The largest drops are named in the report.
SQNRs enter a drop clamped to [-100, 100] dB: an error-free tensor (infinite SQNR)
counts as 100 dB, so the first node that introduces error still shows up as a (large,
finite) drop, and a broken one (-inf) as -100 dB, so the first node that breaks
shows up and the broken tensors after it do not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import HarnessError, ModelError
from ..model import Model
from .stats import db

_NON_FLOAT_OPS = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "ConstantOfShape", "Range",
                  "QuantizeLinear", "DynamicQuantizeLinear", "Equal", "Less", "Greater", "Not", "And", "Or"}
_FLOAT_TYPES = {1, 10, 11, 16}   # float, float16, double, bfloat16
EXACT_DB = 100.0                 # SQNRs enter drops clamped to [-EXACT_DB, EXACT_DB]
MASK_MAGNITUDE = 1e8             # reference entries this large (or non-finite) are masked, not compared


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


# --------------------------------------------------------------------------- smoothing factors
_PASS_THROUGH = ("Relu", "LeakyRelu", "PRelu", "Identity")    # f(x / s) = f(x) / s for s > 0
_AFFINE = ("Mul", "Div", "Add", "Sub")
_PRODUCERS = ("affine", "batchnorm", "weights")                  # every kind of site calib.smooth knows


def _smoothing_chain(G, x: str) -> list[tuple[str, object, tuple[int, ...]]]:
    """``[(tensor, producing node, the input slots of the constants it scales)]`` from *x* back to the node that
    absorbs ``1/s`` when :mod:`calib.smooth` smooths *x*: every tensor listed holds ``1/s`` times
    its unsmoothed values. Walks the elementwise ops calib.smooth rewrites (Add/Sub with a
    constant, Relu/LeakyRelu/PRelu, Identity) and ends at a Mul/Div with a constant, or at any other
    producer (a BatchNormalization or a weighted op, which absorbs ``1/s`` itself)."""
    out = []
    t = x
    while True:
        n = G.producer.get(t)
        if n is None or (t != x and len(G.consumers.get(t, [])) != 1):
            return out
        op = n.op_type
        if op in _AFFINE and len(n.input) == 2:
            slots = [k for k in (0, 1) if G.is_const(n.input[k])]
            if len(slots) != 1:
                return out
            out.append((t, n, (slots[0],)))
            if op in ("Mul", "Div"):
                return out
            t = n.input[1 - slots[0]]
        elif op in _PASS_THROUGH:
            out.append((t, n, ()))
            t = n.input[0]
        else:   # scale and bias of a BatchNormalization; a weighted op's quantized rows are not read
            out.append((t, n, (1, 2) if op == "BatchNormalization" else ()))
            return out


def _per_channel(ratio: np.ndarray, site) -> np.ndarray | None:
    """*ratio* (broadcastable against *site*'s tensor) as one value per channel, NaN where it is
    undefined; None when it differs along another axis than the channel axis."""
    target = site.shape_of(np.ones(site.channels)).shape
    try:
        full = np.broadcast_to(ratio, np.broadcast_shapes(ratio.shape, target))
    except ValueError:
        return None
    axis = full.ndim - len(target)
    rows = np.moveaxis(full, axis, 0).reshape(site.channels, -1)
    with np.errstate(all="ignore"):
        lo, hi = np.nanmin(rows, axis=1), np.nanmax(rows, axis=1)
    same = np.isnan(lo) | (np.abs(hi - lo) <= 1e-5 * np.abs(lo))
    return lo if same.all() else None


def smoothing_factors(reference: Model, candidate: Model) -> dict[str, np.ndarray]:
    """``{tensor: s}`` (one float32 factor per channel) for every tensor of *reference* that
    *candidate* holds smoothed by :mod:`calib.smooth` (its channel ``c`` divided by ``s_c``), read
    off the constants the rewrite scaled: along the tensor's chain (:func:`_smoothing_chain`),
    ``s`` is the reference constant over the candidate's (the inverse for a Div's divisor; a
    BatchNormalization's scale and bias). Every constant of the chain must give the same ``s``
    where it is defined, and ``s`` must differ from 1, else the tensor is not reported (a
    candidate whose constants differ for another reason, a fine-tuned model, is not mistaken
    for a smoothed one unless its chain holds a single constant). Exact up to
    float32 rounding; a chain ending at a weighted op (``1/s`` in its quantized weights) is not
    recovered -- pass those factors explicitly. A reference calib.smooth cannot prepare (an opset
    it cannot raise) has no sites: ``{}``."""
    from ..graph import Graph
    from ..smooth import find_sites

    try:
        sites = find_sites(reference, producers=_PRODUCERS)
    except ModelError:
        return {}
    Gr, Gc = Graph(reference.proto), Graph(candidate.proto)
    out = {}
    for site in sites:
        if site.tensor not in Gc.producer:
            continue
        s = np.full(site.channels, np.nan)
        ok = True
        for t, rn, k in ((t, rn, k) for t, rn, slots in _smoothing_chain(Gr, site.tensor) for k in slots):
            cn = Gc.producer.get(t)
            if cn is None or cn.op_type != rn.op_type or len(cn.input) <= k or len(rn.input) <= k:
                continue
            rc, cc = Gr.const(rn.input[k]), Gc.const(cn.input[k]) if Gc.is_const(cn.input[k]) else None
            if rc is None or cc is None or rc.dtype.kind != "f" or cc.dtype.kind != "f":
                continue
            with np.errstate(all="ignore"):
                r = (cc / rc) if rn.op_type == "Div" else (rc / cc)
            r = np.where(np.isfinite(r) & (r > 0), r, np.nan).astype(np.float64)
            if rn.op_type == "BatchNormalization":     # [C]: per channel on axis 1, not broadcasting
                if r.size != site.channels:
                    continue
                r = site.shape_of(r)
            v = _per_channel(r, site)
            if v is None:
                ok = False
                break
            both = ~np.isnan(v) & ~np.isnan(s)
            if np.any(np.abs(v[both] - s[both]) > 1e-5 * np.abs(s[both])):
                ok = False
                break
            s = np.where(np.isnan(s), v, s)
        if not ok or np.all(np.isnan(s)):
            continue
        s = np.where(np.isnan(s), 1.0, s)      # no constant defines it: the channel is all zero
        if np.any(np.abs(s - 1.0) > 1e-6):
            out[site.tensor] = s.astype(np.float32)
    return out


def smoothing_scales(reference: Model, factors) -> dict[str, np.ndarray]:
    """``{reference tensor: s shaped to broadcast against it}`` for *factors* (``{tensor: s}``, as
    :func:`smoothing_factors` or ``CalibrationResult.smoothing`` give them): the smoothed tensor
    and every tensor of its chain. The candidate's counterpart times ``s`` is comparable with the
    reference. Raises :class:`HarnessError` for a tensor that is not a smoothing site of
    *reference*, or factors of the wrong length."""
    from ..graph import Graph
    from ..smooth import find_sites

    if not factors:
        return {}
    try:
        sites = {st.tensor: st for st in find_sites(reference, producers=_PRODUCERS)}
    except ModelError as exc:
        raise HarnessError(f"cannot undo the smoothing factors: {exc}") from None
    G = Graph(reference.proto)
    out = {}
    for x, s in factors.items():
        site = sites.get(x)
        if site is None:
            raise HarnessError(f"cannot undo the smoothing of '{x}': not a smoothing site of the reference")
        s = np.asarray(s, np.float32).reshape(-1)
        if s.size != site.channels:
            raise HarnessError(f"smoothing factors of '{x}': {s.size} values for {site.channels} channels")
        for t, _, _ in _smoothing_chain(G, x):
            out[t] = site.shape_of(s)
    return out


# --------------------------------------------------------------------------- per-tensor errors
@dataclass
class LayerError:
    tensor: str
    candidate_tensor: str
    op: str
    index: int
    sqnr_db: float
    signal: float
    noise: float
    elements: int                 # entries compared (masked ones excluded)
    drop_db: float | None = None
    drop_from: str | None = None
    masked: int = 0               # entries left out: non-finite or |x| >= MASK_MAGNITUDE in the reference
    nonfinite: int = 0            # entries finite in the reference but not in the candidate (SQNR -inf)
    unsmoothed: bool = False      # the candidate's values were multiplied back by smoothing factors

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "candidate_tensor": self.candidate_tensor, "op": self.op,
                "index": self.index, "sqnr_db": self.sqnr_db, "drop_db": self.drop_db,
                "drop_from": self.drop_from, "elements": self.elements, "masked": self.masked,
                "nonfinite": self.nonfinite, "unsmoothed": self.unsmoothed}


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
                "method": "SQNR = 10 log10(sum ref^2 / sum (cand-ref)^2) per tensor over the entries the "
                          "reference holds finite and below 1e8 in magnitude (masks left out), smoothed "
                          "tensors multiplied back by their factors; drop = worst input SQNR - own SQNR",
                "largest_drops": [l.to_dict() for l in self.jumps()],
                "lowest_sqnr": [l.to_dict() for l in self.worst()],
                "layers": [l.to_dict() for l in self.layers], "notes": self.notes}


def _clamp(x: float) -> float:
    return min(max(x, -EXACT_DB), EXACT_DB)


class LayerAccumulator:
    """Streaming per-tensor signal and noise sums for one candidate.

    *scales* maps reference tensors to smoothing factors shaped to broadcast against them
    (:func:`smoothing_scales`): the candidate's counterpart is multiplied by them before it is
    compared. Feed it whole runs with :meth:`update`, or tensor by tensor with :meth:`add` (then
    count the samples with :meth:`count`)."""

    def __init__(self, candidate: str, reference: Model, pairs: list[tuple[str, str]],
                 scales: dict[str, np.ndarray] | None = None):
        self.candidate = candidate
        self.reference = reference
        self.pairs = pairs
        self.scales = dict(scales or {})
        self.signal = np.zeros(len(pairs))
        self.noise = np.zeros(len(pairs))
        self.elements = np.zeros(len(pairs), dtype=np.int64)
        self.masked = np.zeros(len(pairs), dtype=np.int64)
        self.nonfinite = np.zeros(len(pairs), dtype=np.int64)
        self.samples = 0
        self.notes: list[str] = []
        self._bad: set[str] = set()

    def update(self, ref_out: dict[str, np.ndarray], cand_out: dict[str, np.ndarray]) -> None:
        """Add every pair found in one run's outputs, and count the run's samples."""
        n = None
        for i, (rt, ct) in enumerate(self.pairs):
            r, c = ref_out.get(rt), cand_out.get(ct)
            if r is not None and c is not None and self.add(i, r, c):
                n = r.shape[0] if r.ndim else 1
        if n:
            self.count(n)

    def count(self, n: int) -> None:
        self.samples += n

    def add(self, i: int, r: np.ndarray, c: np.ndarray) -> bool:
        """Add pair *i*'s reference values *r* and candidate values *c* (one run's); False when
        their shapes differ (noted once, skipped)."""
        rt = self.pairs[i][0]
        if r.shape != c.shape:
            if rt not in self._bad:
                self._bad.add(rt)
                self.notes.append(f"{rt}: shapes differ ({r.shape} vs {c.shape}); skipped")
            return False
        s = self.scales.get(rt)
        c = np.asarray(c, dtype=np.float32) if s is None else np.multiply(c, s, dtype=np.float32)
        rf = np.ascontiguousarray(r, dtype=np.float32).ravel()
        cf = np.ascontiguousarray(c).ravel()
        # fast path, float32 BLAS dot products (relative error well under 1e-3 per run: far below
        # what a dB figure shows): a sum of squares below MASK_MAGNITUDE**2 proves every entry
        # finite and unmasked, a finite error sum every candidate entry finite
        with np.errstate(over="ignore", invalid="ignore"):
            ss = float(np.dot(rf, rf))
            if ss < MASK_MAGNITUDE ** 2:
                e = cf - rf
                ee = float(np.dot(e, e))
                if math.isfinite(ee):
                    self.signal[i] += ss
                    self.noise[i] += ee
                    self.elements[i] += rf.size
                    return True
            keep = np.isfinite(rf)
            keep[keep] = np.abs(rf[keep]) < MASK_MAGNITUDE
            r64, c64 = rf[keep].astype(np.float64), cf[keep].astype(np.float64)
            bad = ~np.isfinite(c64)
            e = np.where(bad, 0.0, c64 - r64)
        self.masked[i] += rf.size - r64.size
        self.nonfinite[i] += int(bad.sum())
        self.signal[i] += float(np.dot(r64, r64))
        self.noise[i] += math.inf if bad.any() else float(np.dot(e, e))
        self.elements[i] += r64.size
        return True

    def result(self, top: int = 10) -> Attribution:
        producers = self.reference.producers()
        index = {rt: i for i, (rt, _) in enumerate(self.pairs)}
        layers: list[LayerError] = []
        sq = {}
        for i, (rt, ct) in enumerate(self.pairs):
            if self.elements[i] == 0:
                continue
            if self.noise[i] > 0:
                s = float(db(self.signal[i] / self.noise[i])) if math.isfinite(self.noise[i]) else -math.inf
            else:
                s = math.inf
            sq[rt] = s
            node = producers.get(rt)
            layers.append(LayerError(rt, ct, node.op_type if node is not None else "input", len(layers), s,
                                     float(self.signal[i]), float(self.noise[i]), int(self.elements[i]),
                                     masked=int(self.masked[i]), nonfinite=int(self.nonfinite[i]),
                                     unsmoothed=rt in self.scales))
        prev = None
        for l in layers:
            node = producers.get(l.tensor)
            ins = [x for x in (node.input if node is not None else []) if x in sq and x in index]
            if ins:
                src = min(ins, key=lambda x: sq[x])
            else:
                src = prev.tensor if prev is not None else None
            if src is not None:
                l.drop_db = _clamp(sq[src]) - _clamp(l.sqnr_db)
                l.drop_from = src
            prev = l
        return Attribution(self.candidate, layers, self.samples, top, list(self.notes) + self._summary_notes(layers))

    @staticmethod
    def _summary_notes(layers: list[LayerError]) -> list[str]:
        notes = []
        masked = [l for l in layers if l.masked]
        if masked:
            names = ", ".join(l.tensor for l in masked[:3]) + (", ..." if len(masked) > 3 else "")
            notes.append(f"{len(masked)} tensor(s) hold masked entries (non-finite or |x| >= {MASK_MAGNITUDE:g} "
                         f"in the reference), compared on their other entries: {names}")
        broken = [l for l in layers if l.nonfinite]
        if broken:
            notes.append(f"{len(broken)} tensor(s) hold non-finite candidate values where the reference is "
                         f"finite (SQNR -inf), the first: {broken[0].tensor}")
        smoothed = sum(l.unsmoothed for l in layers)
        if smoothed:
            notes.append(f"{smoothed} smoothed tensor(s) compared after multiplying the candidate back by their "
                         f"smoothing factors")
        return notes
