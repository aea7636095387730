"""OOD metrics equal scikit-learn's on the same scores (random and heavily tied), whatever the order of ties."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

from oodgate import metrics
from oodgate.errors import OodgateError


# -- an independent implementation: scikit-learn -------------------------------------------------------------


def _labelled(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y with ID = 1, scores) as scikit-learn takes them."""
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    return y, np.r_[id_scores, ood_scores]


def _sk_fpr_at_tpr(y: np.ndarray, s: np.ndarray, tpr: float) -> float:
    fpr, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    return float(fpr[np.nonzero(tpr_curve >= tpr)[0][0]])


def sklearn_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    y, s = _labelled(id_scores, ood_scores)
    return {
        "auroc": roc_auc_score(y, s),
        "fpr95_id_positive": _sk_fpr_at_tpr(y, s, tpr),
        "fpr95_ood_positive": _sk_fpr_at_tpr(1 - y, -s, tpr),  # OpenOOD: OOD positive, higher = more OOD
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
    }


def ours(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    return {
        "auroc": metrics.auroc(id_scores, ood_scores),
        "fpr95_id_positive": metrics.fpr_at_tpr(id_scores, ood_scores, tpr),
        "fpr95_ood_positive": metrics.fpr_at_tpr_ood_positive(id_scores, ood_scores, tpr),
        "aupr_in": metrics.aupr_in(id_scores, ood_scores),
        "aupr_out": metrics.aupr_out(id_scores, ood_scores),
    }


def _problem(seed: int, n_id: int, n_ood: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ID scores shifted above OOD scores, overlapping; rounded to `decimals` for heavy ties."""
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(1.0, 1.0, n_id)
    ood_scores = rng.normal(0.0, 1.0, n_ood)
    if decimals is not None:
        id_scores, ood_scores = np.round(id_scores, decimals), np.round(ood_scores, decimals)
    return id_scores, ood_scores


CASES = [
    # (seed, n_id, n_ood, decimals)
    (0, 200, 300, None),
    (1, 57, 1000, None),
    (2, 1000, 41, None),
    (3, 20, 20, None),
    (4, 200, 300, 1),  # ~60 distinct values for 500 scores
    (5, 333, 120, 0),  # ~8 distinct values
    (6, 100, 100, 1),
]


@pytest.mark.parametrize(("seed", "n_id", "n_ood", "decimals"), CASES)
@pytest.mark.parametrize("tpr", [0.95, 0.9])
def test_metrics_equal_sklearn(seed, n_id, n_ood, decimals, tpr):
    id_scores, ood_scores = _problem(seed, n_id, n_ood, decimals)
    expected = sklearn_metrics(id_scores, ood_scores, tpr)
    got = ours(id_scores, ood_scores, tpr)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    # the two FPR conventions are different numbers on these overlapping scores (naming them matters)
    if decimals is None and min(n_id, n_ood) >= 50:
        assert got["fpr95_id_positive"] != pytest.approx(got["fpr95_ood_positive"], abs=1e-3)


def test_metrics_by_hand():
    # ID 3, 2, 1 and OOD 2.5, 0: ranks ID > OOD in 4 of 6 pairs -> AUROC 4/6
    id_scores, ood_scores = np.array([3.0, 2.0, 1.0]), np.array([2.5, 0.0])
    assert metrics.auroc(id_scores, ood_scores) == pytest.approx(4 / 6)
    # keeping all 3 ID needs tau = 1 -> accepts OOD 2.5 -> FPR 1/2
    assert metrics.fpr_at_tpr(id_scores, ood_scores, 0.95) == pytest.approx(0.5)
    # OOD positive: flagging s <= 2.5 catches both OOD and also rejects ID 2 and 1 -> 2/3
    assert metrics.fpr_at_tpr_ood_positive(id_scores, ood_scores, 0.95) == pytest.approx(2 / 3)
    # AP with ID positive: precisions at ID hits 1/1, 2/3, 3/4 -> mean
    assert metrics.aupr_in(id_scores, ood_scores) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    # AP with OOD positive (ascending scores): 0 first (1/1), then 1, 2, 2.5 -> 2/4
    assert metrics.aupr_out(id_scores, ood_scores) == pytest.approx((1 + 2 / 4) / 2)


def test_perfect_and_reversed_separation():
    id_scores, ood_scores = np.arange(10.0, 20.0), np.arange(0.0, 10.0)
    m = metrics.ood_metrics(id_scores, ood_scores)
    assert m == {"auroc": 1.0, "fpr95_id_positive": 0.0, "fpr95_ood_positive": 0.0, "aupr_in": 1.0,
                 "aupr_out": 1.0}
    assert metrics.auroc(ood_scores, id_scores) == 0.0
    assert metrics.fpr_at_tpr(ood_scores, id_scores) == 1.0


def test_all_scores_tied_is_chance():
    id_scores, ood_scores = np.full(30, 0.5), np.full(70, 0.5)
    m = metrics.ood_metrics(id_scores, ood_scores)
    assert m["auroc"] == pytest.approx(0.5)
    assert m["fpr95_id_positive"] == 1.0 and m["fpr95_ood_positive"] == 1.0
    assert m["aupr_in"] == pytest.approx(0.3) and m["aupr_out"] == pytest.approx(0.7)
    assert m == pytest.approx(sklearn_metrics(id_scores, ood_scores))


@pytest.mark.parametrize("seed", [4, 5])
def test_order_of_tied_scores_does_not_matter(seed):
    _, n_id, n_ood, decimals = CASES[seed]
    id_scores, ood_scores = _problem(seed, n_id, n_ood, decimals)
    reference = metrics.ood_metrics(id_scores, ood_scores)
    rng = np.random.default_rng(100 + seed)
    for _ in range(5):
        permuted = metrics.ood_metrics(rng.permutation(id_scores), rng.permutation(ood_scores))
        assert permuted == reference  # exactly: ties are counted as one step, not in input order


def test_ood_metrics_keys_name_conventions():
    id_scores, ood_scores = _problem(0, 200, 300)
    m = metrics.ood_metrics(id_scores, ood_scores)
    assert set(m) == {"auroc", "fpr95_id_positive", "fpr95_ood_positive", "aupr_in", "aupr_out"}
    assert m["fpr95_id_positive"] == metrics.fpr_at_tpr(id_scores, ood_scores, 0.95)
    assert m["fpr95_ood_positive"] == metrics.fpr_at_tpr_ood_positive(id_scores, ood_scores, 0.95)
    assert m["aupr_in"] == metrics.aupr_in(id_scores, ood_scores)
    assert m["aupr_out"] == metrics.aupr_out(id_scores, ood_scores)
    # AUROC is symmetric: swapping roles and negating gives the same area
    assert metrics.auroc(-ood_scores, -id_scores) == pytest.approx(m["auroc"], abs=1e-12)
    # ... and the OOD-positive FPR is the classic one computed with roles swapped
    assert m["fpr95_ood_positive"] == metrics.fpr_at_tpr(-ood_scores, -id_scores)


def test_roc_curve_matches_sklearn_points():
    id_scores, ood_scores = _problem(4, 200, 300, 1)
    fpr, tpr = metrics.roc_curve(id_scores, ood_scores)
    sk_fpr, sk_tpr, _ = roc_curve(*_labelled(id_scores, ood_scores), drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)


def test_rejected_share():
    assert metrics.rejected_share([0.0, 1.0, 2.0, 3.0], 2.0) == 0.5  # score < tau is OOD; tau itself is kept
    assert metrics.rejected_share([5.0], 2.0) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 397)
    predicted = np.where(rng.random(397) < 0.8, labels, rng.integers(0, 10, 397))
    assert metrics.accuracy(predicted, labels) == pytest.approx(accuracy_score(labels, predicted), abs=1e-15)


# -- bad input -------------------------------------------------------------------------------------------


METRIC_FUNCTIONS = [metrics.auroc, metrics.fpr_at_tpr, metrics.fpr_at_tpr_ood_positive, metrics.aupr_in,
                    metrics.aupr_out, metrics.ood_metrics]


@pytest.mark.parametrize("fn", METRIC_FUNCTIONS, ids=lambda f: f.__name__)
def test_empty_scores_are_a_clear_error(fn):
    with pytest.raises(OodgateError, match=r"^ID scores are empty"):
        fn([], [0.1, 0.2])
    with pytest.raises(OodgateError, match=r"^OOD scores are empty"):
        fn([0.1, 0.2], np.zeros(0))


@pytest.mark.parametrize("fn", METRIC_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_a_clear_error(fn, bad):
    with pytest.raises(OodgateError, match=r"^ID scores contain NaN/inf"):
        fn([0.1, bad, 0.3], [0.1, 0.2])
    with pytest.raises(OodgateError, match=r"^OOD scores contain NaN/inf"):
        fn([0.1, 0.2], [bad])


def test_accuracy_bad_input():
    with pytest.raises(OodgateError, match=r"3 and 2"):
        metrics.accuracy([1, 2, 3], [1, 2])
    with pytest.raises(OodgateError, match=r"0 and 0"):
        metrics.accuracy([], [])
