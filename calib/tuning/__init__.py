"""Mixed-precision tuning: quantization groups, latency models, sensitivity and the search.

One layer above the harness, below the pipelines: it takes what it needs from the pipelines
(ranges, smoothing factors) as arguments. :mod:`calib.tuning.groups` splits a model into the
node sets TensorRT fuses and quantizes together; :mod:`calib.tuning.latency` predicts their
latency per precision.
"""
from __future__ import annotations

from .groups import KINDS, QuantGroup, find_groups, group_plan

__all__ = ["KINDS", "QuantGroup", "find_groups", "group_plan"]
