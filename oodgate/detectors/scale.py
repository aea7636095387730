"""SCALE (Xu et al.): scale h by exp(s1/s2), s2 = sum of its top keep(p) entries; nothing pruned."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import OodgateError
from .base import Detector, DetectorHead, keep_count
from .ops import energy, safe_ratio, top_k


class SCALEHead(DetectorHead):
    """score = E(W (h exp(s1/s2)) + b)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, k: int) -> None:
        super().__init__(weight, bias)
        self.k = int(k)

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s1 = h.sum(dim=1, keepdim=True)
        s2 = top_k(h, self.k)[0].sum(dim=1, keepdim=True)
        return energy(self.logits(h * torch.exp(safe_ratio(s1, s2))))


class SCALE(Detector):
    """SCALE with p = 85 by default."""
    assumes_nonnegative_features = True

    name = "scale"
    defaults = {"p": 85.0}

    def _build_head(self) -> DetectorHead:
        d = self.weight_.shape[1]
        k = keep_count(d, self.params["p"])
        if k < 1:
            raise OodgateError(f"p={self.params['p']} keeps no entry of {d} features: lower p")
        return SCALEHead(self.weight_, self.bias_, k)
