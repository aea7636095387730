"""The exported module: the detector's scorer (backbone + head) + threshold, with the four named outputs."""

from __future__ import annotations

import torch
from torch import nn

from ..calibration.artifact import Calibration
from ..runtime.metadata import INPUT_NAME, OUTPUT_NAMES


class OodgateGraph(nn.Module):
    """x -> (logits, score, is_ood = score < threshold, label); the threshold is a constant of the graph."""

    def __init__(self, scorer: nn.Module, threshold: float) -> None:
        super().__init__()
        self.scorer = scorer
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, score, label = self.scorer(x)
        return logits, score, score < self.threshold, label.to(torch.int64)


def build_graph_module(calibration: Calibration, split: nn.Module) -> OodgateGraph:
    """The whole exported module of a calibration, in eval mode (also the PyTorch reference for parity)."""
    return OodgateGraph(calibration.detector.graph_scorer(split), calibration.threshold).eval()


__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OodgateGraph", "build_graph_module"]
