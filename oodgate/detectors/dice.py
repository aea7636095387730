"""DICE (Sun & Li): sparsify the final layer by the ID contribution mean(h) * W, then energy."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .base import Detector, DetectorHead
from .clip import parse_clip
from .ops import energy


def fit_dice_mask(mean: np.ndarray, weight: np.ndarray, p: float) -> np.ndarray:
    """M = 1[V > perc(V, p)] with V = mean[None, :] * W (one global threshold over all C*D entries)."""
    contribution = mean[None, :] * weight
    return contribution > np.percentile(contribution, p)


class DICEHead(DetectorHead):
    """score = E((W * M) min(h, c) + b); without a clip, min(h, c) is h."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, mask: np.ndarray, clip: float | None) -> None:
        super().__init__(weight, bias)
        self.register_buffer("sparse_weight", torch.as_tensor(weight * mask, dtype=torch.float32))
        self.has_clip = clip is not None
        self.register_buffer("clip", torch.tensor(float(clip) if clip is not None else float("inf")))

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.has_clip:
            h = torch.minimum(h, self.clip)
        return energy(torch.nn.functional.linear(h, self.sparse_weight, self.bias))


class DICE(Detector):
    """DICE with sparsity p (share of weights removed; 70 for ImageNet ResNet-50) and optional ReAct clip.

    ``clip``: None (plain DICE), a number, or 'pNN' (percentile NN of all ID activations, e.g. 'p90' = ReAct).
    """
    assumes_nonnegative_features = True

    name = "dice"
    defaults = {"p": 70.0, "clip": None}
    fitted = ("weight_", "bias_", "mean_", "mask_")
    fitted_info = ("clip_",)

    def validate_params(self) -> None:
        super().validate_params()
        parse_clip(self.params["clip"], allow_none=True)

    def _fit(self, batches: Iterable[tuple[np.ndarray, object]]) -> None:
        clip = parse_clip(self.params["clip"], allow_none=True)
        total, count, values = np.zeros(self.weight_.shape[1]), 0, []
        for f, _ in batches:
            total += f.sum(axis=0)
            count += f.shape[0]
            if clip is not None and clip[0] == "percentile":
                values.append(f.astype(np.float32).ravel())
        self.mean_ = total / count
        self.mask_ = fit_dice_mask(self.mean_, self.weight_, self.params["p"])
        if clip is None:
            self.clip_ = None
        elif clip[0] == "absolute":
            self.clip_ = clip[1]
        else:
            self.clip_ = float(np.percentile(np.concatenate(values).astype(np.float64), clip[1]))

    def _build_head(self) -> DetectorHead:
        return DICEHead(self.weight_, self.bias_, np.asarray(self.mask_, dtype=bool), self.clip_)
