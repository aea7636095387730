"""Higher score = more in-distribution: large ID activations score above near-zero OOD activations."""

from __future__ import annotations

import numpy as np
import pytest

import oodgate

ENERGY_BASED = ["energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line"]


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(2)
    c, d = 6, 32
    w = rng.standard_normal((c, d)) / np.sqrt(d)
    b = np.zeros(c)
    y = np.arange(300) % c
    h_id = (4.0 * np.maximum(w[y], 0) * np.sqrt(d) + 0.5 * np.abs(rng.standard_normal((300, d)))).astype(np.float32)
    h_ood = (0.01 * np.abs(rng.standard_normal((300, d)))).astype(np.float32)
    return h_id, y, h_ood, w, b


@pytest.mark.parametrize("name", [*ENERGY_BASED, "msp"])
def test_id_scores_higher_than_ood(toy, name):
    h_id, y, h_ood, w, b = toy
    det = oodgate.detector(name).fit(h_id[:200], labels=y[:200], weight=w, bias=b)
    s_id, s_ood = det.score(h_id[200:]), det.score(h_ood)
    assert np.all(np.isfinite(s_id)) and np.all(np.isfinite(s_ood))
    assert np.median(s_id) > np.max(s_ood)
    assert np.mean(s_id[:, None] > s_ood[None, :]) > 0.99  # AUROC with ID positive
