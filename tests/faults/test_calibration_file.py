"""Damaged, edited and hostile calibration files: every one is refused by `oodgate export` in one line (exit 2),
before anything is written, and by load_calibration with an ArtifactError."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from oodgate.errors import ArtifactError, OodgateError

from faultkit import expect_error, files_in, npy, read_calibration_zip, write_calibration_zip

REQUIRED = ("method", "params", "info", "threshold", "tpr", "preprocess", "class_names", "data_fingerprint",
            "model_ref", "model_head", "model_weights", "counts", "seed", "arrays", "checksum", "oodgate_version")

#: (field, bad value) pairs written into an otherwise valid manifest, checksum recomputed
FIELD_EDITS = [
    ("threshold", "x"), ("threshold", None), ("threshold", [1.0]), ("threshold", True),
    ("tpr", 0), ("tpr", -0.1), ("tpr", 1.5), ("tpr", "0.95"), ("tpr", None), ("tpr", float("nan")),
    ("method", ""), ("method", 123), ("method", None), ("method", "no-such-method"),
    ("params", []), ("params", "p=90"), ("params", None),
    ("info", None), ("info", [1]),
    ("preprocess", "RGB"), ("preprocess", None), ("preprocess", {"channels": "XYZ"}),
    ("preprocess", {"channels": "L", "mean": [0.5, 0.5], "std": [1, 1, 1]}), ("preprocess", {"bogus": 1}),
    ("class_names", "0123456789"), ("class_names", [0, 1, 2]), ("class_names", {"a": 1}),
    ("arrays", "holdout_scores"), ("arrays", []), ("arrays", ["holdout_scores", "holdout_scores"]),
    ("arrays", ["holdout_scores", "../../etc/passwd"]), ("arrays", ["holdout_scores", "state/missing"]),
    ("counts", []), ("counts", None),
    ("seed", "0"), ("seed", 1.5), ("seed", None),
    ("model_ref", 5), ("model_ref", ""), ("model_weights", 5), ("model_weights", ""), ("model_head", []),
    ("data_fingerprint", None), ("data_fingerprint", ""), ("oodgate_version", None),
]


@pytest.fixture(scope="module")
def original(energy_calibration_file):
    return read_calibration_zip(energy_calibration_file)


def refused(cli, path: Path, tmp_path: Path, *fragments: str) -> str:
    """`oodgate export path` fails in one line with exit 2 and leaves the output folder as it was."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = files_in(out)
    line = expect_error(cli("export", path, "--output", out / "g.onnx"), *fragments)
    assert files_in(out) == before
    with pytest.raises(OodgateError) as info:
        from oodgate.calibration import load_calibration

        load_calibration(path)
    assert "\n" not in str(info.value)
    return line


@pytest.mark.parametrize("field,value", FIELD_EDITS, ids=[f"{f}={v!r:.24}" for f, v in FIELD_EDITS])
def test_manifest_field_with_a_bad_value(cli, original, tmp_path, field, value):
    manifest, entries = original
    path = write_calibration_zip(tmp_path / "bad.oodcal", {**manifest, field: value}, entries)
    refused(cli, path, tmp_path)


@pytest.mark.parametrize("field", REQUIRED)
def test_manifest_field_missing(cli, original, tmp_path, field):
    manifest, entries = original
    path = write_calibration_zip(tmp_path / "bad.oodcal", {k: v for k, v in manifest.items() if k != field}, entries,
                                 reseal=field != "checksum")
    refused(cli, path, tmp_path)


@pytest.mark.parametrize("text", ["[]", '"a string"', "5", "null", "{", "\x00\x01garbage", '{"format": "x"}'],
                         ids=["list", "string", "number", "null", "truncated-json", "binary", "foreign-object"])
def test_manifest_not_an_oodgate_object(cli, original, tmp_path, text):
    _, entries = original
    path = write_calibration_zip(tmp_path / "bad.oodcal", text, entries, reseal=False)
    refused(cli, path, tmp_path)


@pytest.mark.parametrize("fmt,version", [("oodgate-graph", 1), ("oodgate-calibration", 2),
                                         ("oodgate-calibration", "1"), ("oodgate-calibration", None)])
def test_other_format_or_version(cli, original, tmp_path, fmt, version):
    manifest, entries = original
    path = write_calibration_zip(tmp_path / "bad.oodcal", {**manifest, "format": fmt, "format_version": version},
                                 entries)
    refused(cli, path, tmp_path)


