"""The accept/reject threshold: fitted on held-out ID scores at a target true-positive rate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import OodgateError


def fit_threshold(id_scores: Any, tpr: float = 0.95) -> float:
    """tau such that ``score >= tau`` accepts the share ``tpr`` of the given ID scores (is_ood = score < tau).

    tau is the order statistic at floor((1 - tpr) * n): ceil(tpr * n) samples are accepted when scores are
    distinct (ties at tau are all accepted).
    """
    if isinstance(tpr, bool) or not isinstance(tpr, (int, float)) or not 0 < tpr <= 1:
        raise OodgateError(f"target TPR must be in (0, 1], got {tpr!r} (e.g. 0.95 keeps 95 % of ID)")
    scores = np.asarray(id_scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise OodgateError("no held-out ID scores to fit the threshold on: give more ID data or a larger holdout")
    if not np.all(np.isfinite(scores)):
        raise OodgateError("held-out ID scores contain NaN/inf: check the detector and the ID data")
    rejected = int(math.floor((1.0 - tpr) * scores.size + 1e-9))
    return float(np.sort(scores)[rejected])
