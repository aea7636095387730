"""Defects 3 and 6 of issue 13: a calibration belongs to the weights it was fitted with (stale weights are refused,
an explicit override re-checks the threshold on ID data), relative paths resolve against the calibration file, and
a `module:attr` model reference read from a file is code that runs only when the user names it again or trusts it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from oodgate.errors import OodgateError

from faultkit import expect_error, files_in, read_calibration_zip, write_calibration_zip


@pytest.fixture(scope="module")
def weights_setup(tmp_path_factory):
    """A project folder with mynet.pt (digits-cnn's weights) and a calibration made from it, in cal/."""
    import torch

    from oodgate.models import load_model

    root = tmp_path_factory.mktemp("project")
    state = load_model("digits-cnn").model.state_dict()
    torch.save(state, root / "mynet.pt")
    (root / "cal").mkdir()
    return root, state


@pytest.fixture
def calibrated(weights_setup, cli, monkeypatch):
    """cal/my.oodcal made with `--weights mynet.pt` typed relative to the project folder (the cwd then)."""
    root, state = weights_setup
    import torch

    torch.save(state, root / "mynet.pt")  # undo an earlier test's overwrite
    target = root / "cal" / "my.oodcal"
    target.unlink(missing_ok=True)
    monkeypatch.chdir(root)
    result = cli("calibrate", "digits-cnn", "--weights", "mynet.pt", "--data", "digits:calib", "--output",
                 "cal/my.oodcal")
    assert result.code == 0, result.err
    return root, state, target


def _overwrite_weights(root, state, noise: float) -> None:
    """Retrained-looking weights: the first conv layer plus Gaussian noise of ``noise`` times its spread."""
    import torch

    new = {k: v.clone() for k, v in state.items()}
    first = next(k for k in new if k.endswith("weight") and new[k].ndim == 4)
    gen = torch.Generator().manual_seed(0)
    new[first] = new[first] + noise * new[first].std() * torch.randn(new[first].shape, generator=gen)
    torch.save(new, root / "mynet.pt")


def test_d3_calibration_records_the_model_state_hash(calibrated):
    from oodgate.calibration import load_calibration

    _, _, target = calibrated
    cal = load_calibration(target)
    assert cal.model_sha256 is not None and len(cal.model_sha256) == 64


def test_d3_export_refuses_overwritten_weights(calibrated, cli, tmp_path):
    """The issue's case: mynet.pt replaced by other weights; export used to succeed with the old tau."""
    root, state, target = calibrated
    _overwrite_weights(root, state, 2.0)
    out = tmp_path / "out"
    out.mkdir()
    expect_error(cli("export", target, "--output", out / "g.onnx"), "weights differ")
    assert files_in(out) == []


def test_d3_parity_refuses_overwritten_weights(calibrated, cli, energy_graph, tmp_path):
    """The PyTorch reference of parity (here: written as a golden file) is never computed with other weights."""
    root, state, target = calibrated
    _overwrite_weights(root, state, 2.0)
    expect_error(cli("parity", energy_graph, "--calibration", target, "--data", "digits:test", "--limit", 8,
                     "--save-golden", tmp_path / "g.npz"), "weights differ")
    assert not (tmp_path / "g.npz").exists()


def test_d3_relative_weights_resolve_against_the_calibration_file(calibrated, cli, tmp_path, monkeypatch):
    """Exported from another folder: mynet.pt is found next to where it was when calibrating, not in the cwd."""
    _, _, target = calibrated
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("export", target, "--output", "g.onnx", "--no-check")
    assert result.code == 0, result.err
    assert (elsewhere / "g.onnx").is_file()


def test_d3_override_rechecks_and_accepts_harmless_new_weights(calibrated, cli, tmp_path):
    root, state, target = calibrated
    _overwrite_weights(root, state, 1e-6)
    out = tmp_path / "g.onnx"
    result = cli("export", target, "--output", out, "--recheck-data", "digits:calib", "--no-check")
    assert result.code == 0, result.err
    assert "re-checked" in result.out


def test_d3_override_rechecks_and_refuses_weights_that_move_the_threshold(calibrated, cli, tmp_path):
    root, state, target = calibrated
    _overwrite_weights(root, state, 2.0)
    out = tmp_path / "g.onnx"
    expect_error(cli("export", target, "--output", out, "--recheck-data", "digits:calib"), "re-run calibrate")
    assert not out.exists()


def test_d3_python_export_with_another_model_is_refused(energy_cal, tmp_path):
    import torch

    from oodgate import export
    from oodgate.models import load_model

    other = load_model("digits-cnn").model
    with torch.no_grad():
        next(iter(other.parameters())).mul_(1.5)
    with pytest.raises(OodgateError, match="weights differ"):
        export(energy_cal, tmp_path / "g.onnx", model=other)
    assert files_in(tmp_path) == []


# -- model references from a file are code -----------------------------------------------------------------

FACTORY = '''
import os, pathlib
pathlib.Path(os.environ["MARKER_DIR"], "imported").write_text("x")
from oodgate.models import load_model

def make():
    pathlib.Path(os.environ["MARKER_DIR"], "called").write_text("x")
    return load_model("digits-cnn").model
'''

PREP = '{"channels": "L", "resize": 16, "crop": [16, 16], "mean": [0.5], "std": [0.5]}'


@pytest.fixture
def user_model(tmp_path, monkeypatch, cli):
    """A calibration of `usermodel:make` (a user module that leaves marker files when imported / called)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "usermodel.py").write_text(FACTORY)
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("MARKER_DIR", str(markers))
    monkeypatch.syspath_prepend(str(src))
    cal = tmp_path / "user.oodcal"
    result = cli("calibrate", "usermodel:make", "--data", "digits:calib", "--output", cal, "--preprocess", PREP)
    assert result.code == 0, result.err
    for marker in markers.iterdir():
        marker.unlink()
    sys.modules.pop("usermodel", None)
    return cal, markers


def test_d6_a_module_reference_from_a_file_is_not_imported(user_model, cli, tmp_path):
    cal, markers = user_model
    expect_error(cli("export", cal, "--output", tmp_path / "g.onnx"), "usermodel:make", "--trust-model")
    assert files_in(markers) == [] and not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("how", ["named-again", "trust-flag"])
def test_d6_the_user_can_name_it_again_or_trust_it(user_model, cli, tmp_path, how):
    cal, markers = user_model
    extra = ["--model", "usermodel:make"] if how == "named-again" else ["--trust-model"]
    result = cli("export", cal, "--output", tmp_path / "g.onnx", "--no-check", *extra)
    assert result.code == 0, result.err
    assert files_in(markers) == ["called", "imported"]


def test_d6_naming_another_model_is_refused(user_model, cli, tmp_path):
    cal, markers = user_model
    expect_error(cli("export", cal, "--output", tmp_path / "g.onnx", "--model", "othermodel:make"), "usermodel:make")
    assert files_in(markers) == []


def test_d6_python_export_of_a_loaded_file_needs_trust(user_model, tmp_path):
    from oodgate import export
    from oodgate.calibration import load_calibration

    cal, markers = user_model
    with pytest.raises(OodgateError, match="trust"):
        export(load_calibration(cal), tmp_path / "g.onnx")
    assert files_in(markers) == []


def test_d6_os_abort_in_a_resealed_file_does_not_kill_the_export(energy_calibration_file, tmp_path):
    """The issue's case, in a child process (on the old code it dies of SIGABRT)."""
    manifest, entries = read_calibration_zip(energy_calibration_file)
    evil = write_calibration_zip(tmp_path / "evil.oodcal", {**manifest, "model_ref": "os:abort"}, entries)
    proc = subprocess.run([sys.executable, "-m", "oodgate.cli", "export", str(evil), "-o", str(tmp_path / "g.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "os:abort" in lines[0]
    assert not (tmp_path / "g.onnx").exists()