def _archive_fault(kind: str, manifest: dict, entries: dict[str, bytes], raw: bytes, path: Path) -> None:
    if kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "not-a-zip":
        path.write_bytes(b"PK\x03\x04 but then nothing of a zip" * 10)
    elif kind == "truncated-half":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "truncated-tail":
        path.write_bytes(raw[:-30])
    elif kind == "no-manifest":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
    elif kind == "extra-entry":
        write_calibration_zip(path, manifest, {**entries, "payload.py": b"import os; os.abort()"})
    elif kind == "duplicate-entry":
        write_calibration_zip(path, manifest, entries)
        with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning):
            zf.writestr("holdout_scores.npy", npy(np.zeros(3, np.float32)))
    elif kind == "missing-array":
        write_calibration_zip(path, manifest, {k: v for k, v in entries.items() if k != "holdout_scores.npy"})
    elif kind == "pickled-array":
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        write_calibration_zip(path, manifest, {**entries, "holdout_scores.npy": buf.getvalue()})
    elif kind == "garbage-array":
        write_calibration_zip(path, manifest, {**entries, "holdout_scores.npy": b"\x93NUMPY garbage"})
    elif kind == "nan-holdout-scores":
        scores = np.load(io.BytesIO(entries["holdout_scores.npy"]))
        scores[3] = np.nan
        write_calibration_zip(path, manifest, {**entries, "holdout_scores.npy": npy(scores)})
    elif kind == "float64-holdout-scores":
        scores = np.load(io.BytesIO(entries["holdout_scores.npy"])).astype(np.float64)
        write_calibration_zip(path, manifest, {**entries, "holdout_scores.npy": npy(scores)})
    elif kind == "2d-holdout-scores":
        scores = np.load(io.BytesIO(entries["holdout_scores.npy"]))
        write_calibration_zip(path, manifest, {**entries, "holdout_scores.npy": npy(scores.reshape(-1, 1))})
    elif kind == "holdout-scores-edited":  # scores changed, threshold kept: the threshold no longer fits them
        scores = np.load(io.BytesIO(entries["holdout_scores.npy"])) - 100
        write_calibration_zip(path, manifest, {**entries, "holdout_scores.npy": npy(scores)})
    elif kind == "a-directory":
        path.mkdir()
    else:
        raise AssertionError(kind)


ARCHIVE_FAULTS = ["empty-file", "not-a-zip", "truncated-half", "truncated-tail", "no-manifest", "extra-entry",
                  "duplicate-entry", "missing-array", "pickled-array", "garbage-array", "nan-holdout-scores",
                  "float64-holdout-scores", "2d-holdout-scores", "holdout-scores-edited", "a-directory"]


@pytest.mark.parametrize("kind", ARCHIVE_FAULTS)
def test_damaged_archive(cli, original, energy_calibration_file, tmp_path, kind):
    manifest, entries = original
    path = tmp_path / "bad.oodcal"
    _archive_fault(kind, manifest, entries, energy_calibration_file.read_bytes(), path)
    refused(cli, path, tmp_path)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 0.999])
def test_one_flipped_bit_anywhere(cli, energy_calibration_file, tmp_path, fraction):
    """A flipped bit is refused, unless it hit a byte that carries no content (a zip timestamp): then the file
    loads with exactly the original content."""
    from oodgate.calibration import load_calibration

    raw = bytearray(energy_calibration_file.read_bytes())
    at = int(fraction * (len(raw) - 1))
    raw[at] ^= 0x10
    path = tmp_path / "flipped.oodcal"
    path.write_bytes(bytes(raw))
    try:
        cal = load_calibration(path)
    except ArtifactError:
        refused(cli, path, tmp_path)
        return
    good = load_calibration(energy_calibration_file)
    assert cal.checksum() == good.checksum() and cal.threshold == good.threshold
    assert all(np.array_equal(cal.state[k], good.state[k]) for k in good.state)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_one_flipped_bit_in_the_compressed_data(cli, original, tmp_path, fraction):
    """Flips inside an entry's compressed bytes (never harmless): refused by the CRC or the checksum."""
    manifest, entries = original
    path = write_calibration_zip(tmp_path / "stored.oodcal", manifest, entries)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + int(fraction * (info.compress_size - 1))] ^= 0x04
    path.write_bytes(bytes(raw))
    refused(cli, path, tmp_path)


def test_threshold_edited_without_resealing_fails_the_checksum(cli, original, tmp_path):
    manifest, entries = original
    path = write_calibration_zip(tmp_path / "bad.oodcal", {**manifest, "threshold": -1e9}, entries, reseal=False)
    refused(cli, path, tmp_path, "checksum")


def test_d6_threshold_resealed_to_accept_everything_is_refused(cli, original, tmp_path):
    """The issue's case: threshold -1e9 with the checksum recomputed used to export silently (all OOD accepted)."""
    manifest, entries = original
    path = write_calibration_zip(tmp_path / "bad.oodcal", {**manifest, "threshold": -1e9}, entries)
    refused(cli, path, tmp_path, "threshold")


@pytest.mark.parametrize("entry", ["manifest.json", "holdout_scores.npy"])
def test_d8_a_small_file_that_inflates_hugely_is_refused_unread(cli, original, tmp_path, entry):
    """A ~0.6 MB archive whose entry inflates to 600 MB is refused from its declared sizes (nothing decompressed)."""
    import resource
    import time

    manifest, entries = original
    path = tmp_path / "bomb.oodcal"
    chunk = b"\x00" * (8 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        if entry != "manifest.json":
            zf.writestr("manifest.json", json.dumps(manifest))
        with zf.open(entry, "w", force_zip64=True) as fh:
            for _ in range(75):  # 600 MiB of zeros
                fh.write(chunk)
        for name, data in entries.items():
            if name != entry:
                zf.writestr(name, data)
    assert path.stat().st_size < 2 << 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    refused(cli, path, tmp_path, "decompress")
    assert time.perf_counter() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 << 10  # KiB: no 600 MB inflated


def test_unknown_method_is_named(original, tmp_path):
    from oodgate.calibration import load_calibration

    manifest, entries = original
    path = write_calibration_zip(tmp_path / "bad.oodcal", {**manifest, "method": "no-such-method"}, entries)
    with pytest.raises(ArtifactError, match="no-such-method"):
        load_calibration(path)
