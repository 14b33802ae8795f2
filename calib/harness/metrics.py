"""Streaming metrics and their registry.

A metric sees one batch at a time and returns *per-sample* values (one float per
sample, or a numerator/denominator pair), so memory grows by a few floats per
sample, never with the size of the outputs; the runner keeps those small vectors
so the bootstrap can pair the reference and the candidate sample by sample.

Two kinds:

``engine``
    computed from one engine's output (usually against labels): top-1, CER, ...
    Evaluated for the reference *and* each candidate; the report gives both and
    the paired difference candidate - reference with a bootstrap interval (and
    McNemar's exact test when the per-sample values are 0/1).
``paired``
    computed from the reference output and a candidate output: agreement, KL,
    cosine, SQNR, ... The report gives the value with a bootstrap interval.

Extending
---------
Any callable becomes a metric::

    from calib.harness.metrics import metric

    @metric("brightness_drift", kind="paired", higher_is_better=False)
    def brightness_drift(ref, cand, labels):          # arrays of the primary output
        return np.abs(cand.mean(axis=(1, 2, 3)) - ref.mean(axis=(1, 2, 3)))

or, from the command line, ``--metric file.py:func`` (a plain function with
``(ref, cand, labels)`` is a paired metric, one with ``(output, labels)`` an
engine metric; attributes set by ``@metric`` are honoured). A function may
return an array ``[batch]`` (the metric is its mean) or a tuple ``(num, den)``
(the metric is ``sum(num) / sum(den)``).
"""
from __future__ import annotations

import copy
import importlib.util
import inspect
import math
import os
from typing import Any, Callable

import numpy as np

from ..errors import CalibError
from .stats import db


class MetricError(CalibError):
    """A metric specification is invalid or a metric cannot be applied to the outputs."""


# --------------------------------------------------------------------------- base
class MetricContext:
    """What a metric may look at when it is bound (on the first batch)."""

    def __init__(self, output_names: list[str], metadata: dict[str, str] | None = None,
                 sample: dict[str, np.ndarray] | None = None, has_labels: bool = False,
                 primary: str | None = None):
        self.output_names = list(output_names)
        self.metadata = dict(metadata or {})
        self.sample = sample or {}
        self.has_labels = has_labels
        # the output a metric scores unless it names one (see calib.harness.runner.primary_output)
        self.primary = primary if primary is not None else self.output_names[0]


