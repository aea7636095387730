"""The embedded default: a small CNN trained on scikit-learn's digits (weights ship with oodgate)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).parent / "weights" / "digits_cnn.pt"
#: preprocessing, class names and test accuracy, written by ``python -m oodgate.models.training digits``
CARD = WEIGHTS.with_suffix(".json")


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stack with max-pooling and a strided conv, global average pooling, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=False)]

        self.features = nn.Sequential(
            *block(in_channels, width), *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width, stride=2), *block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def digits_cnn(weights: str | Path | None = WEIGHTS) -> SmallCNN:
    """The digits CNN with its committed weights (no training needed), in eval mode."""
    model = SmallCNN()
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()
