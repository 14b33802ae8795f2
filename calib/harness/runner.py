"""Run a reference engine and any number of candidates in ONE pass over the data.

Each batch is decoded once and fed to every engine; metrics and per-layer
accumulators are updated and the outputs dropped before the next batch, so
memory holds one batch of outputs (and captures) plus a few floats per sample.

    from calib.harness import compare, engine
    ref = engine("fp32.onnx"); cand = engine("model.int8.onnx")
    report = compare(ref, [cand], dataset.batches(16), task="auto")
    print(report.summary_line())
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..backends.base import Engine
from ..errors import DataError, HarnessError, LabelError
from ..model import Model
from . import metrics as M
from .attribution import LayerAccumulator, float_activations, map_tensors, smoothing_factors, smoothing_scales
from .capture import ATTRIBUTE_MEMORY, CaptureRunner
from .stats import (DEFAULT_RESAMPLES, DEFAULT_SEED, Series, bootstrap_ci, mcnemar_exact,
                    paired_bootstrap_diff)

TASK_NAMES = tuple(M.TASKS)   # one list of tasks: the metric registry's


# --------------------------------------------------------------------------- engines
def engine(source: "Engine | Model | str | os.PathLike", *, name: str | None = None,
           capture: Sequence[str] = (), **kw) -> Engine:
    """An :class:`Engine` from an engine (returned as is), a :class:`Model` or an ONNX path.

    ``.onnx`` paths and Models become :class:`calib.backends.onnxruntime.OrtEngine`;
    other files are handed to the TensorRT backend (imported lazily).
    """
    if isinstance(source, Engine):
        return source
    from ..backends.onnxruntime import OrtEngine

    if isinstance(source, Model):
        return OrtEngine(source, name=name, capture=capture, **kw)
    p = Path(source)
    if p.suffix.lower() in (".plan", ".engine", ".trt"):
        from ..backends import tensorrt as trt  # raises TensorRTUnavailableError without TensorRT

        return trt.TrtEngine(p, name=name)  # pragma: no cover - needs a GPU
    return OrtEngine(p, name=name, capture=capture, **kw)


def _model_of(e: Engine) -> Model | None:
    return getattr(e, "model", None) if isinstance(getattr(e, "model", None), Model) else None


def _metadata(e: Engine) -> dict[str, str]:
    m = _model_of(e)
    if m is None:
        return {}
    return {p.key: p.value for p in m.proto.metadata_props}


# --------------------------------------------------------------------------- batches
@dataclass
class _Batch:
    feed: dict
    labels: Any
    ids: list


def _batches(data, batch_size: int, progress) -> Iterable:
    if hasattr(data, "batches") and callable(data.batches):
        return data.batches(batch_size=batch_size, progress=progress)
    return data


def _as_batch(item, counter: int) -> _Batch:
    if hasattr(item, "feed"):
        feed = item.feed
        labels = getattr(item, "labels", None)
        ids = getattr(item, "ids", None)
    elif isinstance(item, Mapping):
        feed, labels, ids = item, None, None
    elif isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[0], Mapping):
        feed, labels = item[0], item[1]
        ids = item[2] if len(item) == 3 else None
    else:
        raise DataError(f"cannot use {type(item).__name__} as a batch: expected Batch, feed dict or (feed, labels)")
    n = next(iter(feed.values())).shape[0] if feed else 0
    if ids is None:
        ids = [str(counter + i) for i in range(n)]
    return _Batch(dict(feed), labels, list(ids))


def read_text_labels(path: "str | os.PathLike") -> dict[str, str]:
    """``file<TAB>text`` per line (PaddleOCR / calib ocr-lines labels.tsv) -> {file name: text}."""
    p = Path(path)
    if not p.is_file():
        raise LabelError(f"labels file not found: {p}")
    out = {}
    with open(p, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or not row[0].strip():
                continue
            if len(row) < 2:
                raise LabelError(f"{p}:{i}: expected 'file<TAB>text'")
            out[row[0].strip()] = "\t".join(row[1:])
    return out


def _lookup_labels(ids, table: Mapping[str, Any]):
    out = []
    for i in ids:
        key = str(i)
        if key not in table:
            base = os.path.basename(key)
            if base not in table:
                raise LabelError(f"no label for sample '{key}'")
            key = base
        out.append(table[key])
    return out


# --------------------------------------------------------------------------- task detection
def primary_output(outputs: Mapping[str, np.ndarray], names: Sequence[str],
                   given: str | None = None) -> tuple[str, str]:
    """The output the task's metrics score, and why: *given* if set, else the first floating-point
    output of rank 2 (``[N, C]``, or ``[N, C, 1, ...]``: logits, probabilities, a pooled embedding)
    when the model has several float outputs, else its first float output, else its first output.

    Models often pass inputs through (token ids, attention masks) or return several views (token
    embeddings ``[N, T, D]`` beside the pooled ``[N, D]``); scoring an integer copy of the input
    would report a perfect candidate whatever it computes."""
    if given is not None:
        if given not in names:
            raise HarnessError(f"output '{given}' is not an output of the reference ({', '.join(names)})")
        return given, "chosen"
    floats = [n for n in names if n in outputs and np.asarray(outputs[n]).dtype.kind == "f"]
    if not floats:
        return names[0], "first output (none is floating point)"

    def pooled(n):
        x = np.asarray(outputs[n])
        return x.ndim == 2 or (x.ndim > 2 and all(d == 1 for d in x.shape[2:]))

    ranked = [n for n in floats if pooled(n)] if len(floats) > 1 else []
    if ranked:
        return ranked[0], f"first float output of shape [N, C] among {len(floats)} float outputs"
    if floats[0] != names[0]:
        return floats[0], "first floating-point output"
    return names[0], "first output"


def detect_task(sample: np.ndarray, metadata: Mapping[str, str], labels) -> tuple[str, str]:
    """Guess the task from the reference's first output; returns (task, reason)."""
    x = np.asarray(sample)
    text_labels = labels is not None and len(labels) and isinstance(list(labels)[0], str)
    if x.ndim == 3 and ("character" in metadata or text_labels):
        why = "model metadata holds a 'character' list" if "character" in metadata else "labels are text"
        return "ctc", f"output [N, T, C] and {why}"
    squeezed = x.ndim == 2 or (x.ndim > 2 and all(d == 1 for d in x.shape[2:]))
    if squeezed and x.ndim >= 2:
        c = x.shape[1]
        if labels is not None:
            return "classification", f"output [N, {c}] with integer labels"
        if c > 1 and M.looks_like_probabilities(x.reshape(x.shape[0], c), axis=1):
            return "classification", f"output [N, {c}] sums to 1 (probabilities)"
        if c in (10, 100, 1000, 1001, 21841, 21843):
            return "classification", f"output [N, {c}]: a common number of classes"
        return "embedding", f"output [N, {c}] without labels: treated as an embedding"
    if x.ndim == 4 and x.shape[2] > 1 and x.shape[3] > 1:
        return "dense", f"output {list(x.shape)}: a dense map"
    return "tensor", f"output shape {list(x.shape)}: generic tensor comparison"


