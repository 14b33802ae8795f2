"""The Pareto front of a sweep: the points no other point beats on accuracy and on cost at once.

Accuracy is one harness metric of the points (:func:`choose_metric`: by default the task's
headline metric against the labels when the data have labels, e.g. ``top1``, else the one
against FP32, e.g. ``top1_agreement``), with its bootstrap interval. Cost is one of :data:`COSTS`:

- ``cpu``: ONNX Runtime latency at batch 1 on this CPU, relative to the FP32 model timed in turn
  with it (the ratio holds on a busy machine, where absolute times drift);
- ``gpu``: the latency model's predicted GPU latency (``roofline:<gpu>``: a prediction, not a
  measurement), ms;
- ``size``: the weights' bytes at the precision they are deployed in, MB.

A point is on the front when no other point, and not FP32 itself, has a cost at most its own and
a metric at least as good, one of them strictly (:func:`pareto`). Only ``ok`` points with both
values take part.
The plots (:func:`plot_front`) draw every point with its interval, the front highlighted and
each front point labelled with its configuration (the axes of the grid that vary), and FP32 as a
reference star.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

from ..errors import CalibError


@dataclass(frozen=True)
class Cost:
    name: str
    title: str
    label: str
    fmt: str


COSTS = {
    "cpu": Cost("cpu", "CPU latency (ONNX Runtime, measured)", "latency at batch 1, relative to FP32 timed in turn",
                "{:.2f}x"),
    "gpu": Cost("gpu", "GPU latency (predicted)", "predicted latency per sample, ms", "{:.3f} ms"),
    "size": Cost("size", "model size", "weights at their precision, MB", "{:.2f} MB"),
}


def cost(row: dict, name: str) -> float | None:
    """The cost *name* of a result row (None when the point has none)."""
    if name == "cpu":
        c = row.get("cpu") or {}
        lat, ref = c.get("latency_ms"), c.get("fp32_latency_ms")
        return lat / ref if lat and ref else None
    if name == "gpu":
        return (row.get("predicted") or {}).get("latency_ms")
    if name == "size":
        b = (row.get("size") or {}).get("weight_bytes")
        return b / 1e6 if b is not None else None
    raise CalibError(f"unknown cost {name!r} (choose from {', '.join(COSTS)})")


def cost_title(rows: list[dict], name: str) -> str:
    """The cost's title; for ``gpu`` it names the latency model and says it is a prediction."""
    if name == "gpu":
        model = next(((r.get("predicted") or {}).get("model") for r in rows if (r.get("predicted") or {}).get("model")),
                     None)
        if model:
            return f"GPU latency predicted by {model} (not measured)"
    return COSTS[name].title


