"""The exported module: the detector's scorer (backbone + head) + threshold, with the four named outputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..calibration.artifact import Calibration
from ..runtime.metadata import INPUT_NAME, OUTPUT_NAMES


def is_ood(score: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """NOT(threshold <= score < +inf): a NaN or infinite score is OOD (fail closed), in the graph itself."""
    accepted = (score >= threshold) & (score < float("inf"))
    return torch.logical_not(accepted)


class OodgateGraph(nn.Module):
    """x -> (logits, score, is_ood = NOT(tau <= score < inf), label); the threshold is a constant of the graph.

    Written as the negation of "accepted" so that a NaN score (every comparison False) is rejected.
    """

    def __init__(self, scorer: nn.Module, threshold: float) -> None:
        super().__init__()
        if not math.isfinite(float(threshold)):
            from ..errors import OodgateError

            raise OodgateError(f"threshold {threshold!r} is not finite: re-run calibrate (a NaN threshold accepts "
                               "nothing or everything)")
        self.scorer = scorer
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, score, label = self.scorer(x)
        # a NaN/inf anywhere in an input makes its score NaN (x * 0 is NaN exactly there), so is_ood is True for it
        # in every runtime, whatever the backbone's ReLUs and pools did with the non-finite value
        score = score + (x * 0).sum(dim=tuple(range(1, x.ndim))).to(score.dtype)
        return logits, score, is_ood(score, self.threshold), label.to(torch.int64)


def build_graph_module(calibration: Calibration, split: nn.Module) -> OodgateGraph:
    """The whole exported module of a calibration, in eval mode (also the PyTorch reference for parity)."""
    return OodgateGraph(calibration.detector.graph_scorer(split), calibration.threshold).eval()


__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "OodgateGraph", "build_graph_module"]
