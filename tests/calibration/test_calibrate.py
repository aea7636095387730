"""calibrate(): the threshold keeps the target share of held-out ID, the split is seeded, bad input is clear."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from oodgate.calibration import calibrate, collect_features, show_progress
from oodgate.data import ImageSet, digits
from oodgate.detectors import Energy, available_detectors
from oodgate.errors import OodgateError
from oodgate.models import load_model, split_classifier

METHODS = ("energy", "dice")  # as in conftest.py


def _digits_split():
    bundle = load_model("digits-cnn")
    return split_classifier(bundle.model), bundle.preprocess


@pytest.mark.parametrize("method", METHODS)
def test_threshold_keeps_target_share_of_holdout(calibrations, method):
    cal = calibrations[method]
    n_held = cal.counts["holdout"]
    assert cal.counts["fit"] == 320 and n_held == 80  # 400 calib images, 20 % held out
    assert len(cal.holdout_scores) == n_held
    accepted = int(np.sum(cal.holdout_scores >= cal.threshold))
    assert accepted == cal.counts["accepted_holdout"]
    assert abs(accepted - cal.tpr * n_held) <= 1  # 76 of 80
    assert cal.tpr == 0.95 and cal.method == method and cal.seed == 0


@pytest.mark.parametrize("method", METHODS)
def test_holdout_scores_are_the_detector_scores_of_the_held_out_images(calibrations, calib_set, method):
    cal = calibrations[method]
    held, fit_set = calib_set.split(0.2, seed=0)
    model, preprocess = _digits_split()
    feats, _ = collect_features(model, held, preprocess, progress=False)
    np.testing.assert_allclose(cal.detector.score(feats), cal.holdout_scores, rtol=1e-5, atol=1e-5)
    if method == "energy":  # independent: logsumexp of the classifier's own logits
        x = np.concatenate([x for x, _ in held.batches(preprocess, 128)])
        with torch.no_grad():
            logits = load_model("digits-cnn").model(torch.from_numpy(x))
        np.testing.assert_allclose(torch.logsumexp(logits, 1).numpy(), cal.holdout_scores, rtol=1e-4, atol=1e-4)
    assert cal.data_fingerprint == calib_set.fingerprint()


def test_other_tpr(calib_set):
    cal = calibrate("digits-cnn", calib_set, method="energy", tpr=0.8, progress=False)
    accepted = int(np.sum(cal.holdout_scores >= cal.threshold))
    assert abs(accepted - 0.8 * 80) <= 1 and cal.counts["accepted_holdout"] == accepted


def test_split_is_seeded(calibrations, calib_set):
    base = calibrations["energy"]
    again = calibrate("digits-cnn", calib_set, method="energy", seed=0, progress=False)
    assert again.threshold == base.threshold
    np.testing.assert_array_equal(again.holdout_scores, base.holdout_scores)
    other = calibrate("digits-cnn", calib_set, method="energy", seed=1, progress=False)
    assert other.seed == 1 and other.counts["holdout"] == 80
    # a different held-out set: the multisets of scores differ (they would match for the same images)
    assert not np.array_equal(np.sort(other.holdout_scores), np.sort(base.holdout_scores))
    accepted = int(np.sum(other.holdout_scores >= other.threshold))
    assert abs(accepted - 0.95 * 80) <= 1


def test_holdout_as_separate_image_set(calib_set):
    test_set = digits("test").subset(np.arange(201), name="digits:test[:201]")
    cal = calibrate("digits-cnn", calib_set, method="energy", holdout=test_set, progress=False)
    assert cal.counts["fit"] == 400 and cal.counts["holdout"] == 201
    accepted = int(np.sum(cal.holdout_scores >= cal.threshold))
    assert accepted == cal.counts["accepted_holdout"]
    assert abs(accepted - 0.95 * 201) <= 1  # ceil(190.95) = 191
    assert cal.data_fingerprint == calib_set.fingerprint() + "+" + test_set.fingerprint()
    model, preprocess = _digits_split()
    feats, _ = collect_features(model, test_set, preprocess, progress=False)
    np.testing.assert_allclose(cal.detector.score(feats), cal.holdout_scores, rtol=1e-5, atol=1e-5)


# -- progress bar ------------------------------------------------------------------------------------------


def _calibrate_on_a_terminal(monkeypatch, capsys, progress):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    calibrate("digits-cnn", digits("calib").subset(np.arange(40)), method="energy", progress=progress)
    return capsys.readouterr().err


def test_progress_bar_quiet_in_ci(monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    assert show_progress(None) is False
    assert _calibrate_on_a_terminal(monkeypatch, capsys, None) == ""


def test_progress_bar_shown_on_a_terminal_outside_ci(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    assert "features" in _calibrate_on_a_terminal(monkeypatch, capsys, None)  # proves stderr is captured


def test_progress_false_is_quiet(monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    assert _calibrate_on_a_terminal(monkeypatch, capsys, False) == ""


# -- bad input ---------------------------------------------------------------------------------------------


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_unknown_method(calib_set):
    with pytest.raises(OodgateError, match=r"unknown detector 'nope'.*energy") as info:
        calibrate("digits-cnn", calib_set, method="nope", progress=False)
    _one_line(info)


@pytest.mark.parametrize("holdout", [0, 0.0, 1.0, 1.5, -0.1])
def test_holdout_out_of_range(calib_set, holdout):
    with pytest.raises(OodgateError, match=rf"holdout={holdout!r}.*\(0, 1\)") as info:
        calibrate("digits-cnn", calib_set, method="energy", holdout=holdout, progress=False)
    _one_line(info)


def test_holdout_leaving_a_part_empty(calib_set):
    with pytest.raises(OodgateError, match=r"leaves one part empty"):
        calibrate("digits-cnn", calib_set.subset(np.arange(3)), method="energy", holdout=0.1, progress=False)


def test_unknown_model(calib_set):
    with pytest.raises(OodgateError, match=r"unknown model 'nope'.*digits-cnn"):
        calibrate("nope", calib_set, method="energy", progress=False)


class _LabelledEnergy(Energy):
    name = "energy_needing_labels"
    needs_labels = True


def test_detector_needing_labels_with_unlabelled_data(monkeypatch, calib_set):
    from oodgate.detectors import registry

    monkeypatch.setitem(registry._REGISTERED, _LabelledEnergy.name, _LabelledEnergy)
    unlabelled = ImageSet("unlabelled digits", calib_set.images)
    with pytest.raises(OodgateError, match=r"'energy_needing_labels' is fitted with class labels.*none") as info:
        calibrate("digits-cnn", unlabelled, method=_LabelledEnergy.name, progress=False)
    _one_line(info)


def test_mos_with_unlabelled_data(calib_set):
    if "mos" not in available_detectors():
        pytest.skip("the 'mos' detector is not available in this build")
    unlabelled = ImageSet("unlabelled digits", calib_set.images)
    with pytest.raises(OodgateError, match=r"'mos' is fitted with class labels, but the ID data has none"):
        calibrate("digits-cnn", unlabelled, method="mos", progress=False)