def fp32_cost(rows: list[dict], name: str) -> float | None:
    """FP32's cost on the same axis: 1 for relative CPU latency, the prediction, the weights."""
    if name == "cpu":
        return 1.0 if any(cost(r, "cpu") for r in rows) else None
    for r in rows:
        if name == "gpu" and (r.get("predicted") or {}).get("fp32_latency_ms"):
            return r["predicted"]["fp32_latency_ms"]
        if name == "size" and (r.get("size") or {}).get("fp32_weight_bytes"):
            return r["size"]["fp32_weight_bytes"] / 1e6
    return None


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    percent: bool
    labels: bool

    def fmt(self, v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{100 * v:.2f}%" if self.percent else f"{v:.4g}"


def choose_metric(rows: list[dict], name: str | None = None) -> Metric:
    """The metric the front is drawn for: *name*, or the headline metric against the labels when
    the points have one, else the headline metric against FP32. CalibError for a name no point has."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        raise CalibError("no point of the sweep succeeded: nothing to draw")
    if name is None:
        first = ok[0]
        name = (first.get("accuracy") or first.get("fidelity") or {}).get("name")
    have = sorted({k for r in ok for k in (r.get("metrics") or {})})
    spec = next((r["metrics"][name] for r in ok if name in (r.get("metrics") or {})), None)
    if spec is None:
        raise CalibError(f"no point has the metric {name!r}; the points have: {', '.join(have)}")
    return Metric(name, bool(spec["higher_is_better"]), bool(spec["percent"]), bool(spec.get("labels")))


def value(row: dict, metric: Metric) -> tuple[float, float, float] | None:
    """``(estimate, low, high)`` of *metric* for the point, or None."""
    m = ((row.get("metrics") or {}).get(metric.name) or {}).get("candidate") or {}
    est = m.get("estimate")
    if not isinstance(est, (int, float)) or not math.isfinite(est):
        return None
    low, high = m.get("low"), m.get("high")
    return float(est), float(low if isinstance(low, (int, float)) else est), \
        float(high if isinstance(high, (int, float)) else est)


def reference_value(rows: list[dict], metric: Metric) -> float | None:
    """FP32's value of *metric*: its own against the labels, else the metric's ideal (FP32 against
    itself: agreement 1, KL divergence 0); None where that is not finite (SQNR)."""
    for r in rows:
        m = (r.get("metrics") or {}).get(metric.name) or {}
        ref = m.get("reference") or {}
        if isinstance(ref.get("estimate"), (int, float)):
            return float(ref["estimate"])
        ideal = m.get("ideal")
        if isinstance(ideal, (int, float)) and math.isfinite(ideal):
            return float(ideal)
    return None


def pareto(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the non-dominated ``(cost, metric)`` points (lower cost and, with
    *higher_is_better*, higher metric are better), in increasing cost."""
    sign = 1.0 if higher_is_better else -1.0
    pts = [(c, sign * v) for c, v in points]

    def dominated(i: int) -> bool:
        c, y = pts[i]
        return any(cj <= c and yj >= y and (cj < c or yj > y) for cj, yj in pts)

    return sorted((i for i in range(len(pts)) if not dominated(i)), key=lambda i: (pts[i][0], -pts[i][1]))


def front(rows: list[dict], cost_name: str, metric: Metric) -> list[dict]:
    """The points of *rows* on the Pareto front of *metric* against the cost *cost_name*, cheapest
    first. FP32 competes too (where its cost and value are known): a point it dominates is not on
    the front, since deploying FP32 would be as good and cheaper."""
    usable = [r for r in rows if r.get("status") == "ok" and cost(r, cost_name) is not None
              and value(r, metric) is not None]
    pts = [(cost(r, cost_name), value(r, metric)[0]) for r in usable]
    ref = (fp32_cost(rows, cost_name), reference_value(rows, metric))
    if None not in ref:
        pts.append(ref)
    return [usable[i] for i in pareto(pts, metric.higher_is_better) if i < len(usable)]


def varying_axes(rows: list[dict]) -> tuple[str, ...]:
    """The configuration axes whose values differ among *rows*."""
    from .points import PointConfig

    axes = tuple(PointConfig.__dataclass_fields__)
    return tuple(a for a in axes if len({(r.get("config") or {}).get(a) for r in rows}) > 1)


def label(row: dict, axes) -> str:
    from .points import PointConfig

    return PointConfig.from_dict(row["config"]).label(axes or None)


def costs_of(rows: list[dict]) -> list[str]:
    """The costs at least one ok point has."""
    return [c for c in COSTS if any(r.get("status") == "ok" and cost(r, c) is not None for r in rows)]


def front_table(rows: list[dict], metric: Metric, costs=None) -> str:
    """The fronts as a Markdown table, one section per cost."""
    axes = varying_axes(rows)
    out = []
    for c in costs or costs_of(rows):
        spec = COSTS[c]
        fr = front(rows, c, metric)
        out += [f"### {metric.name} against {cost_title(rows, c)}", "",
                f"| configuration | {metric.name} (95% CI) | {spec.label} |", "| --- | --- | --- |"]
        for r in fr:
            v = value(r, metric)
            out.append(f"| {label(r, axes)} | {metric.fmt(v[0])} [{metric.fmt(v[1])}, {metric.fmt(v[2])}] | "
                       f"{spec.fmt.format(cost(r, c))} |")
        ref = fp32_cost(rows, c)
        if not fr:
            out.append("| no point: FP32 is as good and no costlier than each | | |")
        if ref is not None:
            out.append(f"| FP32 | {metric.fmt(reference_value(rows, metric))} | {spec.fmt.format(ref)} |")
        out.append("")
    return "\n".join(out)


OTHER_COLOURS = ("0.55", "tab:olive", "tab:cyan", "tab:purple", "tab:brown", "tab:pink")


def plot_front(rows: list[dict], cost_name: str, metric: Metric, subject: str | None = None) -> bytes:
    """PNG bytes: every point (metric with its interval) against the cost, the front highlighted,
    numbered and named with its configuration in the legend, the other points coloured by plan and
    placement (where those vary), FP32 as a star; *subject* (the model's name) opens the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spec = COSTS[cost_name]
    axes = varying_axes(rows)
    usable = [r for r in rows if r.get("status") == "ok" and cost(r, cost_name) is not None
              and value(r, metric) is not None]
    if not usable:
        raise CalibError(f"no point has both {metric.name} and {cost_title(rows, cost_name)}")
    fr = front(rows, cost_name, metric)
    on = {id(r) for r in fr}
    scale = 100.0 if metric.percent else 1.0
    fig = Figure(figsize=(8.0, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    def draw(pts: list[dict], name: str, **style) -> None:
        vs = [value(r, metric) for r in pts]
        ys = [v[0] * scale for v in vs]
        err = [[(v[0] - v[1]) * scale for v in vs], [(v[2] - v[0]) * scale for v in vs]]
        ax.errorbar([cost(r, cost_name) for r in pts], ys, yerr=err, fmt="o", capsize=2, elinewidth=0.8,
                    markeredgecolor="white", label=name, **style)

    # the other points, coloured by the plan and placement where those vary
    kinds = [a for a in ("plan", "target") if a in axes]
    others: dict[str, list[dict]] = {}
    for r in usable:
        if id(r) not in on:
            others.setdefault(label(r, kinds) if kinds else "other points", []).append(r)
    for k, (name, pts) in enumerate(sorted(others.items())):
        draw(pts, name, color=OTHER_COLOURS[k % len(OTHER_COLOURS)], ms=5, alpha=0.75, zorder=2)
    if fr:
        draw(fr, "Pareto front", color="tab:red", ms=7, zorder=4)
    fx = [cost(r, cost_name) for r in fr]
    fy = [value(r, metric)[0] * scale for r in fr]
    ref_x, ref_y = fp32_cost(rows, cost_name), reference_value(rows, metric)
    sx, sy = list(fx), list(fy)
    if ref_x is not None and ref_y is not None:
        ax.plot([ref_x], [ref_y * scale], marker="*", ms=14, color="tab:blue", ls="none", label="FP32", zorder=5)
        better = bool(fr) and (ref_y > fy[-1] / scale if metric.higher_is_better else ref_y < fy[-1] / scale)
        if better and ref_x > fx[-1]:                   # FP32 ends the front: the staircase goes on to it
            sx.append(ref_x)
            sy.append(ref_y * scale)
    if fr:
        ax.step(sx, sy, where="post", color="tab:red", lw=1, alpha=0.6, zorder=3)
    spots: dict[tuple[float, float], list[dict]] = {}       # front points at the same place share a label
    for r, x, y in zip(fr, fx, fy):
        spots.setdefault((x, y), []).append(r)
    for k, ((x, y), rs) in enumerate(spots.items()):     # numbered on the plot, named in the legend
        text = label(rs[0], axes) + (f" (+{len(rs) - 1} tied)" if len(rs) > 1 else "")
        ax.annotate(str(k + 1), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=9, fontweight="bold",
                    color="darkred", zorder=6)
        ax.plot([], [], ls="none", label=f"{k + 1}: {text}")
    ax.set_xlabel(spec.label)
    ax.set_ylabel(f"{metric.name}{' (%)' if metric.percent else ''}, 95% CI "
                  f"({'higher' if metric.higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()      # the front and its names first, then FP32, the rest

    def rank(name: str) -> int:
        return 0 if name == "Pareto front" else 1 if name.split(":")[0].isdigit() else 2 if name == "FP32" else 3

    order = sorted(range(len(names)), key=lambda i: (rank(names[i]), i))
    ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize=8, loc="best", handletextpad=0.4)
    n = len(usable)
    ax.set_title(f"{subject + ': ' if subject else ''}{metric.name} vs {cost_title(rows, cost_name)}: "
                 + (f"{len(fr)} of {n} points on the front" if fr else f"FP32 dominates all {n} points"),
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)      # not the caller's savefig.dpi
    return buf.getvalue()


def points_table(rows: list[dict], metric: Metric | None) -> str:
    """Every point as a plain-text table (front members of any cost marked ``*``), best first."""
    axes = varying_axes(rows) or ("algorithm",)
    members = set()
    if metric is not None:
        for c in costs_of(rows):
            members |= {id(r) for r in front(rows, c, metric)}
    head = ["", "configuration", metric.name if metric else "metric", "95% CI", "cpu / fp32", "cpu ms",
            "gpu ms (pred.)", "weights MB", "status"]
    lines = []

    def key(r):
        v = value(r, metric) if metric is not None and r.get("status") == "ok" else None
        return (v is None, -(v[0] if metric.higher_is_better else -v[0]) if v else 0.0)

    for r in sorted(rows, key=key):
        v = value(r, metric) if metric is not None and r.get("status") == "ok" else None
        c = r.get("cpu") or {}
        lines.append(["*" if id(r) in members else "", label(r, axes),
                      metric.fmt(v[0]) if v else "-", f"[{metric.fmt(v[1])}, {metric.fmt(v[2])}]" if v else "-",
                      f"{cost(r, 'cpu'):.2f}x" if cost(r, "cpu") else "-",
                      f"{c['latency_ms']:.1f}" if c.get("latency_ms") else "-",
                      f"{cost(r, 'gpu'):.3f}" if cost(r, "gpu") else "-",
                      f"{cost(r, 'size'):.2f}" if cost(r, "size") else "-",
                      r.get("status", "?") if r.get("status") == "ok" else f"failed: {r.get('error', '')}"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row).rstrip() for row in [head, *lines])


__all__ = ["COSTS", "Cost", "Metric", "choose_metric", "cost", "front", "front_table", "pareto", "plot_front",
           "points_table", "value", "varying_axes"]