class Metric:
    """Base class. Subclasses set the class attributes and implement :meth:`update`."""

    name: str = "metric"
    kind: str = "paired"               # "paired" | "engine"
    needs_labels: bool = False
    higher_is_better: bool | None = True
    ideal: float | None = None         # value of a perfect candidate (paired metrics)
    aggregate: str = "mean"            # "mean" (sum num / sum den) | "max"
    binary: bool = False               # per-sample 0/1: McNemar applies
    percent: bool = False              # display as a percentage
    unit: str = ""
    description: str = ""
    output: str | None = None          # output tensor; None: the context's primary output

    def transform(self, x):            # applied to the aggregate (e.g. dB)
        return x

    # -- life cycle ------------------------------------------------------------
    def bind(self, ctx: MetricContext) -> None:
        """Called once with the first batch, before any :meth:`update`."""
        if self.output is None:
            self.output = ctx.primary
        elif self.output not in ctx.output_names:
            raise MetricError(f"metric {self.name}: output '{self.output}' not among the model outputs "
                              f"({', '.join(ctx.output_names)})")

    def select(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs[self.output]

    def update(self, *args):
        """Engine metrics: ``update(output, labels)``; paired: ``update(ref, cand, labels)``.
        Return per-sample values (array, or ``(num, den)``), or None to defer to :meth:`finish`."""
        raise NotImplementedError

    def finish(self):
        """Per-sample values held back until the end (or None)."""
        return None

    def summary(self) -> dict:
        """Extra JSON-able results (e.g. percentiles)."""
        return {}

    def fresh(self) -> "Metric":
        return copy.deepcopy(self)

    def spec(self) -> dict:
        return {"name": self.name, "kind": self.kind, "needs_labels": self.needs_labels,
                "higher_is_better": self.higher_is_better, "ideal": self.ideal,
                "aggregate": self.aggregate, "binary": self.binary, "unit": self.unit,
                "percent": self.percent, "output": self.output, "description": self.description}


# --------------------------------------------------------------------------- helpers
def _flat(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.reshape(x.shape[0], -1).astype(np.float64, copy=False)


def _class_scores(x: np.ndarray) -> np.ndarray:
    """[N, C] or [N, C, 1, 1] (SqueezeNet) -> [N, C]."""
    x = np.asarray(x)
    if x.ndim > 2 and all(d == 1 for d in x.shape[2:]):
        x = x.reshape(x.shape[0], x.shape[1])
    if x.ndim != 2:
        raise MetricError(f"classification metrics need [N, C] scores, got shape {tuple(x.shape)}")
    return x


def looks_like_probabilities(x: np.ndarray, axis: int = -1, tol: float = 1e-3) -> bool:
    """True if values lie in [0, 1] and sum to 1 along *axis* (already a softmax)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or x.min() < -tol or x.max() > 1 + tol:
        return False
    return bool(np.all(np.abs(x.sum(axis=axis) - 1.0) < max(tol, 1e-5 * x.shape[axis])))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _labels_array(labels, n: int) -> np.ndarray:
    if labels is None:
        raise MetricError("metric needs labels but the data has none")
    a = np.asarray(labels)
    if a.shape[0] != n:
        raise MetricError(f"{a.shape[0]} labels for a batch of {n}")
    return a


# --------------------------------------------------------------------------- classification
class TopK(Metric):
    kind = "engine"
    needs_labels = True
    binary = True
    percent = True

    def __init__(self, k: int = 1, output: str | None = None):
        self.k = k
        self.name = f"top{k}"
        self.output = output
        self.description = f"top-{k} accuracy against the labels"

    def update(self, out, labels):
        s = _class_scores(self.select(out))
        y = _labels_array(labels, s.shape[0]).astype(np.int64)
        if y.size and y.max() >= s.shape[1]:     # -1: no label; beyond the classes: wrong labels
            raise MetricError(f"label {int(y.max())} is beyond the model's {s.shape[1]} classes (0 to "
                              f"{s.shape[1] - 1}): the labels do not match the model's output")
        if self.k == 1:
            return (np.argmax(s, axis=1) == y).astype(np.float64)
        # the label's rank in (score descending, class index ascending) order: ties go to the
        # lower class index, as argmax breaks them, whatever the NumPy version
        n, c = s.shape
        valid = (y >= 0) & (y < c)
        cols = np.arange(c)
        mine = s[np.arange(n), np.where(valid, y, 0)][:, None]
        rank = (s > mine).sum(axis=1) + ((s == mine) & (cols[None, :] < y[:, None])).sum(axis=1)
        return (valid & (rank < self.k)).astype(np.float64)


class Top1Agreement(Metric):
    name = "top1_agreement"
    binary = True
    percent = True
    ideal = 1.0
    description = "candidate top-1 class equals the reference top-1 class"

    def update(self, ref, cand, labels):
        r = _class_scores(self.select(ref))
        c = _class_scores(self.select(cand))
        return (np.argmax(r, axis=1) == np.argmax(c, axis=1)).astype(np.float64)


class KLDivergence(Metric):
    name = "kl_divergence"
    higher_is_better = False
    ideal = 0.0
    unit = "nats"
    description = "KL(reference softmax || candidate softmax); softmax skipped if outputs are already probabilities"

    def __init__(self, output: str | None = None, probabilities: bool | None = None, eps: float = 1e-12):
        self.output = output
        self.probabilities = probabilities
        self.eps = eps

    def bind(self, ctx):
        super().bind(ctx)
        if self.probabilities is None and self.output in ctx.sample:
            self.probabilities = looks_like_probabilities(_class_scores(ctx.sample[self.output]), axis=1)

    def _p(self, x):
        x = _class_scores(x).astype(np.float64)
        if self.probabilities:
            x = np.clip(x, 0.0, None)
            return x / np.maximum(x.sum(axis=1, keepdims=True), self.eps)
        return softmax(x, axis=1)

    def summary(self) -> dict:
        return {"outputs": "probabilities (used as they are)" if self.probabilities else "logits (softmax applied)"}

    def update(self, ref, cand, labels):
        p = self._p(self.select(ref))
        q = self._p(self.select(cand))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(p > 0, p * (np.log(np.maximum(p, self.eps)) - np.log(np.maximum(q, self.eps))), 0.0)
        return np.maximum(t.sum(axis=1), 0.0)


# --------------------------------------------------------------------------- any tensor
class Cosine(Metric):
    name = "cosine"
    ideal = 1.0
    description = "cosine similarity of the flattened output to the reference, per sample"

    def update(self, ref, cand, labels):
        r, c = _flat(self.select(ref)), _flat(self.select(cand))
        nr = np.linalg.norm(r, axis=1)
        nc = np.linalg.norm(c, axis=1)
        dot = np.einsum("ij,ij->i", r, c)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where((nr > 0) & (nc > 0), dot / (nr * nc), np.where((nr == 0) & (nc == 0), 1.0, 0.0))
        return np.clip(cos, -1.0, 1.0)


class SQNR(Metric):
    name = "sqnr"
    ideal = math.inf
    unit = "dB"
    description = "signal-to-quantization-noise ratio 10 log10(sum ref^2 / sum (cand-ref)^2) over all samples"

    def transform(self, x):
        return db(x)

    def update(self, ref, cand, labels):
        r, c = _flat(self.select(ref)), _flat(self.select(cand))
        e = c - r
        return (np.einsum("ij,ij->i", r, r), np.einsum("ij,ij->i", e, e))


class MaxAbsError(Metric):
    name = "max_abs_error"
    higher_is_better = False
    ideal = 0.0
    aggregate = "max"
    description = "largest |cand - ref| over all elements and samples"

    def update(self, ref, cand, labels):
        r, c = _flat(self.select(ref)), _flat(self.select(cand))
        return np.abs(c - r).max(axis=1) if r.shape[1] else np.zeros(r.shape[0])


class MeanAbsError(Metric):
    name = "mean_abs_error"
    higher_is_better = False
    ideal = 0.0
    description = "mean |cand - ref| over all elements"

    def update(self, ref, cand, labels):
        r, c = _flat(self.select(ref)), _flat(self.select(cand))
        return (np.abs(c - r).sum(axis=1), np.full(r.shape[0], float(r.shape[1])))


class MeanRelError(Metric):
    name = "mean_rel_error"
    higher_is_better = False
    ideal = 0.0
    description = "relative error sum |cand - ref| / sum |ref| over all elements"

    def update(self, ref, cand, labels):
        r, c = _flat(self.select(ref)), _flat(self.select(cand))
        return (np.abs(c - r).sum(axis=1), np.abs(r).sum(axis=1))


class RelL2Error(Metric):
    name = "rel_l2_error"
    higher_is_better = False
    ideal = 0.0
    description = "per-sample ||cand - ref|| / ||ref||, averaged"

    def update(self, ref, cand, labels):
        r, c = _flat(self.select(ref)), _flat(self.select(cand))
        nr = np.linalg.norm(r, axis=1)
        ne = np.linalg.norm(c - r, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(nr > 0, ne / np.where(nr > 0, nr, 1.0), np.where(ne > 0, np.inf, 0.0))


class ErrorPercentiles(Metric):
    """Percentiles of |cand - ref| over all elements, streamed through a fixed histogram.

    Bins: one for exact zeros, then log-spaced edges from 1e-10 to 1e6 with 50 bins
    per decade (each bin spans a factor 10**(1/50) = 1.047), plus under/overflow.
    A percentile is reported as the *upper edge* of the bin holding it, so it is
    never understated and overstated by at most 4.7% (values below 1e-10 report
    1e-10; above 1e6, the exact running maximum). Memory: 803 counters, whatever
    the data size. No per-sample values, so no bootstrap interval.
    """

    name = "abs_error_percentiles"
    higher_is_better = False
    description = "percentiles of |cand - ref| (fixed log histogram, 4.7% resolution)"
    QUANTILES = (50.0, 90.0, 99.0, 99.9)
    LO, HI, PER_DECADE = -10, 6, 50

    def __init__(self, output: str | None = None):
        self.output = output
        self.edges = 10.0 ** np.linspace(self.LO, self.HI, (self.HI - self.LO) * self.PER_DECADE + 1)
        self.counts = np.zeros(self.edges.size + 2, dtype=np.int64)   # [zero, below, bins..., above]
        self.max = 0.0
        self.total = 0

    def update(self, ref, cand, labels):
        e = np.abs(_flat(self.select(cand)) - _flat(self.select(ref))).ravel()
        self.total += e.size
        if e.size:
            self.max = max(self.max, float(e.max()))
        zero = e == 0
        self.counts[0] += int(zero.sum())
        nz = e[~zero]
        idx = np.searchsorted(self.edges, nz, side="left")   # 0: below first edge; len: above last
        self.counts[1:] += np.bincount(idx, minlength=self.edges.size + 1)
        return None

    def percentile(self, q: float) -> float:
        if self.total == 0:
            return math.nan
        target = q / 100.0 * self.total
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, target, side="left"))
        if i == 0:
            return 0.0
        if i == 1:
            return float(self.edges[0])
        if i - 1 >= self.edges.size:
            return self.max
        return min(float(self.edges[i - 1]), self.max)

    def summary(self) -> dict:
        return {"percentiles": {f"p{q:g}": self.percentile(q) for q in self.QUANTILES},
                "max": self.max, "elements": self.total,
                "method": "fixed log histogram 1e-10..1e6, 50 bins/decade; upper bin edge reported"}


# --------------------------------------------------------------------------- embeddings
class RetrievalAgreement(Metric):
    """Nearest neighbour (cosine) of each sample within the evaluation set agrees.

    Needs all embeddings at once, so it keeps at most ``max_samples`` (default
    2048, the first ones) normalised float32 embeddings per engine: memory is
    bounded by ``2 x max_samples x dim`` floats whatever the evaluation size,
    and the result covers those samples (reported as ``samples``).
    """

    name = "retrieval_agreement"
    binary = True
    percent = True
    ideal = 1.0
    description = "nearest neighbour within the evaluation set is the same sample as for the reference"

    def __init__(self, output: str | None = None, max_samples: int = 2048):
        self.output = output
        self.max_samples = max_samples
        self.ref: list[np.ndarray] = []
        self.cand: list[np.ndarray] = []
        self.kept = 0

    @staticmethod
    def _norm(x):
        x = _flat(x).astype(np.float32)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(n, 1e-12)

    def update(self, ref, cand, labels):
        room = self.max_samples - self.kept
        if room > 0:
            r = self._norm(self.select(ref))[:room]
            c = self._norm(self.select(cand))[:room]
            self.ref.append(r)
            self.cand.append(c)
            self.kept += r.shape[0]
        return None

    def finish(self):
        if self.kept < 2:
            return None
        r = np.concatenate(self.ref)
        c = np.concatenate(self.cand)
        out = np.empty(r.shape[0])
        step = 512
        for i in range(0, r.shape[0], step):
            sr = r[i:i + step] @ r.T
            sc = c[i:i + step] @ c.T
            rows = np.arange(sr.shape[0])
            sr[rows, rows + i] = -np.inf
            sc[rows, rows + i] = -np.inf
            out[i:i + step] = (np.argmax(sr, axis=1) == np.argmax(sc, axis=1))
        return out

    def summary(self) -> dict:
        return {"samples": self.kept, "max_samples": self.max_samples}


# --------------------------------------------------------------------------- dense maps
class MapIoU(Metric):
    name = "iou"
    percent = True
    ideal = 1.0

    def __init__(self, threshold: float = 0.3, output: str | None = None):
        self.threshold = threshold
        self.output = output
        self.name = f"iou@{threshold:g}"
        self.description = (f"IoU of the maps thresholded at {threshold:g} (output > threshold), per sample; "
                            "1 when both are empty")

    def update(self, ref, cand, labels):
        r = _flat(self.select(ref)) > self.threshold
        c = _flat(self.select(cand)) > self.threshold
        inter = (r & c).sum(axis=1).astype(np.float64)
        union = (r | c).sum(axis=1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


# --------------------------------------------------------------------------- sequences / CTC
def edit_distance(a, b) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


class CTCDecoder:
    """Greedy CTC decoding: argmax per time step, merge repeats, drop the blank.

    ``characters`` maps class ``i`` (1-based, class 0 the blank) to ``characters[i-1]``;
    ``space_last`` adds a space as the class after the last character (PaddleOCR's
    ``use_space_char``). Without characters, classes decode to ``chr``-free tuples of ints.
    """

    def __init__(self, characters: list[str] | None = None, blank: int = 0, space_last: bool = True):
        self.blank = blank
        self.table = None
        if characters is not None:
            chars = list(characters) + ([" "] if space_last else [])
            self.table = [""] + chars   # index 0: blank

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], key: str = "character") -> "CTCDecoder":
        text = metadata.get(key)
        if text is None:
            return cls(None)
        chars = text.split("\n")
        while chars and chars[-1] == "":
            chars.pop()
        return cls(chars)

    def indices(self, probs: np.ndarray) -> list[list[int]]:
        """[N, T, C] -> per sample the collapsed, blank-free class indices."""
        p = np.asarray(probs)
        if p.ndim != 3:
            raise MetricError(f"CTC metrics need [N, T, C] outputs, got shape {tuple(p.shape)}")
        am = np.argmax(p, axis=2)
        out = []
        for row in am:
            keep = np.ones(row.shape[0], dtype=bool)
            keep[1:] = row[1:] != row[:-1]
            keep &= row != self.blank
            out.append(row[keep].tolist())
        return out

    def decode(self, probs: np.ndarray):
        seqs = self.indices(probs)
        if self.table is None:
            return [tuple(s) for s in seqs]
        t = self.table
        return ["".join(t[i] if 0 <= i < len(t) else "\ufffd" for i in s) for s in seqs]


class _CTCBase(Metric):
    def __init__(self, output: str | None = None, decoder: CTCDecoder | None = None):
        self.output = output
        self.decoder = decoder

    def bind(self, ctx):
        super().bind(ctx)
        if self.decoder is None:
            self.decoder = CTCDecoder.from_metadata(ctx.metadata)


class CTCAgreement(_CTCBase):
    name = "ctc_agreement"
    binary = True
    percent = True
    ideal = 1.0
    description = "greedy-decoded sequence identical to the reference's"

    def update(self, ref, cand, labels):
        r = self.decoder.decode(self.select(ref))
        c = self.decoder.decode(self.select(cand))
        return np.array([float(a == b) for a, b in zip(r, c)])


class CTCCerToReference(_CTCBase):
    name = "cer_to_reference"
    higher_is_better = False
    ideal = 0.0
    percent = True
    description = "character error rate of the candidate's decoding against the reference's decoding"

    def update(self, ref, cand, labels):
        r = self.decoder.decode(self.select(ref))
        c = self.decoder.decode(self.select(cand))
        return (np.array([edit_distance(b, a) for a, b in zip(r, c)], dtype=np.float64),
                np.array([max(len(a), 1) for a in r], dtype=np.float64))


def _text_labels(labels, n):
    if labels is None:
        raise MetricError("metric needs text labels but the data has none")
    lab = list(labels)
    if len(lab) != n:
        raise MetricError(f"{len(lab)} labels for a batch of {n}")
    return ["" if x is None else str(x) for x in lab]


class CER(_CTCBase):
    name = "cer"
    kind = "engine"
    needs_labels = True
    higher_is_better = False
    percent = True
    description = "character error rate against the labels: total edits / total label characters"

    def update(self, out, labels):
        hyp = self.decoder.decode(self.select(out))
        lab = _text_labels(labels, len(hyp))
        return (np.array([edit_distance(h, t) for h, t in zip(hyp, lab)], dtype=np.float64),
                np.array([max(len(t), 1) for t in lab], dtype=np.float64))


class LineAccuracy(_CTCBase):
    name = "line_accuracy"
    kind = "engine"
    needs_labels = True
    binary = True
    percent = True
    description = "decoded sequence equals the label exactly"

    def update(self, out, labels):
        hyp = self.decoder.decode(self.select(out))
        lab = _text_labels(labels, len(hyp))
        return np.array([float(h == t) for h, t in zip(hyp, lab)])


# --------------------------------------------------------------------------- user callables
class FunctionMetric(Metric):
    """Wraps ``f(ref, cand, labels)`` (paired) or ``f(output, labels)`` (engine)."""

    def __init__(self, func: Callable, name: str | None = None, kind: str | None = None, **attrs):
        self.func = func
        self.name = name or getattr(func, "metric_name", None) or getattr(func, "__name__", "metric")
        self.kind = kind or getattr(func, "metric_kind", None) or _guess_kind(func)
        if self.kind not in ("paired", "engine"):
            raise MetricError(f"metric {self.name}: kind must be 'paired' or 'engine', not {self.kind!r}")
        for key in ("higher_is_better", "ideal", "needs_labels", "binary", "percent", "unit", "aggregate",
                    "output", "description"):
            val = attrs.get(key, getattr(func, f"metric_{key}", None))
            if val is not None:
                setattr(self, key, val)
        if not self.description:
            self.description = (inspect.getdoc(func) or "").split("\n")[0] or f"user metric {self.name}"

    def update(self, *args):
        if self.kind == "paired":
            ref, cand, labels = args
            res = self.func(self.select(ref), self.select(cand), labels)
            n = self.select(ref).shape[0]
        else:
            out, labels = args
            res = self.func(self.select(out), labels)
            n = self.select(out).shape[0]
        return _check_values(res, n, self.name)


def _guess_kind(func) -> str:
    try:
        params = [p for p in inspect.signature(func).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return "paired"
    return "engine" if len(params) == 2 else "paired"


def _check_values(res, n: int, name: str):
    if isinstance(res, tuple):
        if len(res) != 2:
            raise MetricError(f"metric {name} returned a tuple of {len(res)}; expected (num, den)")
        num, den = (np.asarray(v, dtype=np.float64).reshape(-1) for v in res)
        if num.shape[0] != n or den.shape[0] != n:
            raise MetricError(f"metric {name} returned {num.shape[0]}/{den.shape[0]} values for {n} samples")
        return num, den
    a = np.asarray(res, dtype=np.float64).reshape(-1)
    if a.shape[0] != n:
        if a.shape[0] == 1:
            return np.full(n, float(a[0]))
        raise MetricError(f"metric {name} returned {a.shape[0]} values for a batch of {n} samples")
    return a


def metric(name: str | None = None, *, kind: str | None = None, register: bool = True, **attrs):
    """Decorator: mark a function as a metric (and add it to the registry)."""

    def deco(func):
        func.metric_name = name or func.__name__
        if kind:
            func.metric_kind = kind
        for k, v in attrs.items():
            setattr(func, f"metric_{k}", v)
        if register:
            register_metric(func.metric_name, lambda f=func: FunctionMetric(f))
        return func

    return deco


# --------------------------------------------------------------------------- registry
REGISTRY: dict[str, Callable[[], Metric]] = {
    "top1": lambda: TopK(1),
    "top5": lambda: TopK(5),
    "top1_agreement": Top1Agreement,
    "kl_divergence": KLDivergence,
    "cosine": Cosine,
    "sqnr": SQNR,
    "max_abs_error": MaxAbsError,
    "mean_abs_error": MeanAbsError,
    "mean_rel_error": MeanRelError,
    "rel_l2_error": RelL2Error,
    "abs_error_percentiles": ErrorPercentiles,
    "retrieval_agreement": RetrievalAgreement,
    "iou": MapIoU,
    "ctc_agreement": CTCAgreement,
    "cer_to_reference": CTCCerToReference,
    "cer": CER,
    "line_accuracy": LineAccuracy,
}

TASKS: dict[str, list[str]] = {
    "classification": ["top1", "top5", "top1_agreement", "kl_divergence", "cosine", "sqnr"],
    "embedding": ["cosine", "retrieval_agreement", "sqnr", "rel_l2_error"],
    "dense": ["iou", "mean_abs_error", "max_abs_error", "sqnr", "abs_error_percentiles"],
    "ctc": ["line_accuracy", "cer", "ctc_agreement", "cer_to_reference", "sqnr"],
    "tensor": ["cosine", "sqnr", "max_abs_error", "mean_abs_error", "mean_rel_error", "rel_l2_error",
               "abs_error_percentiles"],
}


def register_metric(name: str, factory: Callable[[], Metric] | Metric | Callable) -> None:
    """Add a metric: a Metric subclass/factory, a Metric instance, or a plain function."""
    REGISTRY[name] = _as_factory(factory, name)


def _as_factory(obj, name: str | None = None) -> Callable[[], Metric]:
    if isinstance(obj, Metric):
        return obj.fresh
    if isinstance(obj, type) and issubclass(obj, Metric):
        return obj
    if callable(obj):
        # a factory returning a Metric, or a plain metric function
        try:
            params = inspect.signature(obj).parameters
            required = [p for p in params.values() if p.default is p.empty
                        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            required = [None, None]
        if not required and not hasattr(obj, "metric_name"):
            return obj
        return lambda: FunctionMetric(obj, name=getattr(obj, "metric_name", None) or name)
    raise MetricError(f"cannot use {obj!r} as a metric")


def load_metric(spec: "str | Metric | Callable") -> Metric:
    """A registry name, ``file.py:func``, ``module:func``, a Metric or a callable -> a fresh Metric."""
    if isinstance(spec, Metric):
        return spec.fresh()
    if callable(spec) and not isinstance(spec, str):
        m = _as_factory(spec)()
        if not isinstance(m, Metric):
            raise MetricError(f"{spec!r} did not produce a Metric")
        return m
    if spec in REGISTRY:
        return REGISTRY[spec]()
    if ":" not in spec:
        raise MetricError(f"unknown metric '{spec}' (known: {', '.join(sorted(REGISTRY))}; "
                          "or give file.py:function)")
    where, func_name = spec.rsplit(":", 1)
    if where.endswith(".py") or os.path.sep in where:
        if not os.path.isfile(where):
            raise MetricError(f"metric file not found: {where}")
        mod_name = f"_calib_user_metric_{abs(hash(os.path.abspath(where)))}"
        sp = importlib.util.spec_from_file_location(mod_name, where)
        module = importlib.util.module_from_spec(sp)
        try:
            sp.loader.exec_module(module)
        except Exception as exc:
            raise MetricError(f"cannot import metric file {where}: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise MetricError(f"cannot import metric module {where}: {exc}") from None
    obj = getattr(module, func_name, None)
    if obj is None:
        raise MetricError(f"{where} has no '{func_name}'")
    m = _as_factory(obj, func_name)()
    if not isinstance(m, Metric):
        raise MetricError(f"{spec} did not produce a Metric")
    return m


def metrics_for_task(task: str, has_labels: bool, extra: list[Any] = ()) -> list[Metric]:
    if task not in TASKS:
        raise MetricError(f"unknown task '{task}' (choose from {', '.join(TASKS)} or auto)")
    ms = [REGISTRY[n]() for n in TASKS[task]]
    ms = [m for m in ms if has_labels or not m.needs_labels]
    ms += [load_metric(e) for e in extra]
    return ms
