"""Bad input gives a one-line OodgateError / NotFittedError that names the problem."""

from __future__ import annotations

import numpy as np
import pytest

import oodgate
from oodgate import NotFittedError, OodgateError

ALL = ["msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line"]
C, D = 4, 16


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(5)
    h = np.abs(rng.standard_normal((50, D))).astype(np.float32)
    w = rng.standard_normal((C, D))
    b = rng.standard_normal(C)
    y = np.arange(50) % C
    return h, w, b, y


def _raises(exc_type, pattern, fn, *args, **kwargs):
    with pytest.raises(exc_type, match=pattern) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert len(message) < 300, message
    return message


@pytest.mark.parametrize("name", ALL)
def test_wrong_feature_width(problem, name):
    h, w, b, y = problem
    det = oodgate.detector(name)
    _raises(OodgateError, rf"width {D}\b.*width {D + 3}\b", det.fit, np.hstack([h, h[:, :3]]), weight=w, bias=b)
    det.fit(h, labels=y if name == "line" else None, weight=w, bias=b)
    _raises(OodgateError, rf"width {D}\b.*width {D - 1}\b", det.score, h[:, :-1])


@pytest.mark.parametrize("name", ALL)
def test_nan_features(problem, name):
    h, w, b, _ = problem
    bad = h.copy()
    bad[3, 2] = np.nan
    _raises(OodgateError, "NaN", oodgate.detector(name).fit, bad, weight=w, bias=b)
    det = oodgate.detector(name).fit(h, weight=w, bias=b)
    _raises(OodgateError, "NaN", det.score, bad)
    inf = h.copy()
    inf[0, 0] = np.inf
    _raises(OodgateError, "inf", det.score, inf)


@pytest.mark.parametrize("name", ALL)
def test_unfitted_detector(problem, name):
    h, *_ = problem
    det = oodgate.detector(name)
    msg = _raises(NotFittedError, "not fitted", det.score, h)
    assert "fit" in msg and name in msg
    _raises(NotFittedError, "not fitted", det.predict, h)
    _raises(NotFittedError, "not fitted", det.head)
    _raises(NotFittedError, "not fitted", det.fitted_state)


@pytest.mark.parametrize("name", ALL)
def test_one_dimensional_features_suggest_a_batch_axis(problem, name):
    h, w, b, _ = problem
    det = oodgate.detector(name).fit(h, weight=w, bias=b)
    msg = _raises(OodgateError, "batch axis", det.score, h[0])
    assert f"({D},)" in msg


@pytest.mark.parametrize("labels", [[C], [-1], [C + 5]])
def test_labels_out_of_range(problem, labels):
    h, w, b, y = problem
    bad = y.copy()
    bad[7] = labels[0]
    msg = _raises(OodgateError, rf"label {labels[0]} is out of range", oodgate.detector("line").fit,
                  h, labels=bad, weight=w, bias=b)
    assert str(C) in msg


def test_labels_wrong_count(problem):
    h, w, b, y = problem
    _raises(OodgateError, "labels", oodgate.detector("line").fit, h, labels=y[:-1], weight=w, bias=b)


def test_unknown_method_name():
    msg = _raises(OodgateError, "unknown detector 'dicee'", oodgate.detector, "dicee")
    assert "dice" in msg.split("available")[1]


@pytest.mark.parametrize(("name", "param"), [("dice", "q"), ("react", "clip"), ("msp", "p"), ("line", "p")])
def test_unknown_parameter_name(name, param):
    msg = _raises(OodgateError, rf"unknown parameter.*{param}", oodgate.detector, name, **{param: 1})
    assert name in msg


@pytest.mark.parametrize(("name", "key", "value"), [
    ("react", "p", 100), ("react", "p", -1), ("ash_p", "p", 150), ("scale", "p", float("nan")),
    ("dice", "p", 101), ("line", "p_w", 100), ("line", "p_a", -5),
])
def test_percentile_out_of_range(name, key, value):
    msg = _raises(OodgateError, rf"{key}=.*percentile", oodgate.detector, name, **{key: value})
    assert "[0, 100)" in msg


@pytest.mark.parametrize(("name", "clip"), [("dice", "p150"), ("line", "pxx"), ("dice", -1.0), ("line", "abc")])
def test_bad_clip(name, clip):
    _raises(OodgateError, "clip", oodgate.detector, name, clip=clip)


def test_line_needs_a_clip():
    _raises(OodgateError, "clip", oodgate.detector, "line", clip=None)


def test_empty_fit_set(problem):
    _, w, b, _ = problem
    _raises(OodgateError, "no ID features", oodgate.detector("dice").fit, np.zeros((0, D)), weight=w, bias=b)
