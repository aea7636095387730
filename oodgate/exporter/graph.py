"""The exported module: backbone + detector head + threshold, with the four named outputs."""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.metadata import INPUT_NAME, OUTPUT_NAMES


class FeatureScorer(nn.Module):
    """x -> (logits, score, label) for detectors that score pooled features: head(backbone(x))."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))


class OodgateGraph(nn.Module):
    """x -> (logits, score, is_ood = score < threshold, label); the threshold is a constant of the graph."""

    def __init__(self, scorer: nn.Module, threshold: float) -> None:
        super().__init__()
        self.scorer = scorer
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, score, label = self.scorer(x)
        return logits, score, score < self.threshold, label.to(torch.int64)


def scorer_module(detector: object, split: nn.Module) -> nn.Module:
    """The detector's x -> (logits, score, label) module: its own (e.g. AdaSCALE's two-pass graph) or
    backbone + feature head."""
    build = getattr(detector, "graph_module", None)
    if build is not None:
        return build(split)
    return FeatureScorer(split.backbone, detector.head())  # type: ignore[attr-defined]


def build_graph_module(calibration: object, split: nn.Module) -> OodgateGraph:
    """The whole exported module of a calibration, in eval mode (also the PyTorch reference for parity)."""
    detector = calibration.detector  # type: ignore[attr-defined]
    return OodgateGraph(scorer_module(detector, split), calibration.threshold).eval()  # type: ignore[attr-defined]
