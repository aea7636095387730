"""The calibration file: round trip, atomic write, no overwrite, and clear errors for bad files."""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib

import numpy as np
import pytest

from oodgate.calibration import collect_features, load_calibration
from oodgate.calibration.artifact import FORMAT_VERSION, MANIFEST
from oodgate.data import digits
from oodgate.errors import ArtifactError, OodgateError
from oodgate.models import load_model, split_classifier

METHODS = ("energy", "dice")  # as in conftest.py


@pytest.fixture(scope="module")
def test_features():
    bundle = load_model("digits-cnn")
    feats, _ = collect_features(split_classifier(bundle.model), digits("test").subset(np.arange(100)),
                                bundle.preprocess, progress=False)
    return feats


@pytest.fixture(scope="module")
def saved(calibrations, tmp_path_factory):
    """The energy calibration written once; tests copy the bytes they tamper with."""
    path = tmp_path_factory.mktemp("artifact") / "digits.oodcal"
    calibrations["energy"].save(path)
    return path


def _entries(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _rewrite(path, entries: dict[str, bytes]) -> None:
    """A valid zip (CRCs right) with the given entry contents: what a deliberate edit looks like."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def _error(path, pattern: str) -> str:
    with pytest.raises(ArtifactError, match=pattern) as info:
        load_calibration(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# -- round trip --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_round_trip(calibrations, test_features, tmp_path, method):
    cal = calibrations[method]
    path = cal.save(tmp_path / f"{method}.oodcal")
    loaded = load_calibration(path)
    assert loaded._detector is None  # rebuilt from the file, not carried over
    np.testing.assert_array_equal(loaded.detector.score(test_features), cal.detector.score(test_features))
    assert loaded.threshold == cal.threshold and loaded.tpr == cal.tpr
    assert loaded.preprocess == cal.preprocess
    assert loaded.class_names == cal.class_names == [str(d) for d in range(10)]
    assert loaded.data_fingerprint == cal.data_fingerprint == digits("calib").fingerprint()
    assert (loaded.method, loaded.params, loaded.info) == (cal.method, cal.params, cal.info)
    assert (loaded.model_ref, loaded.model_head, loaded.seed, loaded.counts) == ("digits-cnn", "fc", 0, cal.counts)
    np.testing.assert_array_equal(loaded.holdout_scores, cal.holdout_scores)
    assert loaded.checksum() == cal.checksum()
    # the model comes back from its reference and scores as the in-memory one
    x = cal.preprocess.load_batch(digits("test").images[:4])
    import torch

    with torch.no_grad():
        np.testing.assert_allclose(loaded.model()(torch.from_numpy(x)).numpy(),
                                   cal.model()(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_write_is_atomic_and_leaves_no_temporary_file(calibrations, tmp_path):
    cal = calibrations["energy"]
    path = cal.save(tmp_path / "a.oodcal")
    assert os.listdir(tmp_path) == ["a.oodcal"]
    before = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt  # the process dies between writing and renaming

    other = calibrations["dice"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            other.save(path, overwrite=True)
    assert path.read_bytes() == before  # the old file is intact, never half-written
    assert os.listdir(tmp_path) == ["a.oodcal"]  # and the temporary file is gone


def test_no_overwrite_without_force(calibrations, tmp_path):
    path = calibrations["energy"].save(tmp_path / "a.oodcal")
    before = path.read_bytes()
    with pytest.raises(OodgateError, match=r"a\.oodcal exists.*--force"):
        calibrations["dice"].save(path)
    assert path.read_bytes() == before
    calibrations["dice"].save(path, overwrite=True)
    assert load_calibration(path).method == "dice"


def test_missing_folder(calibrations, tmp_path):
    with pytest.raises(OodgateError, match=r"folder .*nope does not exist"):
        calibrations["energy"].save(tmp_path / "nope" / "a.oodcal")


# -- bad files ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    _error(tmp_path / "absent.oodcal", r"no such calibration file: .*absent\.oodcal")


@pytest.mark.parametrize("content", [b"", b"not a zip at all" * 10, bytes(range(256)) * 4])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.oodcal"
    path.write_bytes(content)
    _error(path, r"garbage\.oodcal is not a readable oodgate calibration file")


def test_folder_instead_of_file(tmp_path):
    _error(tmp_path, r"no such calibration file")


def test_zip_without_manifest(tmp_path):
    path = tmp_path / "other.zip"
    _rewrite(path, {"hello.txt": b"hi"})
    _error(path, r"not a readable oodgate calibration file")


def test_zip_of_another_format(saved, tmp_path):
    entries = _entries(saved)
    manifest = json.loads(entries[MANIFEST])
    manifest["format"] = "something-else"
    entries[MANIFEST] = json.dumps(manifest).encode()
    path = tmp_path / "foreign.oodcal"
    _rewrite(path, entries)
    _error(path, r"is not an oodgate calibration file")


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, "1"])
def test_other_format_version(saved, tmp_path, version):
    entries = _entries(saved)
    manifest = json.loads(entries[MANIFEST])
    manifest["format_version"] = version
    manifest["oodgate_version"] = "9.9.9"
    entries[MANIFEST] = json.dumps(manifest).encode()
    path = tmp_path / "v.oodcal"
    _rewrite(path, entries)
    message = _error(path, rf"format version {version}\b.*9\.9\.9.*reads version {FORMAT_VERSION}")
    assert "re-run calibrate" in message


def test_untouched_rewrite_still_loads(saved, tmp_path):
    """Control for the tamper tests: re-zipping the same entries is not tampering."""
    path = tmp_path / "same.oodcal"
    _rewrite(path, _entries(saved))
    assert load_calibration(path).threshold == load_calibration(saved).threshold


@pytest.mark.parametrize("entry", ["holdout_scores.npy", "state/weight.npy", "state/bias.npy"])
def test_one_flipped_byte_in_an_array_fails_the_checksum(saved, tmp_path, entry):
    entries = _entries(saved)
    data = bytearray(entries[entry])
    header = len(data) - np.load(io.BytesIO(bytes(data))).nbytes  # flip a payload byte, not the .npy header
    data[header + 5] ^= 0x01
    entries[entry] = bytes(data)
    path = tmp_path / "tampered.oodcal"
    _rewrite(path, entries)
    _error(path, r"fails its checksum")


def test_edited_threshold_fails_the_checksum(saved, tmp_path):
    entries = _entries(saved)
    manifest = json.loads(entries[MANIFEST])
    manifest["threshold"] = manifest["threshold"] - 1.0  # accept more OOD
    entries[MANIFEST] = json.dumps(manifest).encode()
    path = tmp_path / "edited.oodcal"
    _rewrite(path, entries)
    _error(path, r"fails its checksum.*re-run calibrate")


def test_raw_byte_flip_in_the_file_is_an_artifact_error(saved, tmp_path):
    """Disk-level corruption inside a compressed array entry: every flip is an ArtifactError or harmless."""
    raw = saved.read_bytes()
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("state/bias.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    path = tmp_path / "corrupt.oodcal"
    original = load_calibration(saved).checksum()
    for offset in range(start, start + info.compress_size):
        data = bytearray(raw)
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))
        try:
            loaded = load_calibration(path)
        except ArtifactError:
            continue
        assert loaded.checksum() == original  # a flip in unused padding bits may decode to the same bytes
