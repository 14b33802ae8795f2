"""``search.png``: the sensitivity of every group and the trace of the search, from ``search.json``.

Top: one bar per quantizable group in layer order, its sensitivity score (the relative output
noise power it puts in: with the group alone in INT8 for the direct measure, across the group for
the proxy; log scale), coloured by the precision the chosen plan gives the group; the proxy's SQNR
drop as dots on the right axis when both were measured. Bottom: evaluation number against the
budget metric (with its interval, green where the budget held, red where not; the budget as a
dashed line) and the predicted latency (right axis); the chosen evaluation is shaded.
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

COLOURS = {"int8": "#3b75af", "fp16": "#ef8636", "fp32": "#c53a32"}


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def plot_search(summary: Mapping[str, Any]) -> bytes:
    """The PNG of :mod:`calib.tuning.report` for a ``search.json`` dict."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    sens = summary["sensitivity"]
    budget = summary["budget"]
    precision = {g["id"]: g["precision"] for g in summary["groups"]}
    rows = sorted(sens["groups"], key=lambda g: g["order"])
    n = len(rows)
    fig = Figure(figsize=(max(10.0, min(24.0, 0.22 * n + 4)), 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=[1.1, 1.0])

    direct = sens.get("direct_mode") is not None
    x = list(range(n))
    # the score: relative output noise power the group puts in (10**(-SQNR/10)), on one scale for
    # every budget; zeros (an exact group) drawn at a tenth of the smallest positive score
    vals = [max(_f(g.get("score")), 0.0) if math.isfinite(_f(g.get("score"))) else 0.0 for g in rows]
    floor = min([v for v in vals if v > 0] or [1e-12]) / 10
    top.bar(x, [max(v, floor) for v in vals], bottom=0, width=0.8,
            color=[COLOURS.get(precision.get(g["group"]), "#888888") for g in rows])
    top.set_yscale("log")
    if direct:
        what = ("with the group alone in INT8" if sens["direct_mode"] == "only"
                else "removed by keeping the group out of INT8")
    else:
        what = "added across the group (proxy)"
    top.set_ylabel(f"output noise power\n{what}")
    top.set_xlim(-0.7, n - 0.3)
    top.set_xticks(x)
    top.set_xticklabels([_short(g["group"]) for g in rows], rotation=90, fontsize=6 if n > 40 else 7)
    handles = [Patch(color=c, label=f"{p.upper()} in the chosen plan") for p, c in COLOURS.items()
               if p in precision.values()]
    if direct:
        ax2 = top.twinx()
        px = [_f(g["proxy_db"]) for g in rows]
        ax2.plot(x, px, "o", color="#333333", markersize=3, label="proxy: SQNR drop (dB)")
        ax2.set_ylabel("proxy: SQNR drop across the group (dB)")
        handles.append(ax2.lines[0])
    rho = sens.get("spearman")
    title = (f"Sensitivity per group (layer order), ranked by the {sens['used']} measure"
             + (f"; Spearman rho proxy vs direct {rho:+.2f}" if rho is not None else ""))
    top.set_title(title, fontsize=10)
    top.legend(handles=handles, fontsize=8, loc="upper left")

    evs = summary["search"]["evaluations"]
    chosen = summary["search"]["chosen"]["evaluation"]
    k = [e["index"] + 1 for e in evs]
    m = [_f(e["metric"]) for e in evs]
    lo = [_f(e["interval"][0]) for e in evs]
    hi = [_f(e["interval"][1]) for e in evs]
    bv = _f(budget["value"])
    for i, e in enumerate(evs):
        c = "#2c9f45" if e["holds"] else "#c53a32"
        yv = m[i] if math.isfinite(m[i]) else bv
        err = [[max(yv - lo[i], 0.0) if math.isfinite(lo[i]) else 0.0],
               [max(hi[i] - yv, 0.0) if math.isfinite(hi[i]) else 0.0]]
        bottom.errorbar([k[i]], [yv], yerr=err, fmt="o", color=c, capsize=3, markersize=6, zorder=3)
    if chosen is not None:
        bottom.axvspan(chosen + 0.6, chosen + 1.4, color="#f2d16b", alpha=0.45, zorder=0, label="chosen plan")
    bottom.axhline(bv, linestyle="--", color="#444444", linewidth=1, label=f"budget {budget['expression']}")
    bottom.set_xlabel("evaluation (phase)")
    bottom.set_ylabel(f"{budget['metric']} on the search split\n(95% interval)")
    bottom.set_xticks(k or [1])
    bottom.set_xticklabels([f"{e['index'] + 1}\n{e['phase']}" for e in evs] or ["1"], fontsize=8)
    bottom.set_xlim(0.4, max(k or [1]) + 0.6)
    lat = bottom.twinx()
    lat.plot(k, [_f(e["predicted_latency_s"]) * 1e3 for e in evs], "s-", color="#7f7f7f", markersize=4,
             linewidth=1, label="predicted latency")
    lat.ticklabel_format(axis="y", useOffset=False, style="plain")
    lm = summary["latency_model"]
    lat.set_ylabel(f"predicted latency (ms per sample)\n{lm['name']}")
    h1, l1 = bottom.get_legend_handles_labels()
    h2, l2 = lat.get_legend_handles_labels()
    bottom.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
    bottom.set_title(f"Search trace ({summary['algorithm']}): dots green where the budget held, red where not",
                     fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


__all__ = ["plot_search"]
