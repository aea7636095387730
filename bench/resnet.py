"""A ResNet-50-sized CNN for timing (bottleneck blocks 3-4-6-3, 2048 pooled features, 1000 classes).

The layout is torchvision's ResNet-50 (v1.5: stride on the 3x3 conv), written out here so that the benchmarks
need no torchvision. Weights are random (seeded); ``calibrate_batch_norm`` sets the BatchNorm running statistics
from a few real images so that the pooled features have realistic scale (timing does not depend on the weights).
"""

from __future__ import annotations

import torch
from torch import nn

#: ResNet-50: 25.6 M parameters, 4.1 GMACs per 3x224x224 image
LAYERS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, each with BN; identity or 1x1 strided projection shortcut."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * EXPANSION
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50Sized(nn.Module):
    """torchvision-style ResNet-50 with a ``fc`` head (so ``split_classifier`` finds it)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks: list[nn.Module] = []
        cin = 64
        for i, (n, width) in enumerate(zip(LAYERS, WIDTHS)):
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * EXPANSION
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(self.layers(x))))


def resnet50_sized(seed: int = 0, num_classes: int = 1000) -> ResNet50Sized:
    """The model with seeded random weights (kaiming-normal convs, zero-initialised last BN of each block)."""
    gen = torch.Generator().manual_seed(seed)
    model = ResNet50Sized(num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=gen)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features ** 0.5
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.uniform_(-bound, bound, generator=gen)
    return model.eval()


@torch.no_grad()
def calibrate_batch_norm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running mean/var to the statistics of ``x`` (one pass in train mode), then eval."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch gives exactly its statistics
    model.train()
    model(x)
    return model.eval()