# --------------------------------------------------------------------------- results
@dataclass
class MetricResult:
    name: str
    spec: dict
    samples: int
    candidate: dict | None = None        # Interval.to_dict(): value and CI of the candidate
    reference: dict | None = None        # engine metrics: value and CI of the reference
    difference: dict | None = None       # engine metrics: candidate - reference, paired CI
    mcnemar: dict | None = None
    verdict: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "spec": self.spec, "samples": self.samples, "candidate": self.candidate,
                "reference": self.reference, "difference": self.difference, "mcnemar": self.mcnemar,
                "verdict": self.verdict, "extra": self.extra}


class _Acc:
    """Per-sample values of one metric instance, appended batch by batch."""

    def __init__(self, metric: M.Metric):
        self.metric = metric
        self.num: list[np.ndarray] = []
        self.den: list[np.ndarray] = []
        self.has_den = False

    def add(self, values) -> None:
        if values is None:
            return
        if isinstance(values, tuple):
            num, den = values
            self.has_den = True
        else:
            num, den = values, np.ones(np.shape(values)[0])
        self.num.append(np.asarray(num, dtype=np.float64).reshape(-1))
        self.den.append(np.asarray(den, dtype=np.float64).reshape(-1))

    def series(self) -> Series | None:
        self.add(self.metric.finish())
        if not self.num:
            return None
        num = np.concatenate(self.num)
        den = np.concatenate(self.den) if self.has_den else None
        return Series(num, den, self.metric.aggregate)


