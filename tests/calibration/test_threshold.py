"""fit_threshold: tau = the score that keeps the target share of held-out ID scores (within one sample)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oodgate.detectors.threshold import fit_threshold
from oodgate.errors import OodgateError


@pytest.mark.parametrize("n", [1, 7, 20, 80, 99, 100, 101, 397, 1000])
@pytest.mark.parametrize("tpr", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
def test_threshold_accepts_target_share(n, tpr):
    scores = np.random.default_rng(n).normal(size=n)
    tau = fit_threshold(scores, tpr)
    accepted = int(np.sum(scores >= tau))
    assert abs(accepted - tpr * n) <= 1, (accepted, tpr * n)
    assert accepted >= math.floor(tpr * n)  # never keeps fewer ID than asked, bar rounding down
    assert accepted == math.ceil(round(tpr * n, 9))  # distinct scores: exactly ceil(tpr * n), as documented
    assert tau in scores  # an order statistic, not an interpolation
    # rejected ID are exactly those scoring below tau (is_ood = score < tau)
    assert np.sum(scores < tau) == n - accepted


def test_threshold_by_hand():
    scores = np.arange(1.0, 21.0)  # 1..20
    assert fit_threshold(scores, 0.95) == 2.0  # rejects 1, keeps 19 of 20
    assert fit_threshold(scores, 0.9) == 3.0  # rejects 1, 2
    assert fit_threshold(scores, 1.0) == 1.0  # keeps all
    assert fit_threshold(scores[::-1], 0.95) == 2.0  # order of the input does not matter


def test_ties_at_tau_are_all_accepted():
    scores = np.r_[np.zeros(10), np.ones(90)]
    # the 95th-percentile score is tied with 9 others: all are kept, never fewer ID than asked
    assert fit_threshold(scores, 0.95) == 0.0
    assert fit_threshold(scores, 0.9) == 1.0  # exactly the 90 ones
    scores = np.r_[np.zeros(3), np.full(10, 0.5), np.ones(87)]
    tau = fit_threshold(scores, 0.95)
    assert tau == 0.5 and np.sum(scores >= tau) == 97


@pytest.mark.parametrize(
    ("scores", "tpr", "pattern"),
    [
        ([], 0.95, "no held-out ID scores"),
        ([0.1, np.nan], 0.95, "NaN/inf"),
        ([0.1, np.inf], 0.95, "NaN/inf"),
        ([0.1, 0.2], 0.0, r"target TPR must be in \(0, 1\], got 0.0"),
        ([0.1, 0.2], 1.5, r"got 1.5"),
        ([0.1, 0.2], 95, r"got 95"),
        ([0.1, 0.2], "0.95", r"got '0.95'"),
    ],
)
def test_threshold_bad_input(scores, tpr, pattern):
    with pytest.raises(OodgateError, match=pattern):
        fit_threshold(scores, tpr)
