"""ReAct (Sun et al.): clip the pooled activations at an ID percentile, then energy."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .base import Detector, DetectorHead
from .ops import energy


def fit_clip_value(batches: Iterable[tuple[np.ndarray, object]], p: float) -> float:
    """c = numpy.percentile of all ID pooled activations at p (linear interpolation)."""
    values = np.concatenate([f.ravel() for f, _ in batches])
    return float(np.percentile(values, p))


class ReActHead(DetectorHead):
    """score = E(W min(h, c) + b)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, clip: float) -> None:
        super().__init__(weight, bias)
        self.register_buffer("clip", torch.tensor(float(clip), dtype=torch.float32))

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return energy(self.logits(torch.minimum(h, self.clip)))


class ReAct(Detector):
    """ReAct: c = perc(all ID activations, p), p = 90 by default."""
    assumes_nonnegative_features = True

    name = "react"
    defaults = {"p": 90.0}
    fitted = ("weight_", "bias_")
    fitted_info = ("clip_",)

    def _fit(self, batches: Iterable[tuple[np.ndarray, object]]) -> None:
        self.clip_ = fit_clip_value(batches, self.params["p"])

    def _build_head(self) -> DetectorHead:
        return ReActHead(self.weight_, self.bias_, self.clip_)
