"""Mixed-precision tuning: per-group INT8 / FP16 / FP32 under an accuracy budget (issue 17).

One layer above the harness, below the pipelines: it takes what it needs from the pipelines
(ranges, smoothing factors, bias shifts) as arguments; ``calib.mixed.search`` measures those with
:mod:`calib.pipeline` and runs the whole search.

- :mod:`calib.tuning.groups`: the node sets TensorRT fuses and quantizes together, group plans;
- :mod:`calib.tuning.latency`: their predicted latency per precision;
- :mod:`calib.tuning.budget`: ``agreement>=0.995`` and the other budgets;
- :mod:`calib.tuning.evaluator`: plan -> Q/DQ model -> budget metric on the search split;
- :mod:`calib.tuning.sensitivity`: per-group proxy and direct sensitivities, Spearman's rho;
- :mod:`calib.tuning.search`: the loop, our strategy and the baseline schemes;
- :mod:`calib.tuning.report`: ``search.png``.
"""
from __future__ import annotations

from .budget import Budget, Measurement, parse_budget
from .groups import KINDS, QuantGroup, find_groups, group_plan
from .search import ALGORITHMS, Evaluation, Outcome, SearchSpace, default_max_evals, make_strategy, run

__all__ = ["KINDS", "QuantGroup", "find_groups", "group_plan", "Budget", "Measurement", "parse_budget",
           "ALGORITHMS", "Evaluation", "Outcome", "SearchSpace", "default_max_evals", "make_strategy", "run"]
