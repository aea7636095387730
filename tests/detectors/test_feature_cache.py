"""feature_cache(): one backbone pass shared by several single-pass calibrations, with identical results."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from oodgate.detectors.base import feature_cache, iter_model_features
from oodgate.models.split import split_classifier


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _batches(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((5, 1, 8, 8)).astype(np.float32), None) for _ in range(3)]


def test_cache_computes_each_batch_once_and_returns_equal_copies():
    torch.manual_seed(0)
    split = split_classifier(Counting())
    batches = _batches()
    plain = [h for h, _ in iter_model_features(split, batches)]
    calls = split.backbone.calls
    with feature_cache():
        first = [h for h, _ in iter_model_features(split, batches)]
        first[0][:] = -1.0  # a caller changing its batch must not change the cache
        second = [h for h, _ in iter_model_features(split, batches)]
    assert split.backbone.calls - calls == 3  # once per batch, not twice
    for a, b in zip(plain, second):
        np.testing.assert_array_equal(a, b)
    after = [h for h, _ in iter_model_features(split, batches)]  # outside the block nothing is kept
    assert split.backbone.calls - calls == 6
    np.testing.assert_array_equal(after[1], plain[1])


def test_other_weights_or_inputs_miss_the_cache():
    torch.manual_seed(0)
    split = split_classifier(Counting())
    with feature_cache():
        a = [h for h, _ in iter_model_features(split, _batches(0))]
        b = [h for h, _ in iter_model_features(split, _batches(1))]
        with torch.no_grad():
            split.backbone.conv.weight.mul_(2.0)
        c = [h for h, _ in iter_model_features(split, _batches(0))]
    assert split.backbone.calls == 9
    assert not np.allclose(a[0], b[0]) and not np.allclose(a[0], c[0])


def test_calibrations_inside_the_cache_equal_those_outside():
    from oodgate.calibration.calibrate import calibrate
    from oodgate.data.sets import digits

    fit, held = digits("train"), digits("calib")
    plain = [calibrate("digits-cnn", fit, method=m, holdout=held, progress=False) for m in ("energy", "line")]
    with feature_cache():
        cached = [calibrate("digits-cnn", fit, method=m, holdout=held, progress=False) for m in ("energy", "line")]
    for p, c in zip(plain, cached):
        assert p.threshold == c.threshold
        np.testing.assert_array_equal(p.holdout_scores, c.holdout_scores)
        for key in p.state:
            np.testing.assert_array_equal(np.asarray(p.state[key]), np.asarray(c.state[key]))
