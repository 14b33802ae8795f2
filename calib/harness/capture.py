"""Capture runs for per-layer attribution in bounded memory.

ONNX Runtime's Python API returns all outputs of a run at once, and a captured tensor is a graph
output, which ONNX Runtime neither frees nor reuses during the run: capturing every intermediate
tensor of a batch holds all of them at once, in the reference and in the candidate. That grows
with the batch, the input size and the depth of the model, without bound. A run cannot hand its
tensors over one at a time (the Python API has no per-node callback), so :class:`CaptureRunner`
bounds what one run returns instead, to *budget* bytes (:data:`ATTRIBUTE_MEMORY` by default) for
the reference's captures and one candidate's together:

1. **Sizes.** The bytes per sample of every tensor to capture come from ONNX Runtime's profile of
   one plain run of one sample (no graph optimisation, no capture: memory as a plain run; exact
   shapes whatever the model computes its shapes with), once per input signature (the shapes
   of the inputs past the batch axis). A tensor the profile lacks counts as the largest one.
2. **Plan** (:func:`plan_captures`; half of the budget for each side). If the batch's captures
   fit, one run per batch, as without a budget. Else the batch is split into micro-batches of as
   many samples as fit: the same work in smaller runs. If one sample's captures do not fit
   (large inputs: PP-OCRv4's detector at 736 px holds about 0.9 GB of float tensors per image),
   the tensors are split, in topological order, into chunks of at most half the budget per
   sample, each run one sample at a time on the graph pruned to what the chunk needs, so an early
   chunk runs only the front of the network; *k* chunks cost about ``(k + 1) / 2`` runs of each
   engine instead of one. A single tensor larger than half the budget is a chunk of its own.
3. **Runs.** Per micro-batch and chunk: the reference, then each candidate (capturing the
   counterparts of the chunk's tensors), each pair added to its candidate's
   :class:`~calib.harness.attribution.LayerAccumulator` as soon as both sides are there, the
   arrays dropped before the next run. The last chunk also returns the models' outputs, which
   the metrics score (concatenated over the micro-batches).

Shrinking the batch alone could not bound a model whose single sample exceeds the budget, and
chunks alone would re-run the network's front for models whose batch merely is too large, hence
both, micro-batches first.

All runs are without graph optimisation (``optimize="none"``), so every captured tensor holds
the value the model defines: ONNX Runtime's optimisers do not all leave a graph output alone
(at the basic level its transpose optimiser changed the captured Reshape outputs of a Q/DQ
MiniLM's attention), and with every tensor captured they would have little left to fuse anyway.
They run without the memory arena (captured outputs would pin its chunks), and, when several
chunks take turns, without spinning intra-op threads (the idle threads of one session would
spin on the cores the next one needs).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..backends.base import Engine
from ..graph import pruned
from ..model import Model
from .attribution import LayerAccumulator

ATTRIBUTE_MEMORY = 256 * 2 ** 20     # bytes of captured tensors held at once: reference + one candidate
_KEEP_PLANS = 4                      # engine sets kept for plans of other input sizes
_ITEMSIZE = {"float": 4, "float16": 2, "double": 8, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1}


@dataclass(frozen=True)
class CapturePlan:
    """How one batch is captured: *chunks* of positions into the tensor list (topological order),
    *samples* per run, and *largest*, the bytes per sample of the largest chunk."""

    chunks: tuple[tuple[int, ...], ...]
    samples: int
    largest: int

    def describe(self, batch: int) -> str:
        if len(self.chunks) == 1 and self.samples >= batch:
            return "one run per batch"
        return (f"{len(self.chunks)} chunk(s) of tensors, {self.samples} sample(s) per run "
                f"(largest chunk {self.largest / 2 ** 20:.3g} MiB per sample)")


def plan_captures(sizes: Sequence[int], batch: int, budget: int = ATTRIBUTE_MEMORY, step: int = 1) -> CapturePlan:
    """The plan for tensors of *sizes* (bytes per sample, topological order) and a batch of
    *batch* samples: one chunk and the whole batch when ``sum(sizes) * batch`` fits half of
    *budget*; else one chunk in micro-batches of as many samples as fit; else chunks of at most
    half the budget per sample, one sample per run. *step* is the model's fixed batch (runs are a
    multiple of it)."""
    half = max(1, budget // 2)
    step = max(1, step)
    total = int(sum(sizes))
    if total <= half:
        fit = half // max(total, 1)
        samples = max(step, min(batch, fit) // step * step)
        return CapturePlan((tuple(range(len(sizes))),), samples, total)
    chunks, cur, cur_bytes = [], [], 0
    for i, b in enumerate(sizes):
        if cur and cur_bytes + b > half:
            chunks.append(tuple(cur))
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += int(b)
    if cur:
        chunks.append(tuple(cur))
    largest = max(sum(int(sizes[i]) for i in c) for c in chunks)
    return CapturePlan(tuple(chunks), step, largest)


def tensor_bytes(model: Model, feed: Mapping[str, np.ndarray], threads: int | None = None) -> dict[str, int]:
    """Bytes of every node output of *model* for *feed*, from ONNX Runtime's profile of one plain
    run (no graph optimisation, so every node runs under its own name)."""
    import onnx
    import onnxruntime as ort

    from ..backends.onnxruntime import session_options

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for k, n in enumerate(proto.graph.node):
        n.name = f"n{k}"
    nodes = proto.graph.node
    so = session_options(threads, "none", arena=False)
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="calib-sizes-") as d:
        so.profile_file_prefix = os.path.join(d, "profile")
        session = ort.InferenceSession(proto.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
        session.run(None, dict(feed))
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    out: dict[str, int] = {}
    for ev in events:
        m = re.fullmatch(r"n(\d+)_kernel_time", str(ev.get("name", "")))
        if ev.get("cat") != "Node" or m is None or int(m.group(1)) >= len(nodes):
            continue
        names = [o for o in nodes[int(m.group(1))].output if o]
        for name, ts in zip(names, ev.get("args", {}).get("output_type_shape", [])):
            for dtype, shape in ts.items():
                out[name] = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE.get(dtype, 4)
    return out


def _pruned(model: Model, outputs: Sequence[str]) -> Model:
    """A copy of *model* whose graph outputs are *outputs*, with only what they need."""
    return Model.from_proto(pruned(model.proto, outputs), model.path)


def _threads(e: Engine) -> int | None:
    session = getattr(e, "session", None)
    return session.get_session_options().intra_op_num_threads if session is not None else None


class CaptureRunner:
    """Runs the reference and the attributed candidates batch by batch within *budget* bytes of
    captured tensors (see the module docstring), feeding *accumulators* (candidate index ->
    :class:`LayerAccumulator`, whose ``pairs`` say what to capture) and returning the models'
    outputs for the metrics. *reference* and *candidates* (index -> engine) are ONNX Runtime
    engines; they are not run themselves (their models are)."""

    def __init__(self, reference: Engine, candidates: Mapping[int, Engine],
                 accumulators: Mapping[int, LayerAccumulator], budget: int = ATTRIBUTE_MEMORY):
        self.reference = reference
        self.candidates = dict(candidates)
        self.accs = dict(accumulators)
        self.budget = int(budget)
        self.threads = _threads(reference)
        self.ref_model: Model = reference.model
        order = {t: i for i, t in enumerate(t.name for t in self.ref_model.inputs)}
        order.update({t: len(order) + i for i, t in enumerate(self.ref_model.activation_tensors())})
        wanted = {rt for acc in self.accs.values() for rt, _ in acc.pairs}
        self.tensors = sorted(wanted, key=lambda t: order.get(t, len(order)))
        self._sizes: dict[tuple, list[int]] = {}
        self._plan: CapturePlan | None = None
        self._engines: tuple = ()
        self._built: dict[tuple, tuple] = {}   # chunks -> engines, the last few plans (input sizes vary)
        self.plans: dict[str, int] = {}       # plan description -> batches that used it
        self.timing: dict[str, float] = {}

    # -- planning ------------------------------------------------------------
    def _sizes_for(self, feed: Mapping[str, np.ndarray], step: int) -> list[int]:
        sig = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(feed.items()))
        if sig not in self._sizes:
            probe = {k: np.asarray(v)[:step] for k, v in feed.items()}
            found = tensor_bytes(self.ref_model, probe, self.threads)
            for t in self.ref_model.inputs:
                if t.name in probe:
                    found[t.name] = probe[t.name].nbytes
            fallback = max(found.values(), default=0)
            self._sizes[sig] = [-(-found.get(t, fallback) // step) for t in self.tensors]
        return self._sizes[sig]

    def _build(self, plan: CapturePlan) -> None:
        """One engine per chunk for the reference and each candidate; the last chunk's also
        return the models' outputs."""
        from ..backends.onnxruntime import OrtEngine

        def make(e: Engine, outputs: list[str], last: bool):
            if not outputs and not last:
                return None
            names = outputs + (list(e.output_names) if last else [])
            return OrtEngine(_pruned(e.model, names), name=e.info.name, threads=self.threads, optimize="none",
                             precision=e.info.precision, arena=False, spinning=spinning)

        spinning = len(plan.chunks) == 1    # idle threads of many sessions run in turn would spin on the cores
        engines = []
        for k, chunk in enumerate(plan.chunks):
            last = k == len(plan.chunks) - 1
            tensors = {self.tensors[i] for i in chunk}
            ref = make(self.reference, [self.tensors[i] for i in chunk], last)
            cands = {}
            for j, acc in self.accs.items():
                idx = [i for i, (rt, _) in enumerate(acc.pairs) if rt in tensors]
                cands[j] = (make(self.candidates[j], list(dict.fromkeys(acc.pairs[i][1] for i in idx)), last), idx)
            engines.append((ref, cands))
        self._engines = tuple(engines)
        self._plan = plan

    # -- running -------------------------------------------------------------
    def _timed(self, e: Engine, feed) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = e.run(feed)
        self.timing[e.info.name] = self.timing.get(e.info.name, 0.0) + time.perf_counter() - t0
        return out

    def run(self, feed: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[int, dict[str, np.ndarray]]]:
        """One batch: (the reference's outputs, {candidate index: its outputs}); the accumulators
        have taken every captured pair and counted the batch's samples."""
        feed = {k: np.asarray(v) for k, v in feed.items()}
        n = next(iter(feed.values())).shape[0] if feed else 0
        step = self.ref_model.fixed_batch or 1
        plan = plan_captures(self._sizes_for(feed, step), n, self.budget, step)
        if self._plan is None or plan.chunks != self._plan.chunks:
            if plan.chunks in self._built:
                self._engines, self._plan = self._built[plan.chunks], plan
            else:
                self._build(plan)
                if len(self._built) >= _KEEP_PLANS:
                    del self._built[next(iter(self._built))]
                self._built[plan.chunks] = self._engines
        desc = plan.describe(n)
        self.plans[desc] = self.plans.get(desc, 0) + 1
        ref_parts: list[dict] = []
        cand_parts: dict[int, list[dict]] = {j: [] for j in self.accs}
        last = len(self._engines) - 1
        for a in range(0, n, plan.samples):
            part = {k: v[a:a + plan.samples] for k, v in feed.items()} if plan.samples < n else feed
            for k, (ref_engine, cands) in enumerate(self._engines):
                r = self._timed(ref_engine, part)
                for j, (engine, idx) in cands.items():
                    if engine is None:
                        continue
                    c = self._timed(engine, part)
                    acc = self.accs[j]
                    for i in idx:
                        rt, ct = acc.pairs[i]
                        if rt in r and ct in c:
                            acc.add(i, r[rt], c[ct])
                    if k == last:
                        cand_parts[j].append({o: c[o] for o in self.candidates[j].output_names if o in c})
                    del c
                if k == last:
                    ref_parts.append({o: r[o] for o in self.reference.output_names if o in r})
                del r
        for acc in self.accs.values():
            acc.count(n)
        return _joined(ref_parts), {j: _joined(p) for j, p in cand_parts.items()}

    def notes(self) -> list[str]:
        plans = "; ".join(f"{d} ({k} batch{'es' if k > 1 else ''})" for d, k in self.plans.items())
        if not plans:
            return []
        return [(f"per-layer attribution: captured tensors held within {self.budget / 2 ** 20:.0f} MiB "
                 f"(reference and one candidate): {plans}")]


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]} if parts else {}
