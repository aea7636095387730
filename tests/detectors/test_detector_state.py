"""from_state(params, fitted_state(), fit_info()) rebuilds a detector that scores identically."""

from __future__ import annotations

import io
import json
import pathlib
import sys

import numpy as np
import pytest

import oodgate
from oodgate.detectors import detector_class

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import numpy_reference as ref  # noqa: E402

CASES = [
    ("msp", {}), ("energy", {}), ("react", {}), ("ash_p", {}), ("ash_s", {}), ("ash_b", {"p": 80}),
    ("scale", {}), ("dice", {}), ("dice", {"clip": "p90"}), ("dice", {"p": 90, "clip": 0.7}),
    ("line", {}), ("line", {"p_w": 90, "p_a": 90, "clip": 1.0}),
]


def _through_a_file(state: dict, info: dict) -> tuple[dict, dict]:
    """Round trip arrays through .npz and info through JSON, as a calibration file would."""
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, json.loads(json.dumps(info))


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_from_state_scores_identically(name, params):
    h_fit, y_fit, h_test, _, w, b = ref.digits_problem()
    det = oodgate.detector(name, **params).fit(h_fit, labels=y_fit, weight=w, bias=b)
    state, info = _through_a_file(det.fitted_state(), det.fit_info())
    again = detector_class(name).from_state(dict(det.params), state, info)
    assert again.is_fitted
    np.testing.assert_array_equal(again.score(h_test), det.score(h_test))
    np.testing.assert_array_equal(again.predict(h_test), det.predict(h_test))
    for key, value in det.fitted_state().items():
        np.testing.assert_array_equal(again.fitted_state()[key], value)
    assert again.fit_info() == det.fit_info()


def test_from_state_missing_array_is_an_artifact_error():
    h_fit, y_fit, _, _, w, b = ref.digits_problem()
    det = oodgate.detector("dice").fit(h_fit, weight=w, bias=b)
    state = det.fitted_state()
    del state["mask"]
    with pytest.raises(oodgate.ArtifactError, match="mask") as exc:
        detector_class("dice").from_state(det.params, state, det.fit_info())
    assert "\n" not in str(exc.value)
