"""Streaming feature extraction: images -> backbone -> pooled features, batch by batch, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..data.preprocess import Preprocess
from ..data.sets import ImageSet
from ..models.split import SplitModel
from ..progress import progress_bar


@torch.no_grad()
def iter_features(model: SplitModel, images: ImageSet, preprocess: Preprocess, *, batch_size: int = 128,
                  progress: bool | None = None, desc: str = "features",
                  ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield (features float32 (B, D), labels or None) for each batch of ``images``."""
    model.eval()
    with progress_bar(len(images), desc, progress) as bar:
        for x, labels in images.batches(preprocess, batch_size):
            h = model.features(torch.from_numpy(x))
            bar.update(len(x))
            yield h.numpy().astype(np.float32, copy=False), labels


def collect_features(model: SplitModel, images: ImageSet, preprocess: Preprocess, *, batch_size: int = 128,
                     progress: bool | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """All features (N, D) and labels of ``images`` in memory (for sets that fit; fitting streams instead)."""
    feats, labels = [], []
    for f, y in iter_features(model, images, preprocess, batch_size=batch_size, progress=progress):
        feats.append(f)
        labels.append(y)
    d = model.num_features
    out = np.concatenate(feats) if feats else np.zeros((0, d), np.float32)
    return out, (None if not labels or labels[0] is None else np.concatenate(labels))
