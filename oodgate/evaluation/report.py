"""The evaluation report: metrics (Markdown + JSON), threshold what-ifs, PNG plots and an HTML page. No torch.

    write_report(evaluation, "report/")   # metrics.md, metrics.json, hist_<set>.png, roc.png, tradeoff.png,
                                          # index.html

Every number comes from :mod:`oodgate.metrics` on the scores held by the Evaluation. matplotlib is needed only
for the plots (``pip install 'oodgate[plots]'``); it is imported lazily, and drawn without pyplot (Agg canvas),
so that writing a report changes no global matplotlib state.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .._version import __version__
from ..errors import OodgateError
from ..detectors.threshold import fit_threshold
from ..files import write_atomic
from .evaluate import Evaluation, metrics_table

#: every PNG is drawn at this size in inches and dots per inch: PLOT_PIXELS = (width, height) in pixels
PLOT_SIZE = (6.4, 4.0)
PLOT_DPI = 100
PLOT_PIXELS = (round(PLOT_SIZE[0] * PLOT_DPI), round(PLOT_SIZE[1] * PLOT_DPI))
#: the ID true-positive rates whose thresholds the what-if table shows by default
DEFAULT_TPRS = (0.90, 0.95, 0.99)
REPORT_FORMAT = "oodgate-report/1"


# -- thresholds: what another tau would do -----------------------------------------------------------------------


#: tau that keeps the share tpr of ID scores: the calibration's own rule (one implementation, torch-free)
threshold_at_tpr = fit_threshold


@dataclass
class ThresholdOption:
    """One candidate tau and its effect: share of ID rejected, share of each OOD set accepted (and their mean)."""

    label: str
    threshold: float
    id_rejected: float
    ood_accepted: dict[str, float]
    tpr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "threshold": self.threshold, "tpr": self.tpr, "id_rejected": self.id_rejected,
                "ood_accepted": dict(self.ood_accepted)}


def _option(ev: Evaluation, label: str, tau: float, tpr: float | None = None) -> ThresholdOption:
    accepted = {o.name: float(np.mean(np.asarray(o.scores, np.float64) >= tau)) for o in ev.ood_sets}
    if accepted:
        accepted["mean"] = float(np.mean(list(accepted.values())))
    return ThresholdOption(label, float(tau), metrics.rejected_share(ev.id_set.scores, tau), accepted, tpr)


def threshold_options(ev: Evaluation, tprs: Sequence[float] = DEFAULT_TPRS,
                      thresholds: Sequence[float] = ()) -> list[ThresholdOption]:
    """The graph's tau, the tau that keeps each share in ``tprs`` of the evaluated ID scores, and any given taus;
    sorted by tau. Rejected = score < tau, as the graph decides."""
    opts = [_option(ev, "calibrated", ev.threshold)]
    for tpr in tprs:
        tau = threshold_at_tpr(ev.id_set.scores, tpr)
        opts.append(_option(ev, f"ID TPR {100 * tpr:g} %", tau, float(tpr)))
    for tau in thresholds:
        if not math.isfinite(float(tau)):
            raise OodgateError(f"threshold {tau!r} is not a finite number")
        opts.append(_option(ev, "given", float(tau)))
    return sorted(opts, key=lambda o: o.threshold)


def threshold_table(options: list[ThresholdOption]) -> str:
    """Markdown table of the candidate taus: ID rejected and OOD accepted per set, in %."""
    if not options:
        return ""
    sets = list(options[0].ood_accepted)
    head = "| τ | chosen as | ID rejected | " + " | ".join(f"{s} accepted" for s in sets) + " |"
    rows = [head, "|---:|---|---:|" + "---:|" * len(sets)]
    for o in options:
        cells = " | ".join(_pct(o.ood_accepted[s]) for s in sets)
        rows.append(f"| {o.threshold:.6g} | {o.label} | {_pct(o.id_rejected)} | {cells} |")
    return "\n".join(rows)


# -- the numbers -------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def detail_table(ev: Evaluation) -> str:
    """Markdown table of one method: every metric per OOD set and their mean, in %."""
    per = ev.per_set()
    sizes = {o.name: len(o.scores) for o in ev.ood_sets}
    rows = ["| OOD set | n | AUROC | FPR95 classic (ID+) | FPR95 OpenOOD (OOD+) | AUPR-In | AUPR-Out | "
            "accepted at τ |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in per.items():
        n = str(sizes[name]) if name in sizes else "—"
        rows.append(f"| {name} | {n} | {_pct(m['auroc'])} | {_pct(m['fpr95_id_positive'])} | "
                    f"{_pct(m['fpr95_ood_positive'])} | {_pct(m['aupr_in'])} | {_pct(m['aupr_out'])} | "
                    f"{_pct(m['accepted_ood_at_tau'])} |")
    return "\n".join(rows)


def report_dict(evaluations: list[Evaluation], options: dict[str, list[ThresholdOption]],
                plots: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything in metrics.json: per method the metrics of Evaluation.to_dict, set sizes and the what-if taus."""
    methods = []
    for ev in evaluations:
        d = ev.to_dict()
        d["id_images"] = len(ev.id_set.scores)
        d["ood_images"] = {o.name: len(o.scores) for o in ev.ood_sets}
        d["threshold_options"] = [o.to_dict() for o in options[ev.method]]
        if plots is not None and ev.method in plots:
            d["plots"] = plots[ev.method]
        methods.append(d)
    return {
        "format": REPORT_FORMAT, "oodgate_version": __version__,
        "conventions": {
            "score": "higher = more in-distribution; rejected (OOD) when score < threshold or not finite",
            "fpr95_id_positive": "classic (DICE, LINe, MOS, Energy): share of OOD accepted at the threshold that "
                                 "keeps 95 % of ID",
            "fpr95_ood_positive": "OpenOOD / AdaSCALE: share of ID rejected at the threshold that catches 95 % of "
                                  "OOD",
            "units": "shares in [0, 1]",
        },
        "methods": methods,
    }


