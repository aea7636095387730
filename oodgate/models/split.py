"""Split any classifier into a backbone (input -> pooled penultimate features) and its final linear head.

The head is found, in order: a timm model's ``get_classifier()``; then ``.fc`` (ResNet, ResNeXt, Wide-ResNet,
RegNet, Inception), ``.classifier`` / ``.classifier[-1]`` (DenseNet, EfficientNet, MobileNet, ConvNeXt),
``.head`` / ``.head.fc`` (Swin; timm ViT / ConvNeXt), ``._fc`` (EfficientNet ports), ``.last_linear`` and
``.heads`` / ``.heads.head`` (torchvision ViT). The backbone is the model with that layer replaced by
``nn.Identity``, so the features h are exactly what the head sees; per family (docs/ZOO.md): ResNet/RegNet/
DenseNet pool ReLU outputs (h >= 0); EfficientNet pools SiLU outputs (h >= -0.28); MobileNetV3's h is the
Hardswish output of the classifier's first Linear; ConvNeXt's the LayerNorm of the pooled map and ViT's / Swin's
the final LayerNorm's output (signed). ``nonnegative_share`` tells how much of h is >= 0.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import OodgateError

#: attribute paths tried, in order, when the user names no head (torchvision, timm, EfficientNet ports)
HEAD_ATTRIBUTES = ("fc", "classifier", "head", "_fc", "last_linear", "heads")


def _resolve(model: nn.Module, path: str) -> nn.Module | None:
    module: Any = model
    for part in path.split("."):
        if not hasattr(module, part):
            return None
        module = getattr(module, part)
    return module if isinstance(module, nn.Module) else None


def _linear_path(model: nn.Module, path: str) -> str | None:
    """The dotted path of the final nn.Linear at or inside ``path`` (a Linear, a Sequential ending in one, or a
    head module with .fc), or None."""
    module = _resolve(model, path)
    if isinstance(module, nn.Linear):
        return path
    if isinstance(module, nn.Sequential) and len(module) > 0:
        last = list(module._modules)[-1]
        return _linear_path(model, f"{path}.{last}")
    if module is not None and isinstance(getattr(module, "fc", None), nn.Linear):
        return f"{path}.fc"
    return None


def nonnegative_share(features: Any) -> float:
    """Share of feature entries that are >= 0 (1.0 for ReLU-pooled features)."""
    values = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(features)
    return float((values >= 0).float().mean()) if values.numel() else 1.0


def _set(model: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _resolve(model, parent_path) if parent_path else model
    setattr(parent, name, value)


class SplitModel(nn.Module):
    """A classifier as ``backbone`` (x -> h, shape (N, D)) and ``head`` (the final nn.Linear: h -> logits)."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, head_path: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_path = head_path

    @property
    def num_features(self) -> int:
        return int(self.head.in_features)

    @property
    def num_classes(self) -> int:
        return int(self.head.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features (N, D)."""
        h = self.backbone(x)
        if h.ndim != 2 or h.shape[1] != self.num_features:
            raise OodgateError(
                f"the backbone (the model with its head '{self.head_path}' removed) gives features of shape "
                f"{tuple(h.shape)}, expected (N, {self.num_features}): name the final linear layer with head=... "
                "or wrap the model so that removing it leaves pooled (N, D) features"
            )
        return h


def _get_classifier_path(model: nn.Module) -> str | None:
    """The dotted path of what a timm-style ``model.get_classifier()`` returns, if it is one of model's modules."""
    getter = getattr(model, "get_classifier", None)
    if not callable(getter):
        return None
    try:
        found = getter()
    except Exception:  # noqa: BLE001 - a user's method of that name may be anything: fall back to attributes
        return None
    if not isinstance(found, nn.Module):
        return None
    return next((name for name, module in model.named_modules() if module is found and name), None)


def split_classifier(model: nn.Module, head: str | None = None) -> SplitModel:
    """Split ``model`` into backbone and final linear head; ``head`` names the head attribute (dotted path)."""
    if isinstance(model, SplitModel):
        return model
    if not isinstance(model, nn.Module):
        raise OodgateError(f"expected a torch.nn.Module classifier, got {type(model).__name__}")
    timm_head = None if head else _get_classifier_path(model)
    candidates = [head] if head else [c for c in (timm_head, *HEAD_ATTRIBUTES) if c]
    path = next((p for p in (_linear_path(model, c) for c in candidates) if p), None)
    if path is None:
        if head:
            found = _resolve(model, head)
            what = "no such attribute" if found is None else f"a {type(found).__name__}, not an nn.Linear"
            raise OodgateError(f"head '{head}' of {type(model).__name__} is {what}: name the final nn.Linear layer")
        raise OodgateError(
            f"{type(model).__name__} has no linear head at any of .{', .'.join(HEAD_ATTRIBUTES)}: "
            "pass head='attribute.path' naming its final nn.Linear (oodgate needs a linear last layer)"
        )
    backbone = copy.deepcopy(model).eval()
    linear = copy.deepcopy(_resolve(model, path))
    assert isinstance(linear, nn.Linear)
    _set(backbone, path, nn.Identity())
    return SplitModel(backbone, linear, path).eval()


def first_conv(model: nn.Module) -> tuple[str, int] | None:
    """(dotted path, input channels) of the first convolution registered in ``model``, or None if it has none."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return name, int(module.in_channels)
    return None