# --------------------------------------------------------------------------- the pass
def compare(reference: "Engine | Model | str", candidates: Sequence["Engine | Model | str"], data,
            *, task: str = "auto", metrics: Sequence[Any] | None = None, extra_metrics: Sequence[Any] = (),
            attribute: bool | Sequence[str] = False, labels: "Mapping[str, Any] | str | None" = None,
            batch_size: int = 16, progress=None, resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED, top_layers: int = 10, dataset_info: dict | None = None,
            output: str | None = None, smoothing=None, attribute_memory: int = ATTRIBUTE_MEMORY):
    """Evaluate *candidates* against *reference* in one pass over *data*; returns a :class:`Report`.

    *data*: a calib Dataset (``.batches()`` is called with *batch_size*), or an
    iterable of Batch objects, feed dicts or ``(feed, labels[, ids])`` tuples.
    *task*: ``auto`` or one of ``classification, embedding, dense, ctc, tensor``.
    *metrics*: replaces the task's metrics (registry names, ``file.py:func``, Metric
    objects or callables); *extra_metrics* adds to them.
    *attribute*: True for per-layer SQNR over every float tensor (ONNX Runtime
    engines), or a list of reference tensor names (:mod:`calib.harness.attribution`). The
    captured tensors held at once stay within *attribute_memory* bytes (reference and one
    candidate; :mod:`calib.harness.capture`), whatever the model and batch size.
    *smoothing*: the channel smoothing factors (:mod:`calib.smooth`) of the candidates, undone
    before their tensors are compared: None (default) reads them off each candidate's scaled
    constants (:func:`~calib.harness.attribution.smoothing_factors`); a mapping
    ``{tensor: factors}`` (``CalibrationResult.smoothing``) applies to every candidate; a
    sequence gives one mapping (or None: read them off) per candidate; False undoes none.
    *labels*: a mapping from sample id (or file name) to label, or a ``file<TAB>text``
    TSV path -- for text labels (CTC) the readers do not carry.
    *output*: the output the task's metrics score (default: :func:`primary_output`'s choice).
    """
    from .report import Report

    if task != "auto" and task not in TASK_NAMES:
        raise HarnessError(f"unknown task '{task}' (choose from auto, {', '.join(TASK_NAMES)})")
    ref = engine(reference, name=None)
    cands = [engine(c) for c in candidates]
    if not cands:
        raise HarnessError("no candidate to evaluate")
    _unique_names(ref, cands)
    label_table = read_text_labels(labels) if isinstance(labels, (str, os.PathLike)) else labels

    ref_names = list(ref.output_names)
    cand_names = [list(c.output_names) for c in cands]

    # per-layer attribution: captures run by a CaptureRunner on the engines' models
    capture, notes = _attribution(ref, cands, attribute, smoothing, attribute_memory)

    timing = {"decode_s": 0.0, "engines_s": {e.info.name: 0.0 for e in [ref, *cands]}, "metrics_s": 0.0}
    bound = False
    detected = None
    ref_accs: list[_Acc] = []          # engine metrics on the reference
    cand_accs: list[list[_Acc]] = []   # per candidate, same order as metric list
    metric_list: list[M.Metric] = []
    n_samples = 0
    has_labels = False
    start = time.perf_counter()
    it = iter(_batches(data, batch_size, progress))
    counter = 0
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            break
        b = _as_batch(item, counter)
        timing["decode_s"] += time.perf_counter() - t0
        if label_table is not None:
            b.labels = _lookup_labels(b.ids, label_table)
        n = len(b.ids)
        counter += n

        if capture is not None:
            ref_all, captured = capture.run(b.feed)
        else:
            t0 = time.perf_counter()
            ref_all, captured = ref.run(b.feed), {}
            timing["engines_s"][ref.info.name] += time.perf_counter() - t0
        ref_out = {k: ref_all[k] for k in ref_names if k in ref_all}
        cand_all = []
        for j, c in enumerate(cands):
            if j in captured:
                cand_all.append(captured[j])
                continue
            t0 = time.perf_counter()
            out = c.run(b.feed)
            timing["engines_s"][c.info.name] += time.perf_counter() - t0
            cand_all.append(out)

        t0 = time.perf_counter()
        if not bound:
            has_labels = b.labels is not None
            meta = _metadata(ref)
            primary, why = primary_output(ref_out, ref_names, output)
            if task == "auto":
                detected = detect_task(ref_out[primary], meta, b.labels)
            else:
                detected = (task, "given")
            if len(ref_names) > 1:
                detected = (detected[0], f"{detected[1]}; scored output '{primary}' ({why})")
            if metrics is not None:
                metric_list = [M.load_metric(m) for m in metrics]
            else:
                metric_list = M.metrics_for_task(detected[0], has_labels, list(extra_metrics))
            ctx = M.MetricContext(ref_names, meta, ref_out, has_labels, primary=primary)
            for m in metric_list:
                if m.needs_labels and not has_labels:
                    raise HarnessError(f"metric {m.name} needs labels but the data has none")
                m.bind(ctx)
            ref_accs = [_Acc(m.fresh()) if m.kind == "engine" else None for m in metric_list]
            cand_accs = [[_Acc(m.fresh()) for m in metric_list] for _ in cands]
            bound = True
        elif (b.labels is not None) != has_labels:
            raise DataError("some batches have labels and others do not")

        for k, m in enumerate(metric_list):
            if ref_accs[k] is not None:
                ref_accs[k].add(ref_accs[k].metric.update(ref_out, b.labels))
        for j, out in enumerate(cand_all):
            c_out = _align(ref_names, out, cand_names[j], cands[j].info.name)
            for k, m in enumerate(metric_list):
                acc = cand_accs[j][k]
                if m.kind == "engine":
                    acc.add(acc.metric.update(c_out, b.labels))
                else:
                    acc.add(acc.metric.update(ref_out, c_out, b.labels))
        timing["metrics_s"] += time.perf_counter() - t0
        n_samples += n
        del ref_all, ref_out, cand_all, captured
    timing["total_s"] = time.perf_counter() - start
    if capture is not None:
        for name, sec in capture.timing.items():
            timing["engines_s"][name] += sec
        notes.extend(capture.notes())
    if not bound or n_samples == 0:
        raise HarnessError("the data yielded no samples")

    t0 = time.perf_counter()
    ref_series = [a.series() if a is not None else None for a in ref_accs]
    ref_ci: dict[int, dict] = {}   # the reference's interval is the same for every candidate
    results = []
    for j, c in enumerate(cands):
        rs = []
        for k, m in enumerate(metric_list):
            rs.append(_summarise(m, cand_accs[j][k], ref_series[k], resamples, seed, ref_ci, k))
        results.append(rs)
    attributions = {cands[j].info.name: acc.result(top_layers) for j, acc in capture.accs.items()} if capture else {}
    timing["statistics_s"] = time.perf_counter() - t0

    return Report(
        reference=_engine_dict(ref), candidates=[_engine_dict(c) for c in cands],
        task=detected[0], task_reason=detected[1], samples=n_samples, has_labels=has_labels,
        metrics={c.info.name: r for c, r in zip(cands, results)}, attributions=attributions,
        settings={"resamples": resamples, "seed": seed, "level": 0.95, "batch_size": batch_size,
                  "ci_method": "paired percentile bootstrap over samples"},
        dataset=dataset_info or (data.describe() if hasattr(data, "describe") else None),
        timing=timing, notes=notes)


