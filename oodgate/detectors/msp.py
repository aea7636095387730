"""MSP: maximum softmax probability (Hendrycks & Gimpel)."""

from __future__ import annotations

import torch

from .base import Detector, DetectorHead


class MSPHead(DetectorHead):
    """score = max softmax(z)."""

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(z, dim=1).max(dim=1).values


class MSP(Detector):
    """Maximum softmax probability; nothing fitted."""

    name = "msp"

    def _build_head(self) -> DetectorHead:
        return MSPHead(self.weight_, self.bias_)
