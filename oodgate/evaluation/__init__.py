"""Evaluation (torch-free): metrics (pure functions), scoring a graph on data sets, the report, metric drift and
parity against references / golden files. Names are imported on first use."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Evaluation": ".evaluate", "SetScores": ".evaluate", "evaluate_session": ".evaluate", "metrics_table": ".evaluate",
    "score_set": ".evaluate",
    "Report": ".report", "threshold_options": ".report", "write_report": ".report",
    "metric_drift": ".drift",
    "ParityReport": ".parity", "compare_outputs": ".parity", "load_golden": ".parity",
    "save_golden": ".parity",
}
lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
