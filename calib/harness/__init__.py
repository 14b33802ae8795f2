"""Accuracy harness: candidates vs an FP32 reference, with intervals and per-layer attribution.

    from calib.harness import compare, evaluate, engine

    report = compare(engine("fp32.onnx"), [engine("int8.onnx")], dataset, task="auto")
    report.summary_line()      # one line with intervals and a verdict
    report.write("out/")       # report.json, report.md, metrics.png, layers_<candidate>.png

``evaluate(reference, candidates, dataset, task=..., attribute=False, out=None)``
does the same from paths and writes the report when *out* is given. ``attribute=True`` adds
per-layer SQNR (:mod:`.attribution`), captured within ``attribute_memory`` bytes (:mod:`.capture`).
"""
from .attribution import Attribution, LayerAccumulator, map_tensors, smoothing_factors
from .capture import ATTRIBUTE_MEMORY
from .metrics import (REGISTRY, TASKS, CTCDecoder, Metric, MetricContext, MetricError, edit_distance,
                      load_metric, metric, register_metric)
from .report import SCHEMA, VERSION, Report, load_report
from .runner import HarnessError, MetricResult, compare, detect_task, engine, evaluate, read_text_labels
from .stats import Interval, Series, bootstrap_ci, mcnemar_exact, mcnemar_p, paired_bootstrap_diff

__all__ = [
    "compare", "evaluate", "engine", "detect_task", "read_text_labels", "Report", "MetricResult",
    "HarnessError", "load_report", "SCHEMA", "VERSION",
    "Metric", "MetricContext", "MetricError", "metric", "register_metric", "load_metric", "REGISTRY", "TASKS",
    "CTCDecoder", "edit_distance",
    "Attribution", "LayerAccumulator", "map_tensors", "smoothing_factors", "ATTRIBUTE_MEMORY",
    "Interval", "Series", "bootstrap_ci", "paired_bootstrap_diff", "mcnemar_exact", "mcnemar_p",
]
