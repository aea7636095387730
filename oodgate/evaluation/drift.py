"""What a runtime's numerical drift (FP16, TF32, another kernel) does to OOD detection, not only element-wise.

``metric_drift`` scores the same real ID and OOD inputs twice (the reference, e.g. PyTorch FP32, and the runtime,
e.g. TensorRT FP16) and reports the change in AUROC and FPR@95%TPR (both conventions), the largest score change,
and, with the deployed threshold, how many accept/reject decisions flip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import OodgateError
from .metrics import auroc, fpr_at_tpr, fpr_at_tpr_ood_positive

METRICS = ("auroc", "fpr95_id_positive", "fpr95_ood_positive")


@dataclass(frozen=True)
class MetricDrift:
    """Reference vs runtime: metrics of each, their differences (runtime - reference), score and decision drift."""

    reference: dict[str, float]
    runtime: dict[str, float]
    delta: dict[str, float]
    max_abs_score_diff: float
    max_rel_score_diff: float
    n_id: int
    n_ood: int
    decision_flips: int | None = None
    threshold: float | None = None
    nonfinite_scores: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst(self) -> float:
        """The largest absolute change of AUROC or either FPR95 (fractions, not %); inf if the runtime gave NaN/inf
        scores (e.g. an FP16 overflow)."""
        if self.nonfinite_scores:
            return float("inf")
        return max(abs(v) for v in self.delta.values())

    def line(self) -> str:
        """One line for a report: each metric as reference -> runtime (delta), in %."""
        parts = [f"{k} {100 * self.reference[k]:.2f} -> {100 * self.runtime[k]:.2f} ({100 * self.delta[k]:+.2f})"
                 for k in METRICS]
        tail = f"; max |score diff| {self.max_abs_score_diff:.3g}"
        if self.nonfinite_scores:
            tail += f"; {self.nonfinite_scores} NaN/inf runtime scores (overflow?)"
        if self.decision_flips is not None:
            tail += f"; decisions flipped at tau {self.decision_flips}/{self.n_id + self.n_ood}"
        return f"{', '.join(parts)} (in %, {self.n_id} ID / {self.n_ood} OOD){tail}"


def _metrics(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float) -> dict[str, float]:
    return {"auroc": auroc(id_scores, ood_scores), "fpr95_id_positive": fpr_at_tpr(id_scores, ood_scores, tpr),
            "fpr95_ood_positive": fpr_at_tpr_ood_positive(id_scores, ood_scores, tpr)}


def metric_drift(ref_scores_id: Any, ref_scores_ood: Any, got_scores_id: Any, got_scores_ood: Any, *,
                 tpr: float = 0.95, threshold: float | None = None) -> MetricDrift:
    """AUROC / FPR@95%TPR (both conventions) of the reference and of the runtime on the same ID and OOD inputs.

    Scores are oriented higher = ID; ``got_*`` must score the same inputs, in the same order, as ``ref_*``.
    With ``threshold``, also counts inputs whose decision (score < threshold -> OOD) differs. NaN/inf runtime scores
    (an FP16 overflow) are counted, not raised: the runtime metrics are then NaN.
    """
    arrays = [np.asarray(a, np.float64).ravel() for a in (ref_scores_id, ref_scores_ood, got_scores_id,
                                                          got_scores_ood)]
    r_id, r_ood, g_id, g_ood = arrays
    if r_id.shape != g_id.shape or r_ood.shape != g_ood.shape:
        raise OodgateError(f"runtime and reference must score the same inputs: ID {g_id.size} vs {r_id.size}, "
                           f"OOD {g_ood.size} vs {r_ood.size}")
    ref = _metrics(r_id, r_ood, tpr)
    r_all, g_all = np.concatenate([r_id, r_ood]), np.concatenate([g_id, g_ood])
    nonfinite = int(np.sum(~np.isfinite(g_all)))
    got = {k: float("nan") for k in METRICS} if nonfinite else _metrics(g_id, g_ood, tpr)
    diff = np.where(np.isfinite(g_all), np.abs(g_all - r_all), np.inf)
    rel = diff / np.maximum(np.abs(r_all), 1e-30)
    flips = None
    if threshold is not None:
        tau = np.float32(threshold)
        flips = int(np.sum((r_all.astype(np.float32) < tau) != (g_all.astype(np.float32) < tau)))
    return MetricDrift(ref, got, {k: got[k] - ref[k] for k in METRICS}, float(diff.max(initial=0.0)),
                       float(rel.max(initial=0.0)), int(r_id.size), int(r_ood.size), flips,
                       None if threshold is None else float(threshold), nonfinite)
