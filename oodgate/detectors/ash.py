"""ASH (Djurisic et al.): activation shaping by pruning all but the top-k pooled activations.

Three variants, one file: ASH-P (prune), ASH-S (prune + scale by exp(s1/s2)), ASH-B (binarise).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import OodgateError
from .base import Detector, DetectorHead, keep_count
from .ops import energy, keep_top_k, safe_ratio


class ASHHead(DetectorHead):
    """score = E(W shape(h) + b) with shape one of prune / scale / binarise."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, k: int, variant: str) -> None:
        super().__init__(weight, bias)
        self.k = int(k)
        self.variant = variant

    def shape(self, h: torch.Tensor) -> torch.Tensor:
        """The shaped activations h'."""
        pruned, mask = keep_top_k(h, self.k)
        if self.variant == "p":
            return pruned
        s1 = h.sum(dim=1, keepdim=True)
        if self.variant == "s":
            return pruned * torch.exp(safe_ratio(s1, pruned.sum(dim=1, keepdim=True)))
        return mask * (s1 / self.k)

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return energy(self.logits(self.shape(h)))


class _ASH(Detector):
    assumes_nonnegative_features = True
    variant = "p"
    defaults = {"p": 90.0}
    fitted_info = ()

    def _build_head(self) -> DetectorHead:
        d = self.weight_.shape[1]
        k = keep_count(d, self.params["p"])
        if k < 1:
            raise OodgateError(f"p={self.params['p']} keeps no entry of {d} features: lower p")
        return ASHHead(self.weight_, self.bias_, k, self.variant)


class ASHP(_ASH):
    """ASH-P: zero all but the top keep(p) entries of h."""

    name = "ash_p"
    variant = "p"


class ASHS(_ASH):
    """ASH-S: ASH-P, then multiply by exp(s1/s2) (sum before / after pruning)."""

    name = "ash_s"
    variant = "s"


class ASHB(_ASH):
    """ASH-B: the top keep(p) entries set to s1/keep(p), the rest 0."""

    name = "ash_b"
    variant = "b"
