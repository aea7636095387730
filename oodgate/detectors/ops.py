"""Tensor building blocks shared by the detector heads (all ONNX/TensorRT friendly)."""

from __future__ import annotations

import torch


def energy(z: torch.Tensor) -> torch.Tensor:
    """E(z) = logsumexp(z) over classes (temperature 1); higher = more ID."""
    return torch.logsumexp(z, dim=1)


def top_k(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest k entries of each row (values, indices)."""
    return torch.topk(h, k, dim=1, largest=True, sorted=False)


def keep_top_k(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(h with all but its top-k entries zeroed, 0/1 mask of the kept entries)."""
    values, index = top_k(h, k)
    mask = torch.zeros_like(h).scatter(1, index, torch.ones_like(values))
    return h * mask, mask


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with den kept away from 0 (an all-zero feature row would give NaN otherwise)."""
    return num / torch.clamp(den, min=1e-12)
