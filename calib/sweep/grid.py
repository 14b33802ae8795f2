"""The sweep grid: a TOML file with one list per axis, expanded into :class:`PointConfig` points.

```toml
algorithm = ["max", "entropy", "percentile:99.99", "mse"]
samples = [64, 128, 256]
seed = [0, 1]
plan = ["int8", "fp16", "search:agreement>=0.995"]
batch_size = [1, 16]
target = ["onnxruntime", "tensorrt"]
```

Axes (:data:`AXES`) and their values:

- ``algorithm``: ``entropy``, ``max``, ``mse``, ``auto``, ``percentile`` (calibrate's default
  percentile) or ``percentile:<p>`` with p in (0, 100];
- ``samples``: calibration samples, an integer >= 1; ``seed``: the seeded choice of those samples;
- ``plan``: ``int8`` (every layer INT8 where the target places Q/DQ), ``fp16`` (every layer FP16),
  ``search:<budget>`` (the plan the mixed-precision search finds for the budget, e.g.
  ``search:agreement>=0.995``; needs ``calib.search``) or the path of a precision plan JSON
  (relative to the grid file);
- ``batch_size``: the batch the points are calibrated, scored and timed at (throughput is measured
  at this batch; the calibration itself does not depend on it);
- ``target``: ``tensorrt`` or ``onnxruntime`` (Q/DQ placement).

An axis left out takes ``calibrate``'s default (:data:`DEFAULTS`); a single value may be written
without brackets. A ``[calibration]`` table sets calibration options every point shares
(:data:`FIXED`: ``smooth`` (alpha, or false), ``bias_correction``, ``trt_version``). Unknown axes,
options and values, duplicates and empty lists raise :class:`calib.errors.CalibError` with one
line naming the valid choices. Points are ordered so that those sharing statistics (same samples
and seed) are adjacent.
"""
from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CalibError, ConfigError
from ..pipeline import TARGETS, CalibrationConfig
from .points import PointConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_D = CalibrationConfig()
ALGORITHMS = ("entropy", "max", "mse", "auto", "percentile", "percentile:<p>")
PLANS = ("int8", "fp16", "search:<budget>", "<plan.json>")
AXES = ("algorithm", "samples", "seed", "plan", "batch_size", "target")
FIXED = ("smooth", "bias_correction", "trt_version")
TABLE = "calibration"
DEFAULTS = {"algorithm": _D.algorithm, "samples": _D.samples, "seed": _D.seed, "plan": "int8",
            "batch_size": _D.batch_size, "target": _D.target}


def canonical_algorithm(value) -> str:
    """``percentile`` -> ``percentile:99.99`` (calibrate's default); others as they are; ConfigError
    for an unknown name or a percentile out of (0, 100]."""
    if not isinstance(value, str):
        raise ConfigError("algorithm", f"{value!r} is not a name; choose from {', '.join(ALGORITHMS)}")
    name, sep, param = value.strip().lower().partition(":")
    if name == "percentile":
        try:
            p = float(param) if sep else _D.percentile
        except ValueError:
            p = math.nan
        if not (0.0 < p <= 100.0):
            raise ConfigError("algorithm", f"{value!r}: the percentile must be a number in (0, 100]")
        return f"percentile:{p:g}"
    if sep or name not in ALGORITHMS:
        raise ConfigError("algorithm", f"{value!r} is unknown; choose from {', '.join(ALGORITHMS)}")
    return name


def canonical_plan(value, base: Path | None = None) -> str:
    """``int8``, ``fp16``, ``search:<budget>`` (budget checked) or the
    absolute path of an existing precision plan file (read and checked)."""
    from ..plan import load_plan

    if not isinstance(value, str) or not value.strip():
        raise ConfigError("plan", f"{value!r} is not a plan; choose from {', '.join(PLANS)}")
    text = value.strip()
    if text.lower() in ("int8", "fp16"):
        return text.lower()
    if text.lower().startswith("search:"):
        budget = text.split(":", 1)[1].strip()
        from ..tuning.budget import parse_budget

        parse_budget(budget)          # BudgetError names the valid metrics
        return f"search:{budget}"
    path = Path(text) if base is None or Path(text).is_absolute() else base / text
    if not path.is_file():
        raise ConfigError("plan", f"{text!r} is unknown and no such plan file exists; choose from {', '.join(PLANS)}")
    load_plan(path)             # a bad plan file fails here, before any work
    return str(path.resolve())


