"""Every detector's score equals the independent NumPy reference (METHODS.md) on random and real (digits) features."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import oodgate
from oodgate.detectors import keep_count

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import numpy_reference as ref  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5


def _problem(kind: str):
    """(h_fit, y_fit, h_test, W, b) for a named problem."""
    if kind == "digits":
        h_fit, y_fit, h_test, _, w, b = ref.digits_problem()
        return h_fit, y_fit, h_test, w, b
    if kind == "abs_C10_D64":
        h, w, b, y = ref.random_problem(10, 64, 600, seed=0, kind="abs")
    elif kind == "relu_C7_D50":
        h, w, b, y = ref.random_problem(7, 50, 600, seed=1, kind="relu")
    else:  # pragma: no cover
        raise ValueError(kind)
    return h[:400], y[:400], h[400:], w, b


def _reference(name: str, params: dict, h_fit, y_fit, h, w, b) -> np.ndarray:
    """The reference score of a detector from METHODS.md."""
    if name == "msp":
        return ref.msp(h, w, b)
    if name == "energy":
        return ref.energy(h, w, b)
    if name == "react":
        return ref.react(h, w, b, ref.react_fit(h_fit, params.get("p", 90.0)))
    if name == "ash_p":
        return ref.ash_p(h, w, b, params.get("p", 90.0))
    if name == "ash_s":
        return ref.ash_s(h, w, b, params.get("p", 90.0))
    if name == "ash_b":
        return ref.ash_b(h, w, b, params.get("p", 90.0))
    if name == "scale":
        return ref.scale(h, w, b, params.get("p", 85.0))
    if name == "dice":
        _, _, _, mask = ref.dice_fit(h_fit, w, params.get("p", 70.0))
        clip = params.get("clip")
        if isinstance(clip, str):
            clip = ref.perc(h_fit, float(clip[1:]))
        return ref.dice(h, w, b, mask, clip)
    if name == "line":
        state = ref.line_fit_naive(h_fit, y_fit, w, params.get("p_w", 10.0), params.get("p_a", 10.0))
        clip = params.get("clip", "p90")
        if isinstance(clip, str):
            clip = ref.perc(h_fit, float(clip[1:]))
        return ref.line_naive(h, w, b, state, clip)
    raise ValueError(name)  # pragma: no cover


CASES = [
    ("msp", {}),
    ("energy", {}),
    ("react", {}),
    ("react", {"p": 95}),
    ("ash_p", {}),
    ("ash_p", {"p": 65}),
    ("ash_s", {}),
    ("ash_s", {"p": 70}),
    ("ash_b", {}),
    ("ash_b", {"p": 80}),
    ("scale", {}),
    ("scale", {"p": 60}),
    ("dice", {}),
    ("dice", {"p": 90}),
    ("dice", {"clip": "p90"}),
    ("dice", {"clip": 1.2}),
    ("line", {}),
    ("line", {"p_w": 90, "p_a": 90, "clip": 1.0}),
    ("line", {"p_w": 50, "p_a": 30, "clip": "p80"}),
]
PROBLEMS = ["abs_C10_D64", "relu_C7_D50", "digits"]


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_score_matches_numpy_reference(name, params, problem):
    h_fit, y_fit, h, w, b = _problem(problem)
    det = oodgate.detector(name, **params)
    assert det.fit(h_fit, labels=y_fit, weight=w, bias=b) is det
    got = det.score(h)
    assert got.shape == (h.shape[0],)
    want = _reference(name, params, h_fit, y_fit, h, w, b)
    rows = np.ones(h.shape[0], bool)
    if name.startswith("ash"):
        # a tie at the k-th largest entry makes the top-k set (and ASH-B) ambiguous: compare the other rows only
        rows = ~ref.topk_ambiguous(h, ref.keep(h.shape[1], params.get("p", 90.0)))
        assert rows.mean() > 0.95
    np.testing.assert_allclose(got[rows], want[rows], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("name", ["msp", "energy", "react", "ash_p", "scale", "dice", "line"])
def test_predict_is_argmax_of_plain_logits(name, problem):
    h_fit, y_fit, h, w, b = _problem(problem)
    det = oodgate.detector(name).fit(h_fit, labels=y_fit, weight=w, bias=b)
    z = ref.logits(h, w, b)
    top2 = np.sort(z, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # skip numerical near-ties of the two best logits
    np.testing.assert_array_equal(det.predict(h)[clear], np.argmax(z, axis=1)[clear])


@pytest.mark.parametrize("problem", PROBLEMS)
def test_react_clip_is_percentile_of_all_id_activations(problem):
    h_fit, y_fit, _, w, b = _problem(problem)
    for p in (80.0, 90.0, 99.0):
        det = oodgate.detector("react", p=p).fit(h_fit, weight=w, bias=b)
        assert det.fit_info()["clip"] == pytest.approx(np.percentile(h_fit.astype(np.float64).ravel(), p), rel=1e-12)


def test_half_to_even_keep_is_used_by_ash_and_scale():
    # D=50, p=85: D*p/100 = 42.5 rounds to 42 (half to even), so 8 entries are kept, not 7
    assert keep_count(50, 85) == ref.keep(50, 85) == 8
    h_fit, y_fit, h, w, b = _problem("relu_C7_D50")
    for name in ("ash_p", "ash_s", "ash_b", "scale"):
        got = oodgate.detector(name, p=85).fit(h_fit, weight=w, bias=b).score(h)
        want = _reference(name, {"p": 85}, h_fit, y_fit, h, w, b)
        rows = ~ref.topk_ambiguous(h, 8)
        np.testing.assert_allclose(got[rows], want[rows], rtol=RTOL, atol=ATOL)
        # keeping 7 instead would be detectably different
        h7 = ref.scale(h, w, b, p=86) if name == "scale" else getattr(ref, name)(h, w, b, p=86)
        assert ref.keep(50, 86) == 7
        assert not np.allclose(got[rows], h7[rows], rtol=RTOL, atol=ATOL)