def report_markdown(evaluations: list[Evaluation], options: dict[str, list[ThresholdOption]],
                    plots: dict[str, dict[str, Any]] | None = None, *, title: str = "OOD evaluation") -> str:
    """metrics.md: the summary table, then per method all metrics, the what-if taus and the plots."""
    first = evaluations[0]
    oods = ", ".join(f"{o.name} ({len(o.scores)})" for o in first.ood_sets)
    lines = [f"# {title}", "",
             f"ID: `{first.id_set.name}` ({len(first.id_set.scores)} images); OOD: {oods}.",
             "Scores: higher = more in-distribution; an image is rejected as OOD when score < τ. "
             "Figures in %. FPR95 classic (ID positive) = share of OOD accepted at the threshold that keeps 95 % "
             "of ID; FPR95 OpenOOD (OOD positive) = share of ID rejected at the threshold that catches 95 % of "
             "OOD.", "",
             "AUROC | FPR95 classic per OOD set:", "", metrics_table(evaluations), ""]
    for ev in evaluations:
        acc = "—" if ev.id_accuracy is None else f"{_pct(ev.id_accuracy)} %"
        lines += [f"## {ev.method}", "",
                  f"τ = {ev.threshold:.6g}; ID accuracy {acc}; ID rejected at τ "
                  f"{_pct(float(np.mean(ev.id_set.is_ood)))} %.", "",
                  detail_table(ev), "", "### What another τ would do", "",
                  "τ at a given ID TPR is computed on the evaluated ID scores; rejected = score < τ.", "",
                  threshold_table(options[ev.method]), ""]
        if plots is not None and ev.method in plots:
            p = plots[ev.method]
            lines += [f"![ROC curves]({p['roc']})", f"![TPR/FPR around τ]({p['tradeoff']})",
                      *(f"![{name}: score histogram]({f})" for name, f in p["hist"].items()), ""]
    return "\n".join(lines).rstrip() + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def report_html(evaluations: list[Evaluation], options: dict[str, list[ThresholdOption]],
                plots: dict[str, dict[str, Any]] | None, *, title: str = "OOD evaluation") -> str:
    """index.html: the tables and the plots on one page (relative links, no scripts)."""
    first = evaluations[0]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>ID: <code>{html.escape(first.id_set.name)}</code> ({len(first.id_set.scores)} images). "
             "Scores: higher = more in-distribution; rejected as OOD when score &lt; τ. Figures in %. "
             "FPR95 classic: ID positive (share of OOD accepted when 95 % of ID is kept); "
             "FPR95 OpenOOD: OOD positive (share of ID rejected when 95 % of OOD is caught).</p>"]
    for ev in evaluations:
        per = ev.per_set()
        sizes = {o.name: str(len(o.scores)) for o in ev.ood_sets}
        acc = "—" if ev.id_accuracy is None else _pct(ev.id_accuracy) + " %"
        parts.append(f"<h2>{html.escape(ev.method)}</h2><p>τ = {ev.threshold:.6g}; ID accuracy {acc}; "
                     f"ID rejected at τ {_pct(float(np.mean(ev.id_set.is_ood)))} %.</p>")
        parts.append(_html_table(
            ["OOD set", "n", "AUROC", "FPR95 classic (ID+)", "FPR95 OpenOOD (OOD+)", "AUPR-In", "AUPR-Out",
             "accepted at τ"],
            [[k, sizes.get(k, "—"), _pct(m["auroc"]), _pct(m["fpr95_id_positive"]), _pct(m["fpr95_ood_positive"]),
              _pct(m["aupr_in"]), _pct(m["aupr_out"]), _pct(m["accepted_ood_at_tau"])] for k, m in per.items()]))
        opts = options[ev.method]
        sets = list(opts[0].ood_accepted) if opts else []
        parts.append("<h3>What another τ would do</h3>")
        parts.append(_html_table(
            ["τ", "chosen as", "ID rejected", *(f"{s} accepted" for s in sets)],
            [[f"{o.threshold:.6g}", o.label, _pct(o.id_rejected), *(_pct(o.ood_accepted[s]) for s in sets)]
             for o in opts]))
        if plots is not None and ev.method in plots:
            p = plots[ev.method]
            imgs = [p["roc"], p["tradeoff"], *p["hist"].values()]
            parts.append('<div class="plots">' + "".join(
                f'<img src="{html.escape(f)}" width="{PLOT_PIXELS[0]}" height="{PLOT_PIXELS[1]}" '
                f'alt="{html.escape(f)}">' for f in imgs) + "</div>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}img{margin:4px;border:1px solid #eee}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


# -- the plots ---------------------------------------------------------------------------------------------------


def _figure() -> Any:
    """A matplotlib Figure on an Agg canvas of PLOT_SIZE at PLOT_DPI (no pyplot, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OodgateError("the report's plots need matplotlib: pip install 'oodgate[plots]' "
                           "(or write the report without plots: plots=False / --no-plots)") from None
    fig = Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI)  # no bbox_inches: every PNG is exactly PLOT_PIXELS
    return buf.getvalue()


def _accepted_share(sorted_scores: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Share of scores >= each t (sorted_scores ascending)."""
    return 1.0 - np.searchsorted(sorted_scores, t, side="left") / sorted_scores.size


def plot_histogram(ev: Evaluation, ood_name: str) -> bytes:
    """PNG: histogram of ID scores vs one OOD set's scores (share of each set per bin), tau marked."""
    ood = next((o for o in ev.ood_sets if o.name == ood_name), None)
    if ood is None:
        raise OodgateError(f"no OOD set {ood_name!r} in this evaluation: use one of {[o.name for o in ev.ood_sets]}")
    ids, oods = np.asarray(ev.id_set.scores, np.float64), np.asarray(ood.scores, np.float64)
    both = np.concatenate([ids, oods, [ev.threshold]])
    edges = np.histogram_bin_edges(both, bins=60)
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(ids, bins=edges, weights=np.full(ids.size, 1 / ids.size), alpha=0.55, color="tab:blue",
            label=f"ID {ev.id_set.name} ({ids.size})")
    ax.hist(oods, bins=edges, weights=np.full(oods.size, 1 / oods.size), alpha=0.55, color="tab:red",
            label=f"OOD {ood.name} ({oods.size})")
    ax.axvline(ev.threshold, color="black", linestyle="--", linewidth=1.2, label=f"τ = {ev.threshold:.4g}")
    m = metrics.ood_metrics(ids, oods)
    ax.text(0.01, 0.97, f"AUROC {100 * m['auroc']:.1f} %   FPR95 (ID+) {100 * m['fpr95_id_positive']:.1f} %\n"
                        f"at τ: ID rejected {100 * metrics.rejected_share(ids, ev.threshold):.1f} %, "
                        f"OOD accepted {100 * (1 - metrics.rejected_share(oods, ev.threshold)):.1f} %",
            transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xlabel("score (higher = more in-distribution)")
    ax.set_ylabel("share of the set per bin")
    ax.set_title(f"{ev.method}: ID vs {ood.name}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # room for the text
    return _png(fig)


def plot_roc(ev: Evaluation) -> bytes:
    """PNG: ROC curve (ID positive) per OOD set, the operating point at tau marked on each."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    for i, o in enumerate(ev.ood_sets):
        color = f"C{i % 10}"
        fpr, tpr = metrics.roc_curve(ev.id_set.scores, o.scores)
        ax.plot(fpr, tpr, color=color, linewidth=1.4,
                label=f"{o.name} (AUROC {100 * metrics.auroc(ev.id_set.scores, o.scores):.1f} %)")
        ax.plot(1 - metrics.rejected_share(o.scores, ev.threshold), 1 - metrics.rejected_share(ev.id_set.scores,
                ev.threshold), marker="o", color=color, markersize=5, markeredgecolor="black")
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=0.6)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("FPR: share of OOD accepted")
    ax.set_ylabel("TPR: share of ID accepted")
    ax.set_title(f"{ev.method}: ROC per OOD set (dots: τ = {ev.threshold:.4g}; dashed: TPR 95 %)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def plot_tradeoff(ev: Evaluation, options: list[ThresholdOption]) -> bytes:
    """PNG: share of ID and of each OOD set accepted as a function of the threshold, around tau; candidates marked."""
    ids = np.sort(np.asarray(ev.id_set.scores, np.float64))
    taus = [o.threshold for o in options] or [ev.threshold]
    lo = min(float(np.quantile(ids, 0.001)), *taus)
    hi = max(float(np.quantile(ids, 0.5)), *taus)
    pad = 0.05 * (hi - lo) or 1.0
    t = np.linspace(lo - pad, hi + pad, 400)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(t, _accepted_share(ids, t), color="black", linewidth=2, label=f"ID {ev.id_set.name} (TPR)")
    for i, o in enumerate(ev.ood_sets):
        ax.plot(t, _accepted_share(np.sort(np.asarray(o.scores, np.float64)), t), color=f"C{i % 10}",
                linewidth=1.2, label=f"{o.name} (FPR)")
    for o in options:
        calibrated = o.label == "calibrated"
        ax.axvline(o.threshold, color="black" if calibrated else "grey", linestyle="--" if calibrated else ":",
                   linewidth=1.2 if calibrated else 0.8)
        ax.text(o.threshold, 0.98 if calibrated else 0.02, f" {o.label.replace('ID TPR ', 'TPR ')}", rotation=90,
                fontsize=7, va="top" if calibrated else "bottom", color="black" if calibrated else "dimgrey")
    ax.set_xlim(t[0], t[-1])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("threshold τ (accepted when score ≥ τ)")
    ax.set_ylabel("share accepted")
    ax.set_title(f"{ev.method}: what each τ accepts (dashed: calibrated τ; dotted: τ at ID TPR)", fontsize=10)
    ax.legend(fontsize=7, loc="center left")
    return _png(fig)


# -- the folder --------------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "set"


def _plot_names(evaluations: list[Evaluation], several: bool) -> dict[str, dict[str, Any]]:
    """File names of the plots per method; prefixed with the method when the report holds several."""
    out: dict[str, dict[str, Any]] = {}
    for ev in evaluations:
        prefix = f"{_safe(ev.method)}_" if several else ""
        hist: dict[str, str] = {}
        for o in ev.ood_sets:
            stem, k = f"{prefix}hist_{_safe(o.name)}", 2
            while f"{stem}.png" in hist.values():
                stem, k = f"{prefix}hist_{_safe(o.name)}-{k}", k + 1
            hist[o.name] = f"{stem}.png"
        out[ev.method] = {"hist": hist, "roc": f"{prefix}roc.png", "tradeoff": f"{prefix}tradeoff.png"}
    return out


@dataclass
class Report:
    """What write_report wrote: the folder, its files, and the what-if taus per method."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    options: dict[str, list[ThresholdOption]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


def write_report(evaluations: Evaluation | Sequence[Evaluation], folder: str | Path, *,
                 tprs: Sequence[float] = DEFAULT_TPRS, thresholds: Sequence[float] = (), plots: bool = True,
                 html_page: bool = True, title: str = "OOD evaluation", plot_methods: Sequence[str] | None = None,
                 overwrite: bool = False) -> Report:
    """Write metrics.md, metrics.json, PNG plots (hist_<set>.png, roc.png, tradeoff.png) and index.html.

    With several evaluations (methods) the plots are prefixed with the method name; ``plot_methods`` limits the
    plots to those methods (default: all). Nothing is overwritten
    unless ``overwrite``; every file is written atomically.
    """
    evs = [evaluations] if isinstance(evaluations, Evaluation) else list(evaluations)
    if not evs:
        raise OodgateError("no evaluation to report: evaluate at least one graph")
    methods = [ev.method for ev in evs]
    if len(set(methods)) != len(methods):
        raise OodgateError(f"methods repeat in the report ({methods}): give each evaluation a distinct method name")
    if not all(ev.ood_sets for ev in evs):
        raise OodgateError("every evaluation needs at least one OOD set to report on")
    options = {ev.method: threshold_options(ev, tprs, thresholds) for ev in evs}
    if plot_methods is not None and set(plot_methods) - set(methods):
        raise OodgateError(f"plot_methods {sorted(set(plot_methods) - set(methods))} are not in the report "
                           f"({methods})")
    drawn = [ev for ev in evs if plot_methods is None or ev.method in plot_methods]
    names = _plot_names(drawn, len(evs) > 1) if plots else None
    rendered: dict[str, bytes] = {}
    if names is not None:
        for ev in drawn:
            n = names[ev.method]
            rendered[n["roc"]] = plot_roc(ev)
            rendered[n["tradeoff"]] = plot_tradeoff(ev, options[ev.method])
            for set_name, file in n["hist"].items():
                rendered[file] = plot_histogram(ev, set_name)
    data = report_dict(evs, options, names)
    rendered["metrics.json"] = (json.dumps(data, indent=1, allow_nan=False) + "\n").encode()
    rendered["metrics.md"] = report_markdown(evs, options, names, title=title).encode()
    if html_page:
        rendered["index.html"] = report_html(evs, options, names, title=title).encode()
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise OodgateError(f"report folder {out} is a file: choose a folder path")
    clash = [f for f in rendered if (out / f).exists()]
    if clash and not overwrite:
        raise OodgateError(f"{out} already holds {', '.join(sorted(clash))}: choose another folder or overwrite "
                           "(--force / overwrite=True)")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, payload in rendered.items():
        write_atomic(out / name, payload, overwrite=overwrite)
        files.append(out / name)
    return Report(out, files, options, data)


__all__ = ["DEFAULT_TPRS", "PLOT_DPI", "PLOT_PIXELS", "PLOT_SIZE", "Report", "ThresholdOption", "detail_table",
           "plot_histogram", "plot_roc", "plot_tradeoff", "report_dict", "report_html", "report_markdown",
           "threshold_at_tpr", "threshold_options", "threshold_table", "write_report"]
