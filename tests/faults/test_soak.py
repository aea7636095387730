"""A bounded soak of Session.run with seeded garbage: 300 inputs of random kinds (valid images, NaN/inf sprinkles,
huge values, wrong shapes and dtypes, empty batches). Every call either answers (non-finite inputs rejected and
flagged, finite inputs with finite scores, the same answer twice) or raises one OodgateError line, never anything else."""

from __future__ import annotations

import numpy as np
import pytest

from oodgate.errors import OodgateError

KINDS = ("uint8-image", "unit-float-image", "preprocessed", "nan-sprinkles", "inf-sprinkles", "huge", "wrong-shape",
         "int64", "bool", "complex", "empty", "list-of-mixed")


def _garbage(kind: str, rng: np.random.Generator, clean: np.ndarray):
    n = int(rng.integers(1, 5))
    if kind == "uint8-image":
        return rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)
    if kind == "unit-float-image":
        return rng.random((n, 8, 8)).astype(np.float32)
    if kind == "preprocessed":
        return clean[rng.integers(0, len(clean), n)]
    if kind in ("nan-sprinkles", "inf-sprinkles"):
        x = clean[rng.integers(0, len(clean), n)].copy()
        hits = rng.random(x.shape) < 0.01
        hits[0, 0, 0, 0] = True
        x[hits] = np.nan if kind == "nan-sprinkles" else rng.choice([np.inf, -np.inf])
        return x
    if kind == "huge":
        return (clean[rng.integers(0, len(clean), n)] * 1e30).astype(np.float32)
    if kind == "wrong-shape":
        return rng.random((n, *rng.integers(1, 30, size=int(rng.integers(1, 4))))).astype(np.float32)
    if kind == "int64":
        return rng.integers(-1000, 1000, size=(n, 8, 8))
    if kind == "bool":
        return rng.random((n, 8, 8)) > 0.5
    if kind == "complex":
        return rng.random((n, 8, 8)) + 1j
    if kind == "empty":
        return np.zeros((0, 1, 16, 16), np.float32)
    return [rng.integers(0, 256, size=(8, 8), dtype=np.uint8), "no/such/file.png"]


def test_bounded_soak_of_session_run(energy_graph, test_inputs):
    from oodgate import Session

    rng = np.random.default_rng(13)
    answered = refused = 0
    with Session(energy_graph, "cpu") as sess:
        for _ in range(300):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            batch = _garbage(kind, rng, test_inputs)
            try:
                pred = sess.run(batch)
            except OodgateError as exc:
                assert "\n" not in str(exc), (kind, str(exc))
                refused += 1
                continue
            answered += 1
            bad = pred.nonfinite_input
            assert bad is not None and len(bad) == len(pred)
            assert pred.is_ood[bad].all(), kind
            assert np.isfinite(pred.scores[~bad]).all() or kind == "huge", kind
            assert pred.is_ood[~np.isfinite(pred.scores)].all(), kind
            again = sess.run(batch)
            np.testing.assert_array_equal(again.is_ood, pred.is_ood)
            np.testing.assert_array_equal(again.scores, pred.scores)
    assert answered > 50 and refused > 50, (answered, refused)


@pytest.mark.parametrize("threshold", [None, -1e30, 0.0, 1e30])
def test_soak_decisions_follow_the_threshold(energy_graph, test_inputs, threshold):
    """On 32 real inputs with NaNs sprinkled in: with any finite threshold, NaN-score inputs are rejected and the
    rest decided by score >= tau alone."""
    from oodgate import Session

    x = test_inputs.copy()
    x[::5, 0, 3, 3] = np.nan
    with Session(energy_graph, "cpu") as sess:
        pred = sess.run(x, threshold=threshold)
    tau = np.float32(pred.threshold)
    finite = np.isfinite(pred.scores)
    assert not finite[::5].any() and pred.is_ood[::5].all()
    np.testing.assert_array_equal(pred.is_ood[finite], pred.scores[finite] < tau)
