"""DICE: one global percentile over all C*D contributions, (100 - p)% of the weights kept, optional ReAct clip."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import oodgate

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import numpy_reference as ref  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def problem():
    # C*D = 1000: (100 - p)% of it is an integer for every integer p
    return ref.random_problem(10, 100, 500, seed=3, kind="abs")


@pytest.mark.parametrize("p", [10, 30, 50, 70, 75, 90, 99])
def test_dice_keeps_exactly_100_minus_p_percent(problem, p):
    h, w, b, _ = problem
    det = oodgate.detector("dice", p=p).fit(h, weight=w, bias=b)
    mask = det.fitted_state()["mask"].astype(bool)
    assert mask.shape == w.shape
    assert int(mask.sum()) == (100 - p) * w.size // 100


@pytest.mark.parametrize("p", [10, 50, 70, 90])
def test_dice_mask_is_the_global_percentile_mask(problem, p):
    h, w, b, _ = problem
    det = oodgate.detector("dice", p=p).fit(h, weight=w, bias=b)
    state = det.fitted_state()
    mu, v, tau, mask = ref.dice_fit(h, w, p)
    np.testing.assert_allclose(state["mean"], mu, rtol=1e-12)
    np.testing.assert_array_equal(state["mask"].astype(bool), mask)
    # the threshold is global: rows keep different numbers of entries (a per-row threshold would keep equal counts)
    assert len(set(mask.sum(axis=1).tolist())) > 1
    # only the weights are sparsified; the bias is unchanged
    np.testing.assert_array_equal(state["bias"], b)


def test_dice_mask_on_digits():
    h_fit, _, h_test, _, w, b = ref.digits_problem()
    det = oodgate.detector("dice", p=70).fit(h_fit, weight=w, bias=b)
    _, _, _, mask = ref.dice_fit(h_fit, w, 70)
    np.testing.assert_array_equal(det.fitted_state()["mask"].astype(bool), mask)
    np.testing.assert_allclose(det.score(h_test), ref.dice(h_test, w, b, mask), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("clip", ["p90", "p75", 0.5, 2])
def test_dice_with_clip_matches_reference(problem, clip):
    h, w, b, _ = problem
    h_fit, h_test = h[:300], h[300:]
    det = oodgate.detector("dice", p=70, clip=clip).fit(h_fit, weight=w, bias=b)
    c = ref.perc(h_fit, float(clip[1:])) if isinstance(clip, str) else float(clip)
    assert det.fit_info()["clip"] == pytest.approx(c, rel=1e-12)
    _, _, _, mask = ref.dice_fit(h_fit, w, 70)
    want = ref.dice(h_test, w, b, mask, clip=c)
    np.testing.assert_allclose(det.score(h_test), want, rtol=RTOL, atol=ATOL)
    # and the clip matters
    assert not np.allclose(want, ref.dice(h_test, w, b, mask), rtol=RTOL, atol=ATOL)


def test_dice_without_clip_does_not_clip(problem):
    h, w, b, _ = problem
    det = oodgate.detector("dice", p=70).fit(h, weight=w, bias=b)
    assert det.fit_info()["clip"] is None
    big = 100.0 * h[:20]
    _, _, _, mask = ref.dice_fit(h, w, 70)
    np.testing.assert_allclose(det.score(big), ref.dice(big, w, b, mask), rtol=RTOL, atol=ATOL)


def test_dice_mean_ignores_labels(problem):
    h, w, b, y = problem
    a = oodgate.detector("dice").fit(h, labels=y, weight=w, bias=b).fitted_state()
    c = oodgate.detector("dice").fit(h, weight=w, bias=b).fitted_state()
    np.testing.assert_array_equal(a["mean"], c["mean"])
    np.testing.assert_array_equal(a["mask"], c["mask"])


@pytest.mark.parametrize("p", [0, 30, 70])
def test_dice_mask_is_strict_when_the_threshold_is_an_entry(p):
    # C*D = 201: p*(201 - 1)/100 is an integer, so perc(V, p) equals an entry of V, which a strict mask drops
    h, w, b, _ = ref.random_problem(3, 67, 200, seed=4, kind="abs")
    det = oodgate.detector("dice", p=p).fit(h, weight=w, bias=b)
    _, v, tau, mask = ref.dice_fit(h, w, p)
    assert np.any(v == tau)
    np.testing.assert_array_equal(det.fitted_state()["mask"].astype(bool), mask)
    assert int(mask.sum()) == 201 - 1 - 2 * p