def _attribution(ref: Engine, cands: list[Engine], attribute, smoothing, budget: int):
    """(the :class:`CaptureRunner` of the attributed candidates or None, notes)."""
    notes: list[str] = []
    if not attribute:
        return None, notes
    ref_model = _model_of(ref)
    if ref_model is None:
        return None, ["per-layer attribution needs an ONNX Runtime reference; skipped"]
    if smoothing is None or smoothing is False or isinstance(smoothing, Mapping):
        per_cand = [smoothing] * len(cands)
    else:
        per_cand = list(smoothing)
        if len(per_cand) != len(cands):
            raise HarnessError(f"smoothing: {len(per_cand)} entries for {len(cands)} candidates")
    wanted = list(attribute) if not isinstance(attribute, bool) else float_activations(ref_model)
    accs = {}
    for j, c in enumerate(cands):
        cm = _model_of(c)
        if cm is None:
            notes.append(f"{c.info.name}: per-layer attribution needs an ONNX Runtime engine; skipped")
            continue
        pairs = map_tensors(ref_model, cm, wanted)
        if not pairs:
            notes.append(f"{c.info.name}: no intermediate tensor corresponds to the reference; skipped")
            continue
        factors = per_cand[j]
        if factors is None:
            factors = smoothing_factors(ref_model, cm)
        scales = smoothing_scales(ref_model, factors) if factors else {}
        accs[j] = LayerAccumulator(c.info.name, ref_model, pairs, scales)
    if not accs:
        return None, notes
    notes.append("per-layer attribution: the reference and the attributed candidates ran in ONNX Runtime without "
                 "graph optimisation (so every intermediate tensor exists as the model defines it); all metrics "
                 "come from these runs")
    return CaptureRunner(ref, {j: cands[j] for j in accs}, accs, budget), notes