def _positive_int(axis: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(axis, f"values must be integers of at least 1, got {v!r}")
    return v


def _int(axis: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(axis, f"values must be integers, got {v!r}")
    return v


def _target(v) -> str:
    if v not in TARGETS:
        raise ConfigError("target", f"{v!r} is unknown; choose from {', '.join(TARGETS)}")
    return v


@dataclass(frozen=True)
class Grid:
    """The axes' values (canonical) and where the grid came from."""

    axes: dict
    source: str | None = None
    calibration: dict = field(default_factory=dict)

    def points(self) -> list[PointConfig]:
        """Every combination of the axes' values, those of a (samples, seed) pair adjacent."""
        a = self.axes
        combos = itertools.product(a["samples"], a["seed"], a["algorithm"], a["plan"], a["target"], a["batch_size"])
        return [PointConfig(algorithm=alg, samples=n, seed=s, plan=plan, batch_size=b, target=t)
                for n, s, alg, plan, t, b in combos]

    def varying(self) -> tuple[str, ...]:
        """The axes with more than one value."""
        return tuple(k for k in AXES if len(self.axes[k]) > 1)

    def to_dict(self) -> dict:
        d = {k: list(self.axes[k]) for k in AXES}
        if self.calibration:
            d[TABLE] = dict(self.calibration)
        return d


def make_grid(spec: Mapping, *, base: Path | None = None, source: str | None = None) -> Grid:
    """The :class:`Grid` of a mapping of axis -> list of values (what the TOML file holds)."""
    where = f"{source}: " if source else ""
    unknown = sorted(set(spec) - set(AXES) - {TABLE})
    if unknown:
        raise CalibError(f"{where}unknown axis {', '.join(repr(u) for u in unknown)}; valid axes: {', '.join(AXES)} "
                         f"(and a [{TABLE}] table of {', '.join(FIXED)})")
    fixed = spec.get(TABLE, {})
    if not isinstance(fixed, Mapping):
        raise CalibError(f"{where}{TABLE} must be a table of {', '.join(FIXED)}")
    bad = sorted(set(fixed) - set(FIXED))
    if bad:
        raise CalibError(f"{where}unknown [{TABLE}] option {', '.join(repr(b) for b in bad)}; "
                         f"valid: {', '.join(FIXED)}")
    try:
        CalibrationConfig().replace(**fixed)
    except ConfigError as exc:
        raise ConfigError(f"{where}[{TABLE}] {exc.option}", exc.problem) from None
    checks = {"algorithm": canonical_algorithm, "samples": lambda v: _positive_int("samples", v),
              "seed": lambda v: _int("seed", v), "plan": lambda v: canonical_plan(v, base),
              "batch_size": lambda v: _positive_int("batch_size", v), "target": _target}
    axes = {}
    for axis in AXES:
        values = spec.get(axis, [DEFAULTS[axis]])
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise CalibError(f"{where}{axis} is an empty list; give at least one value or leave the axis out")
        try:
            canon = [checks[axis](v) for v in values]
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc.option}", exc.problem) from None
        dup = next((v for i, v in enumerate(canon) if v in canon[:i]), None)
        if dup is not None:
            raise CalibError(f"{where}{axis} lists {dup!r} twice")
        axes[axis] = tuple(canon)
    return Grid(axes=axes, source=source, calibration=dict(fixed))


def load_grid(path) -> Grid:
    """Read and check the TOML grid file *path*."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibError(f"grid file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibError(f"cannot read the grid file {p}: {exc}") from None
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CalibError(f"{p}: not valid TOML: {str(exc).splitlines()[0]}") from None
    return make_grid(spec, base=p.parent, source=str(p))
