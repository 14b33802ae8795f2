"""The result of an evaluation: verdicts, ``report.json``, ``report.md`` and PNG plots.

``report.json`` schema (``{"schema": "calib-report", "version": 1}``)::

    schema, version, created, calib_version
    task, task_reason, samples, has_labels, settings {resamples, seed, level, batch_size, ci_method}
    dataset: provenance from the reader (or null)
    reference: {name, backend, precision, model, sha256}
    candidates: [{... same ..., metrics: [MetricResult], attribution: {...} | null}]
    timing: {decode_s, engines_s {name: s}, metrics_s, statistics_s, total_s}
    notes: [str]

A MetricResult: ``name, spec, samples, candidate {estimate, low, high, level}``,
for engine metrics also ``reference`` and ``difference`` (candidate - reference,
paired) and, for 0/1 metrics, ``mcnemar {reference_only_correct,
candidate_only_correct, discordant, p_value}``; ``verdict`` in words; ``extra``.
Non-finite numbers are written as the strings ``"inf"``, ``"-inf"``, ``"nan"``
(strict JSON has no infinities; an exact candidate has infinite SQNR).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import re
from pathlib import Path

from ..errors import HarnessError
from ..utils import atomic_write_all, atomic_write_text, check_outputs, json_safe

SCHEMA = "calib-report"
VERSION = 1
HEADLINES = {
    "classification": ["top1_agreement", "top1"],
    "embedding": ["cosine", "retrieval_agreement"],
    "dense": ["iou@0.3", "mean_abs_error"],
    "ctc": ["ctc_agreement", "cer"],
    "tensor": ["sqnr", "cosine"],
}


# --------------------------------------------------------------------------- formatting
def _isnum(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fmt_value(x, spec: dict) -> str:
    if x is None or not _isnum(x) or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if spec.get("percent"):
        return f"{100 * x:.2f}%"
    if spec.get("unit") == "dB":
        return f"{x:.1f} dB"
    return f"{x:.4g}"


def fmt_diff(x, spec: dict, sign: bool = True) -> str:
    if x is None or not _isnum(x) or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    s = "+" if sign else ""
    if spec.get("percent"):
        return f"{100 * x:{s}.2f} pt"
    if spec.get("unit") == "dB":
        return f"{x:{s}.2f} dB"
    return f"{x:{s}.3g}"


def _ci(iv: dict, spec: dict, diff: bool) -> str:
    f = (lambda v: fmt_diff(v, spec)) if diff else (lambda v: fmt_value(v, spec))
    return f"[{f(iv['low'])}, {f(iv['high'])}]"


def verdict(res) -> str:
    """Words for a MetricResult. Never claims 'no loss' when the interval cannot tell."""
    spec = res.spec
    n = res.samples
    if res.difference is not None:
        d = res.difference
        lo, hi, est = d["low"], d["high"], d["estimate"]
        if any(not _isnum(v) or math.isnan(v) for v in (lo, hi, est)):
            return "difference not computable"
        mc = res.mcnemar
        p_txt = ""
        if mc is not None:
            p_txt = (f"; McNemar exact p = {mc['p_value']:.3g} ({mc['reference_only_correct']} samples only the "
                     f"reference gets right, {mc['candidate_only_correct']} only the candidate)")
            if mc["discordant"] == 0:
                bound = fmt_diff(3.0 / n, spec, sign=False) if n else "n/a"
                return (f"no sample differs among {n}: the data cannot distinguish; a difference up to "
                        f"±{bound} cannot be excluded (rule of three, 95%){p_txt}")
        ci = f"95% CI {_ci(d, spec, True)}"
        if lo <= 0 <= hi:
            width = max(abs(lo), abs(hi))
            return (f"Δ {fmt_diff(est, spec)}, within ±{fmt_diff(width, spec, sign=False)} ({ci}): "
                    f"the data cannot distinguish candidate from reference{p_txt}")
        hib = spec.get("higher_is_better")
        if hib is None:
            return f"significant difference: Δ {fmt_diff(est, spec)} ({ci}){p_txt}"
        loss = hi < 0 if hib else lo > 0
        word = "significant loss" if loss else "significant gain"
        return f"{word}: Δ {fmt_diff(est, spec)} ({ci}){p_txt}"
    if res.candidate is not None:
        c = res.candidate
        txt = f"{fmt_value(c['estimate'], spec)} (95% CI {_ci(c, spec, False)})"
        ideal = spec.get("ideal")
        if spec.get("binary") and ideal is not None and _isnum(c["estimate"]) and c["estimate"] == ideal and n:
            txt += (f"; no disagreement among {n} samples, but a rate up to "
                    f"{fmt_value(3.0 / n, spec)} cannot be excluded (rule of three, 95%)")
        return txt
    return ""


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "candidate"


def report_paths(out, candidates_with_layers=(), plots: bool = True) -> list[Path]:
    d = Path(out)
    paths = [d / "report.json", d / "report.md"]
    if plots:
        paths.append(d / "metrics.png")
        paths += [d / f"layers_{safe_name(c)}.png" for c in candidates_with_layers]
    return paths


# --------------------------------------------------------------------------- report
class Report:
    """Everything :func:`calib.harness.compare` found. ``report.metrics[candidate]`` is a list of
    :class:`MetricResult`; ``report.attributions[candidate]`` an :class:`Attribution`."""

    def __init__(self, *, reference, candidates, task, task_reason, samples, has_labels, metrics,
                 attributions, settings, dataset, timing, notes):
        self.reference = reference
        self.candidates = candidates
        self.task = task
        self.task_reason = task_reason
        self.samples = samples
        self.has_labels = has_labels
        self.metrics = metrics
        self.attributions = attributions
        self.settings = settings
        self.dataset = dataset
        self.timing = timing
        self.notes = notes
        self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    # -- access ------------------------------------------------------------------
    @property
    def candidate_names(self) -> list[str]:
        return [c["name"] for c in self.candidates]

    def metric(self, name: str, candidate: str | None = None):
        cand = candidate or self.candidate_names[0]
        for r in self.metrics[cand]:
            if r.name == name:
                return r
        raise KeyError(f"no metric {name!r} for {cand!r} (have: {[r.name for r in self.metrics[cand]]})")

    def headline(self, candidate: str | None = None) -> list:
        cand = candidate or self.candidate_names[0]
        rs = {r.name: r for r in self.metrics[cand]}
        out = [rs[n] for n in HEADLINES.get(self.task, []) if n in rs]
        return out or self.metrics[cand][:1]

    def summary_line(self, candidate: str | None = None) -> str:
        """One line: the candidate's headline metrics with intervals and verdicts."""
        cand = candidate or self.candidate_names[0]
        parts = []
        for r in self.headline(cand):
            spec = r.spec
            if r.difference is not None:
                parts.append(f"{r.name} {fmt_value(r.candidate['estimate'], spec)} vs "
                             f"{fmt_value(r.reference['estimate'], spec)}: {r.verdict}")
            else:
                parts.append(f"{r.name} {r.verdict}")
        return f"{cand} vs {self.reference['name']} on {self.samples} samples ({self.task}): " + "; ".join(parts)

    def summary_lines(self) -> list[str]:
        return [self.summary_line(c) for c in self.candidate_names]

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        from ..version import __version__

        cands = []
        for c in self.candidates:
            att = self.attributions.get(c["name"])
            cands.append({**c, "metrics": [r.to_dict() for r in self.metrics[c["name"]]],
                          "attribution": att.to_dict() if att is not None else None,
                          "summary": self.summary_line(c["name"])})
        return json_safe({
            "schema": SCHEMA, "version": VERSION, "created": self.created, "calib_version": __version__,
            "task": self.task, "task_reason": self.task_reason, "samples": self.samples,
            "has_labels": self.has_labels, "settings": self.settings, "dataset": self.dataset,
            "reference": self.reference, "candidates": cands, "timing": self.timing, "notes": self.notes,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False, ensure_ascii=False) + "\n"

    def to_markdown(self, plots: bool = True) -> str:
        L = [f"# Evaluation: {', '.join(self.candidate_names)} vs {self.reference['name']}", ""]
        L.append(f"- task: **{self.task}** ({self.task_reason})")
        L.append(f"- samples: {self.samples}{' with labels' if self.has_labels else ' (no labels)'}")
        s = self.settings
        L.append(f"- intervals: {int(s['level'] * 100)}% {s['ci_method']}, {s['resamples']} resamples, "
                 f"seed {s['seed']}; accuracy differences also tested with McNemar's exact test")
        if self.dataset:
            src = self.dataset.get("source") if isinstance(self.dataset, dict) else None
            if src:
                L.append(f"- data: `{src}`")
        L.append("")
        for c in self.candidate_names:
            L += [f"## {c}", "", f"> {self.summary_line(c)}", "",
                  "| metric | reference | candidate | Δ candidate − reference (95% CI) | McNemar p | verdict |",
                  "| --- | --- | --- | --- | --- | --- |"]
            for r in self.metrics[c]:
                spec = r.spec
                ref = fmt_value(r.reference["estimate"], spec) if r.reference else "—"
                if r.candidate:
                    cand = f"{fmt_value(r.candidate['estimate'], spec)} {_ci(r.candidate, spec, False)}"
                else:
                    cand = "—"
                diff = (f"{fmt_diff(r.difference['estimate'], spec)} {_ci(r.difference, spec, True)}"
                        if r.difference else "—")
                p = f"{r.mcnemar['p_value']:.3g}" if r.mcnemar else "—"
                v = r.verdict.replace("|", "\\|")
                L.append(f"| {r.name} | {ref} | {cand} | {diff} | {p} | {v} |")
            L.append("")
            att = self.attributions.get(c)
            if att is not None:
                L += [f"### Per-layer SQNR ({len(att.layers)} tensors, {att.samples} samples)", "",
                      "Largest SQNR drops (error added by the node producing the tensor):", "",
                      "| # | tensor | op | SQNR | drop | from |", "| --- | --- | --- | --- | --- | --- |"]
                for l in att.jumps():
                    L.append(f"| {l.index} | `{l.tensor}` | {l.op} | {l.sqnr_db:.1f} dB | {l.drop_db:.1f} dB | "
                             f"`{l.drop_from}` |")
                L += ["", "Lowest SQNR:", "", "| # | tensor | op | SQNR |", "| --- | --- | --- | --- |"]
                for l in att.worst():
                    L.append(f"| {l.index} | `{l.tensor}` | {l.op} | {l.sqnr_db:.1f} dB |")
                L.append("")
                if plots:
                    L += [f"![per-layer SQNR](layers_{safe_name(c)}.png)", ""]
        if plots:
            L += ["## Metrics with 95% intervals", "", "![metrics](metrics.png)", ""]
        t = self.timing
        eng = ", ".join(f"{k} {v:.1f} s" for k, v in t.get("engines_s", {}).items())
        L += ["## Timing", "", (f"total {t.get('total_s', 0):.1f} s: waiting for data {t.get('decode_s', 0):.1f} s, "
                                f"engines ({eng}), metrics {t.get('metrics_s', 0):.1f} s"), ""]
        if self.notes:
            L += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(L)

    # -- plots ----------------------------------------------------------------------
    def plot_metrics_png(self) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        names = []
        for c in self.candidate_names:
            for r in self.metrics[c]:
                if r.candidate is not None and r.name not in names:
                    names.append(r.name)
        n = max(1, len(names))
        cols = min(3, n)
        rows = (n + cols - 1) // cols
        fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
        FigureCanvasAgg(fig)
        for i, name in enumerate(names):
            ax = fig.add_subplot(rows, cols, i + 1)
            xs, ys, lo, hi, spec, is_diff = [], [], [], [], {}, False
            for j, c in enumerate(self.candidate_names):
                try:
                    r = self.metric(name, c)
                except KeyError:
                    continue
                spec = r.spec
                iv = r.difference or r.candidate
                is_diff = r.difference is not None
                k = 100.0 if spec.get("percent") else 1.0
                vals = [iv["estimate"], iv["low"], iv["high"]]
                if not all(_isnum(v) and math.isfinite(v) for v in vals):
                    continue
                xs.append(j)
                ys.append(k * vals[0])
                lo.append(k * (vals[0] - vals[1]))
                hi.append(k * (vals[2] - vals[0]))
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=5, color="tab:blue")
            if is_diff:
                ax.axhline(0.0, color="grey", lw=0.8, ls="--")
            unit = "pt" if (spec.get("percent") and is_diff) else "%" if spec.get("percent") else spec.get("unit", "")
            ax.set_title(f"{'Δ ' if is_diff else ''}{name}" + (f" ({unit})" if unit else ""), fontsize=9)
            ax.set_xticks(range(len(self.candidate_names)))
            ax.set_xticklabels(self.candidate_names, fontsize=7, rotation=15)
            ax.set_xlim(-0.5, len(self.candidate_names) - 0.5)
            ax.tick_params(axis="y", labelsize=7)
        fig.suptitle(f"{self.task}: candidates vs {self.reference['name']}, {self.samples} samples, 95% CI",
                     fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        return buf.getvalue()

    def plot_layers_png(self, candidate: str, annotate: int = 5) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        att = self.attributions[candidate]
        fig = Figure(figsize=(12, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        xs = [l.index for l in att.layers]
        ys = [l.sqnr_db if math.isfinite(l.sqnr_db) else float("nan") for l in att.layers]
        ax.plot(xs, ys, "-", lw=0.8, color="tab:blue")
        ax.plot(xs, ys, ".", ms=3, color="tab:blue")
        for l in att.jumps(annotate):
            label = l.tensor if len(l.tensor) <= 40 else "…" + l.tensor[-39:]
            ax.annotate(f"{label}\n−{l.drop_db:.1f} dB", (l.index, l.sqnr_db), textcoords="offset points",
                        xytext=(0, -28), ha="center", fontsize=6, color="tab:red",
                        arrowprops={"arrowstyle": "-", "color": "tab:red", "lw": 0.5})
            ax.plot([l.index], [l.sqnr_db], "o", color="tab:red", ms=4)
        ax.set_xlabel("tensor (topological order)")
        ax.set_ylabel("SQNR (dB)")
        ax.set_title(f"per-layer SQNR: {candidate} vs {self.reference['name']} ({att.samples} samples)", fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        return buf.getvalue()

    # -- writing --------------------------------------------------------------------
    def write(self, out: str | os.PathLike, force: bool = False, plots: bool = True) -> list[Path]:
        """Write report.json, report.md and the PNGs into *out* as one set (all or none, see
        :func:`calib.utils.atomic_write_all`); check every target first and refuse to overwrite any
        unless *force*."""
        d = Path(out)
        layer_cands = [c for c in self.candidate_names if c in self.attributions and self.attributions[c].layers]
        check_outputs(report_paths(d, layer_cands, plots), force, option="force")
        # backslashreplace: a file name that is not UTF-8 (surrogateescape) stays a valid JSON escape
        files: dict[Path, bytes] = {d / "report.json": self.to_json().encode("utf-8", "backslashreplace"),
                                    d / "report.md": self.to_markdown(plots).encode("utf-8", "backslashreplace")}
        if plots:
            files[d / "metrics.png"] = self.plot_metrics_png()
            for c in layer_cands:
                files[d / f"layers_{safe_name(c)}.png"] = self.plot_layers_png(c)
        atomic_write_all(list(files.items()), overwrite=force, option="force")   # as calibrate's outputs
        return list(files)


def load_report(path: str | os.PathLike) -> dict:
    """Read a report.json back (as a dict), checking the schema and version."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA:
        raise HarnessError(f"{path}: not a calib report (schema {data.get('schema')!r})")
    if data.get("version") != VERSION:
        raise HarnessError(f"{path}: report version {data.get('version')} is not supported (expected {VERSION})")
    return data


__all__ = ["Report", "SCHEMA", "VERSION", "verdict", "load_report", "atomic_write_text"]
