"""Mixed-precision search: per-group INT8 / FP16 / FP32 under an accuracy budget (issue 17).

One layer above the harness, below the pipelines: plans are scored with :mod:`calib.harness`;
ranges, smoothing factors and bias shifts come in as arguments (``calib.mixed.search`` measures
them with :mod:`calib.pipeline`).

- :mod:`calib.tuning.budget`: ``agreement>=0.995`` and the other budgets;
- :mod:`calib.tuning.evaluator`: plan -> Q/DQ model -> budget metric on the search split;
- :mod:`calib.tuning.sensitivity`: per-group proxy and direct sensitivities, Spearman;
- :mod:`calib.tuning.search`: the loop, our strategy and the baseline schemes.
"""
from .budget import Budget, Measurement, parse_budget
from .search import ALGORITHMS, Evaluation, Outcome, SearchSpace, default_max_evals, make_strategy, run

__all__ = ["Budget", "Measurement", "parse_budget", "ALGORITHMS", "Evaluation", "Outcome", "SearchSpace",
           "default_max_evals", "make_strategy", "run"]
