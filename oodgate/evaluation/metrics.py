"""OOD metrics as pure NumPy functions. Scores are oriented higher = more in-distribution.

Two FPR@95%TPR conventions exist and are named in every key:
- ``fpr95_id_positive`` (classic: DICE, LINe, MOS, Energy papers): ID is positive; the threshold keeps 95 % of
  ID; the figure is the share of OOD accepted.
- ``fpr95_ood_positive`` (OpenOOD, AdaSCALE): OOD is positive; the threshold catches 95 % of OOD; the figure is
  the share of ID rejected.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OodgateError

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # NumPy 1.x names it trapz


def _scores(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0:
        raise OodgateError(f"{what} scores are empty: score at least one sample")
    if not np.all(np.isfinite(arr)):
        raise OodgateError(f"{what} scores contain NaN/inf: check the detector and the inputs")
    return arr


def _counts(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct threshold, from the highest score down (ties as one)."""
    scores = np.concatenate([positive, negative])
    is_pos = np.concatenate([np.ones(positive.size), np.zeros(negative.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    last_of_value = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tps = np.cumsum(is_pos)[last_of_value]
    fps = (last_of_value + 1) - tps
    return tps, fps


def roc_curve(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) with ID as the positive class, starting at (0, 0)."""
    pos, neg = _scores(id_scores, "ID"), _scores(ood_scores, "OOD")
    tps, fps = _counts(pos, neg)
    return np.r_[0.0, fps / neg.size], np.r_[0.0, tps / pos.size]


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve (symmetric: the same with either class positive)."""
    fpr, tpr = roc_curve(id_scores, ood_scores)
    return float(_trapezoid(tpr, fpr))


def _fpr_at_tpr(positive: np.ndarray, negative: np.ndarray, tpr: float) -> float:
    tps, fps = _counts(positive, negative)
    reached = np.nonzero(tps / positive.size >= tpr - 1e-12)[0]
    return float(fps[reached[0]] / negative.size)


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> float:
    """Classic FPR@TPR (ID positive): share of OOD accepted by the threshold that keeps ``tpr`` of ID."""
    return _fpr_at_tpr(_scores(id_scores, "ID"), _scores(ood_scores, "OOD"), tpr)


def fpr_at_tpr_ood_positive(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> float:
    """OpenOOD FPR@TPR (OOD positive): share of ID rejected by the threshold that catches ``tpr`` of OOD."""
    return _fpr_at_tpr(-_scores(ood_scores, "OOD"), -_scores(id_scores, "ID"), tpr)


def _average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    tps, fps = _counts(positive, negative)
    precision = tps / (tps + fps)
    recall = tps / positive.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr_in(id_scores: Any, ood_scores: Any) -> float:
    """Average precision with ID as positive (step-wise, as scikit-learn's average_precision_score)."""
    return _average_precision(_scores(id_scores, "ID"), _scores(ood_scores, "OOD"))


def aupr_out(id_scores: Any, ood_scores: Any) -> float:
    """Average precision with OOD as positive (scores negated)."""
    return _average_precision(-_scores(ood_scores, "OOD"), -_scores(id_scores, "ID"))


def accuracy(predicted: Any, labels: Any) -> float:
    """Share of correct predictions."""
    p, y = np.asarray(predicted).ravel(), np.asarray(labels).ravel()
    if p.shape != y.shape or p.size == 0:
        raise OodgateError(f"accuracy needs as many predictions as labels (got {p.size} and {y.size})")
    return float(np.mean(p == y))


def ood_metrics(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> dict[str, float]:
    """All OOD metrics of one ID/OOD pair, keys naming their convention (fprNN: NN = 100 * tpr)."""
    tag = f"fpr{round(100 * tpr):d}"
    return {
        "auroc": auroc(id_scores, ood_scores),
        f"{tag}_id_positive": fpr_at_tpr(id_scores, ood_scores, tpr),
        f"{tag}_ood_positive": fpr_at_tpr_ood_positive(id_scores, ood_scores, tpr),
        "aupr_in": aupr_in(id_scores, ood_scores),
        "aupr_out": aupr_out(id_scores, ood_scores),
    }


def rejected_share(scores: Any, threshold: float) -> float:
    """Share of samples flagged OOD (score < threshold)."""
    s = _scores(scores, "the")
    return float(np.mean(s < threshold))
