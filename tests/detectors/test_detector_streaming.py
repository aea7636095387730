"""Fitting from a generator of batches gives the state of fitting from the full array; DICE's mean streams."""

from __future__ import annotations

import pathlib
import sys
import tracemalloc

import numpy as np
import pytest

import oodgate

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import numpy_reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    return ref.random_problem(6, 40, 1000, seed=11, kind="relu")


def _batches(h, y=None, sizes=(1, 7, 100, 256)):
    """Uneven batches covering h: yields features, or (features, labels) when y is given."""
    start, i = 0, 0
    while start < len(h):
        stop = start + sizes[i % len(sizes)]
        yield h[start:stop] if y is None else (h[start:stop], y[start:stop])
        start, i = stop, i + 1


def _assert_same_state(a, b):
    sa, sb = a.fitted_state(), b.fitted_state()
    assert sa.keys() == sb.keys()
    for key in sa:
        if sa[key].dtype == bool or np.issubdtype(sa[key].dtype, np.integer):
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
        else:
            np.testing.assert_allclose(sa[key], sb[key], rtol=1e-12, atol=1e-14, err_msg=key)
    ia, ib = a.fit_info(), b.fit_info()
    assert ia.keys() == ib.keys()
    for key in ia:
        if isinstance(ia[key], float):
            assert ia[key] == pytest.approx(ib[key], rel=1e-12), key
        else:
            assert ia[key] == ib[key], key


@pytest.mark.parametrize(("name", "params"), [
    ("react", {}), ("dice", {}), ("dice", {"clip": "p90"}), ("dice", {"p": 90, "clip": 1.0}),
    ("line", {}), ("line", {"clip": 0.8, "p_w": 50}),
    ("msp", {}), ("energy", {}), ("ash_b", {}), ("scale", {}),
])
def test_generator_fit_equals_array_fit(problem, name, params):
    h, w, b, y = problem
    labels = y if name == "line" else None
    full = oodgate.detector(name, **params).fit(h, labels=labels, weight=w, bias=b)
    streamed = oodgate.detector(name, **params).fit(_batches(h, labels), weight=w, bias=b)
    _assert_same_state(full, streamed)
    np.testing.assert_allclose(streamed.score(h[:100]), full.score(h[:100]), rtol=1e-6)


def test_line_generator_without_labels_uses_predictions(problem):
    h, w, b, _ = problem
    full = oodgate.detector("line").fit(h, weight=w, bias=b)
    streamed = oodgate.detector("line").fit(_batches(h), weight=w, bias=b)
    assert streamed.fit_info()["label_source"] == "predictions"
    _assert_same_state(full, streamed)


def test_small_batch_size_equals_one_batch(problem):
    h, w, b, y = problem
    for name in ("dice", "line", "react"):
        labels = y if name == "line" else None
        one = oodgate.detector(name).fit(h, labels=labels, weight=w, bias=b)
        many = oodgate.detector(name).fit(h, labels=labels, weight=w, bias=b, batch_size=33)
        _assert_same_state(one, many)


def test_dice_mean_is_streamed_not_held():
    """Fitting DICE on 100 batches (160 MB in float64 all together) peaks at a few batches' worth of memory."""
    rng = np.random.default_rng(0)
    c, d, n_batch, rows = 10, 400, 100, 500
    w = rng.standard_normal((c, d)) / np.sqrt(d)
    total = np.zeros(d)

    def batches():
        for i in range(n_batch):
            x = np.abs(np.random.default_rng(i).standard_normal((rows, d))).astype(np.float32)
            total[:] += x.sum(axis=0, dtype=np.float64)
            yield x

    batch_bytes = rows * d * 8
    tracemalloc.start()
    try:
        det = oodgate.detector("dice", p=70).fit(batches(), weight=w)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * batch_bytes, f"peak {peak / 1e6:.1f} MB for {n_batch} batches of {batch_bytes / 1e6:.1f} MB"
    np.testing.assert_allclose(det.fitted_state()["mean"], total / (n_batch * rows), rtol=1e-10)
