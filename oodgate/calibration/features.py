"""Streaming feature extraction: images -> backbone -> pooled features, batch by batch, with a progress bar."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch

from ..data.preprocess import Preprocess
from ..data.sets import ImageSet
from ..models.split import SplitModel
from ..progress import progress_bar, show_progress


#: feature batches by (model weights, images, preprocessing, batch size), inside ``feature_cache()`` only
_CACHE: ContextVar[dict | None] = ContextVar("oodgate_feature_cache", default=None)


@contextmanager
def feature_cache() -> Iterator[None]:
    """Within this block, the features of the same weights on the same images are computed once (e.g. when
    several single-pass detectors are calibrated on one model and one data set); outside it, nothing is kept."""
    token = _CACHE.set({}) if _CACHE.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _CACHE.reset(token)


def _weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256(type(model.backbone if isinstance(model, SplitModel) else model).__name__.encode())
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def iter_features(model: SplitModel, images: ImageSet, preprocess: Preprocess, *, batch_size: int = 128,
                  progress: bool | None = None, desc: str = "features",
                  ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield (features float32 (B, D), labels or None) for each batch of ``images``."""
    model.eval()
    cache = _CACHE.get()
    key = None if cache is None else (_weights_digest(model), images.fingerprint(), repr(preprocess), batch_size)
    if key is not None and key in cache:
        for h, labels in cache[key]:  # copies: a caller may change its batch in place
            yield h.copy(), labels
        return
    done = []
    with progress_bar(len(images), desc, progress) as bar:
        for x, labels in images.batches(preprocess, batch_size):
            h = model.features(torch.from_numpy(x))
            bar.update(len(x))
            done.append((h.numpy().astype(np.float32, copy=False), labels))
            yield done[-1]
    if key is not None:
        cache[key] = done


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