def _unique_names(ref: Engine, cands: list[Engine]) -> None:
    seen = {ref.info.name}
    for c in cands:
        base, k = c.info.name, 2
        while c.info.name in seen:
            c.info.name = f"{base}#{k}"
            k += 1
        seen.add(c.info.name)


def _align(ref_names: list[str], out: dict, names: list[str], cand: str) -> dict:
    """The candidate's outputs under the reference's names (by name, else by position)."""
    if all(n in out for n in ref_names):
        return out
    if len(names) == len(ref_names):
        return {rn: out[cn] for rn, cn in zip(ref_names, names)}
    raise HarnessError(f"{cand}: outputs {names} do not correspond to the reference's {ref_names}")


def _engine_dict(e: Engine) -> dict:
    d = {"name": e.info.name, "backend": e.info.backend, "precision": e.info.precision}
    m = _model_of(e)
    if m is not None:
        d["model"] = str(m.path) if m.path else m.name
        d["sha256"] = m.sha256
    return d


def _summarise(m: M.Metric, acc: _Acc, ref_series: Series | None, resamples: int, seed: int,
               ref_ci: dict, key: int) -> MetricResult:
    """One candidate's result for metric *m*; *ref_ci* caches the reference's interval by *key*."""
    metric = acc.metric
    series = acc.series()
    spec = metric.spec()
    extra = metric.summary()
    res = MetricResult(m.name, spec, len(series) if series is not None else 0, extra=extra)
    if series is None:
        res.verdict = _fmt_summary(extra)
        return res
    t = metric.transform
    res.candidate = bootstrap_ci(series, transform=t, resamples=resamples, seed=seed).to_dict()
    if metric.kind == "engine" and ref_series is not None:
        if key not in ref_ci:
            ref_ci[key] = bootstrap_ci(ref_series, transform=t, resamples=resamples, seed=seed).to_dict()
        res.reference = dict(ref_ci[key])
        res.difference = paired_bootstrap_diff(series, ref_series, transform=t, resamples=resamples,
                                               seed=seed).to_dict()
        if metric.binary and series.den is None and ref_series.den is None:
            res.mcnemar = mcnemar_exact(ref_series.num > 0.5, series.num > 0.5).to_dict()
    from .report import verdict

    res.verdict = verdict(res)
    return res


def _fmt_summary(extra: dict) -> str:
    p = extra.get("percentiles")
    if p:
        return "; ".join(f"{k} {v:.3g}" for k, v in p.items())
    return ""


def evaluate(reference, candidates, dataset, *, task: str = "auto", attribute: bool | Sequence[str] = False,
             out: "str | os.PathLike | None" = None, force: bool = False, metrics=None, extra_metrics=(),
             labels=None, batch_size: int = 16, progress=None, resamples: int = DEFAULT_RESAMPLES,
             seed: int = DEFAULT_SEED, plots: bool = True, output: str | None = None, smoothing=None,
             attribute_memory: int = ATTRIBUTE_MEMORY):
    """Paths / Models / Engines in, :class:`Report` out; with *out*, the report files are written there
    (refusing to overwrite them unless *force*). The other arguments are :func:`compare`'s."""
    from .report import report_paths
    from ..utils import check_outputs

    cand_list = [candidates] if isinstance(candidates, (str, os.PathLike, Model, Engine)) else list(candidates)
    if out is not None:   # fail before the (long) pass, not after
        check_outputs(report_paths(out, plots=plots), force, option="force")
    rep = compare(reference, cand_list, dataset, task=task, metrics=metrics, extra_metrics=extra_metrics,
                  attribute=attribute, labels=labels, batch_size=batch_size, progress=progress,
                  resamples=resamples, seed=seed, output=output, smoothing=smoothing,
                  attribute_memory=attribute_memory)
    if out is not None:
        rep.write(out, force=force, plots=plots)
    return rep
