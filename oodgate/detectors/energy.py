"""Energy score (Liu et al.): logsumexp of the logits."""

from __future__ import annotations

import torch

from .base import Detector, DetectorHead
from .ops import energy


class EnergyHead(DetectorHead):
    """score = logsumexp(z)."""

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return energy(z)


class Energy(Detector):
    """Energy score; nothing fitted."""

    name = "energy"

    def _build_head(self) -> DetectorHead:
        return EnergyHead(self.weight_, self.bias_)
