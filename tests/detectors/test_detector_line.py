"""LINe: the O(C*D) on-the-fly masks equal the official C x C x D construction; class means follow the labels."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import oodgate

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import numpy_reference as ref  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5
C, D = 5, 12


@pytest.fixture(scope="module")
def small():
    """C=5, D=12: class-structured non-negative features so that every class is predicted and labelled."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((C, D))
    b = 0.1 * rng.standard_normal(C)
    y = np.repeat(np.arange(C), 40)
    h = (2.0 * np.maximum(w[y], 0) + np.abs(rng.standard_normal((len(y), D)))).astype(np.float32)
    perm = rng.permutation(len(y))
    h, y = h[perm], y[perm]
    h_test = (np.abs(rng.standard_normal((150, D))) * rng.uniform(0.2, 3.0, (150, 1))).astype(np.float32)
    return h, y, h_test, w, b


def _on_the_fly_weight_masks(state: dict, w: np.ndarray) -> np.ndarray:
    """M(l) for every l rebuilt from the stored contribution (C x D) and thresholds (C) only: (C, C, D)."""
    s_abs = np.abs(state["contribution"])
    return np.stack([(s_abs[l][None, :] * w) > state["thresholds"][l] for l in range(w.shape[0])])


@pytest.mark.parametrize(("p_w", "p_a"), [(10, 10), (90, 90), (50, 25), (0, 0)])
@pytest.mark.parametrize("clip", ["p90", 0.8, 1.5])
def test_line_matches_naive_official_layout(small, p_w, p_a, clip):
    h, y, h_test, w, b = small
    det = oodgate.detector("line", p_w=p_w, p_a=p_a, clip=clip).fit(h, labels=y, weight=w, bias=b)
    state = det.fitted_state()
    naive = ref.line_fit_naive(h, y, w, p_w, p_a)

    np.testing.assert_allclose(state["contribution"], naive["S"], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(state["neuron_mask"].astype(bool), naive["neuron_mask"])
    np.testing.assert_allclose(state["thresholds"], naive["thresholds"], rtol=1e-12, atol=1e-15)
    fly = _on_the_fly_weight_masks(state, w)
    assert fly.shape == (C, C, D)
    np.testing.assert_array_equal(fly, naive["weight_mask"])
    # per class, the neuron mask keeps D - 1 - floor(p_a (D - 1) / 100) entries (distinct S_c values)
    kept = D - 1 - np.floor(p_a * (D - 1) / 100)
    np.testing.assert_array_equal(naive["neuron_mask"].sum(axis=1), kept)

    c = ref.perc(h, float(clip[1:])) if isinstance(clip, str) else float(clip)
    assert det.fit_info()["clip"] == pytest.approx(c, rel=1e-12)
    want = ref.line_naive(h_test, w, b, naive, c)
    np.testing.assert_allclose(det.score(h_test), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("p_w", "p_a"), [(10, 10), (90, 90), (50, 25), (0, 0)])
def test_line_head_buffers_build_the_same_masks(small, p_w, p_a):
    """The float32 buffers of the exported module (W, one row of cuts per class) give exactly the masks of the float64
    naive construction: W32 > cut_l  <=>  M(l) and m_l."""
    h, y, _, w, b = small
    det = oodgate.detector("line", p_w=p_w, p_a=p_a).fit(h, labels=y, weight=w, bias=b)
    naive = ref.line_fit_naive(h, y, w, p_w, p_a)
    bufs = det.head().state_dict()
    assert set(bufs) == {"weight", "bias", "weight_cuts", "clip"}
    w32, cuts = bufs["weight"].numpy(), bufs["weight_cuts"].numpy()
    fly = np.stack([w32 > cuts[l][None, :] for l in range(C)])
    want = naive["weight_mask"] & naive["neuron_mask"][:, None, :]
    np.testing.assert_array_equal(fly, want)


@pytest.mark.parametrize(("c", "d", "seed"), [(40, 96, 1), (200, 64, 2)])
def test_line_cuts_match_the_product_masks_on_larger_heads(c, d, seed):
    """Many classes per column (binary search + exact fix-up on the product): same masks as the naive product."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, d)) / np.sqrt(d)
    y = np.arange(4 * c) % c
    h = np.abs(rng.standard_normal((4 * c, d)) + 2.0 * np.maximum(w[y], 0) * np.sqrt(d)).astype(np.float32)
    det = oodgate.detector("line").fit(h, labels=y, weight=w, bias=np.zeros(c))
    naive = ref.line_fit_naive(h, y, w, 10, 10)
    bufs = det.head().state_dict()
    w32, cuts = bufs["weight"].numpy(), bufs["weight_cuts"].numpy()
    for lab in range(c):
        np.testing.assert_array_equal(w32 > cuts[lab][None, :], naive["weight_mask"][lab] & naive["neuron_mask"][lab])


def test_line_class_means_use_the_labels(small):
    h, y, h_test, w, b = small
    det = oodgate.detector("line").fit(h, labels=y, weight=w, bias=b)
    means = np.stack([h[y == c].astype(np.float64).mean(axis=0) for c in range(C)])
    np.testing.assert_allclose(det.fitted_state()["class_means"], means, rtol=1e-12)
    assert det.fit_info()["label_source"] == "labels"
    # other labels give other means and other scores
    y_other = (y + 1) % C
    other = oodgate.detector("line").fit(h, labels=y_other, weight=w, bias=b)
    assert not np.allclose(other.fitted_state()["class_means"], means)
    assert not np.allclose(other.score(h_test), det.score(h_test), rtol=RTOL, atol=ATOL)


def test_line_without_labels_uses_predictions():
    # fit on the MLP's held-out part: on its training part the predictions equal the labels
    h_test, _, h_fit, y_fit, w, b = ref.digits_problem()
    pred = np.argmax(ref.logits(h_fit, w, b), axis=1)
    assert set(pred.tolist()) == set(range(10)) and np.any(pred != y_fit)
    unlabelled = oodgate.detector("line").fit(h_fit, weight=w, bias=b)
    assert unlabelled.fit_info()["label_source"] == "predictions"
    means = np.stack([h_fit[pred == c].astype(np.float64).mean(axis=0) for c in range(10)])
    np.testing.assert_allclose(unlabelled.fitted_state()["class_means"], means, rtol=1e-12)
    want = ref.line_naive(h_test, w, b, ref.line_fit_naive(h_fit, pred, w), ref.perc(h_fit, 90))
    np.testing.assert_allclose(unlabelled.score(h_test), want, rtol=RTOL, atol=ATOL)
    labelled = oodgate.detector("line").fit(h_fit, labels=y_fit, weight=w, bias=b)
    assert not np.allclose(labelled.fitted_state()["class_means"], means)


def test_line_on_digits_with_labels():
    h_fit, y_fit, h_test, _, w, b = ref.digits_problem()
    det = oodgate.detector("line").fit(h_fit, labels=y_fit, weight=w, bias=b)
    naive = ref.line_fit_naive(h_fit, y_fit, w)
    np.testing.assert_array_equal(_on_the_fly_weight_masks(det.fitted_state(), w), naive["weight_mask"])
    np.testing.assert_array_equal(det.fitted_state()["neuron_mask"].astype(bool), naive["neuron_mask"])
    want = ref.line_naive(h_test, w, b, naive, ref.perc(h_fit, 90))
    np.testing.assert_allclose(det.score(h_test), want, rtol=RTOL, atol=ATOL)
