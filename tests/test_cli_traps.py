"""The small traps of a new user's first hour (issue 15, item 6) and the report's plots check (item 5)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oodgate.cli import BUILTIN_MODEL_NAMES, app


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"})


def _ok(runner: CliRunner, *args: object):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def unnamed_graph(tmp_path_factory) -> Path:
    """A digits MSP graph calibrated from a bare torch module: no class names in its metadata."""
    from oodgate.calibration.calibrate import calibrate
    from oodgate.data.sets import digits
    from oodgate.exporter.export import export
    from oodgate.models.registry import load_model

    bundle = load_model("digits-cnn")
    cal = calibrate(bundle.model, digits("calib"), method="msp", preprocess=bundle.preprocess, progress=False)
    assert cal.class_names is None
    path = tmp_path_factory.mktemp("unnamed") / "msp.onnx"
    export(cal, path)
    return path


def test_run_output_suffix_picks_the_format(runner, energy_graph, digit_pngs, tmp_path):
    from oodgate.runtime.session import Session

    with Session(energy_graph, providers="cpu") as sess:
        pred = sess.run([str(p) for p in digit_pngs])
    folder = digit_pngs[0].parent
    _ok(runner, "run", energy_graph, folder, "-p", "cpu", "-o", tmp_path / "out.jsonl")
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    np.testing.assert_array_equal([r["score"] for r in records], pred.scores.astype(np.float64))
    assert [r["is_ood"] for r in records] == pred.is_ood.tolist()
    _ok(runner, "run", energy_graph, folder, "-p", "cpu", "-o", tmp_path / "out.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    np.testing.assert_allclose([float(r["score"]) for r in rows], pred.scores, rtol=1e-6)
    assert [r["label"] for r in rows] == [str(int(v)) for v in pred.labels]
    _ok(runner, "run", energy_graph, folder, "-p", "cpu", "-o", tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text().startswith("input")  # a table


def test_run_format_contradicting_the_suffix_is_an_error(energy_graph, digit_pngs, tmp_path, cli_error):
    line = cli_error("run", energy_graph, digit_pngs[0], "--format", "csv", "-o",
                  tmp_path / "out.jsonl")
    assert "--format csv does not match the output suffix '.jsonl'" in line
    assert not (tmp_path / "out.jsonl").exists()


def test_jsonl_keeps_class_as_null_like_csv_keeps_an_empty_column(runner, unnamed_graph, digit_pngs):
    folder = digit_pngs[0].parent
    records = [json.loads(x) for x in _ok(runner, "run", unnamed_graph, folder, "-p", "cpu", "--format",
                                          "jsonl").stdout.splitlines()]
    assert len(records) == len(digit_pngs)
    assert all(list(r) == ["input", "label", "class", "score", "is_ood"] and r["class"] is None for r in records)
    rows = list(csv.DictReader(io.StringIO(_ok(runner, "run", unnamed_graph, folder, "-p", "cpu", "--format",
                                               "csv").stdout)))
    assert [r["class"] for r in rows] == [""] * len(digit_pngs)
    assert [int(r["label"]) for r in rows] == [r["label"] for r in records]
    table = _ok(runner, "run", unnamed_graph, folder, "-p", "cpu").stdout.splitlines()[1:]
    assert [line.split()[1] for line in table] == [str(r["label"]) for r in records]  # the label, not 'None'


def test_preprocess_is_reachable_after_import_oodgate():
    code = ("import oodgate; p = oodgate.data.Preprocess.preset('gray-28'); "
            "import sys; print(p.input_shape, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(1,", "28,", "28)", "False"]  # and it did not import torch


def test_model_help_names_every_builtin(runner):
    from oodgate.models.registry import BUILTIN_MODELS

    assert sorted(BUILTIN_MODEL_NAMES) == sorted(BUILTIN_MODELS)
    text = " ".join(_ok(runner, "calibrate", "--help").stdout.split())
    assert all(name in text for name in ("digits-cnn", "fashion-cnn", "efficientnet-lite0", "fashion-effnet"))


# -- corrupt images: one-line error by default, skip-and-report on request -------------------------------------


@pytest.fixture()
def folder_with_a_corrupt_jpeg(digit_pngs, tmp_path) -> Path:
    import shutil

    for p in digit_pngs[:4]:
        shutil.copy(p, tmp_path / p.name)
    good = (tmp_path / digit_pngs[0].name).read_bytes()
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + good[:20])  # a JPEG header, then garbage
    return tmp_path


def test_corrupt_image_names_the_file_and_the_option(energy_graph, folder_with_a_corrupt_jpeg, cli_error):
    line = cli_error("run", energy_graph, folder_with_a_corrupt_jpeg, "-p", "cpu")
    assert "broken.jpg" in line and "--skip-unreadable" in line


def test_skip_unreadable_runs_the_rest_and_lists_the_file(energy_graph, folder_with_a_corrupt_jpeg, digit_pngs):
    from oodgate.runtime.session import Session

    out = subprocess.run([sys.executable, "-m", "oodgate.cli", "run", str(energy_graph),
                          str(folder_with_a_corrupt_jpeg), "-p", "cpu", "--format", "jsonl", "--skip-unreadable"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    records = [json.loads(x) for x in out.stdout.splitlines()]
    assert [Path(r["input"]).name for r in records] == [p.name for p in digit_pngs[:4]]
    with Session(energy_graph, providers="cpu") as sess:
        want = sess.run([str(p) for p in digit_pngs[:4]]).scores
    np.testing.assert_array_equal([r["score"] for r in records], want.astype(np.float64))
    assert "skipped 1 unreadable image(s)" in out.stderr and "broken.jpg" in out.stderr


def test_image_folder_skip_unreadable_keeps_labels_aligned(tmp_path, digit_pngs):
    import shutil

    from oodgate.data import image_folder

    for cls, pngs in (("a", digit_pngs[:3]), ("b", digit_pngs[3:5])):
        (tmp_path / cls).mkdir()
        for p in pngs:
            shutil.copy(p, tmp_path / cls / p.name)
    (tmp_path / "a" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    found = image_folder(tmp_path, skip_unreadable=True)
    assert len(found) == 5 and found.labels.tolist() == [0, 0, 0, 1, 1]
    assert [Path(p).name for p, _ in found.skipped] == ["zz_broken.png"]
    with pytest.raises(Exception, match="zz_broken.png.*--skip-unreadable"):
        list(image_folder(tmp_path).batches(__import__("oodgate").data.Preprocess.preset("gray-28")))


# -- evaluate --report: the plots extra is checked before the work ----------------------------------------------


def test_report_without_matplotlib_fails_before_scoring(monkeypatch, energy_graph, tmp_path, cli_error):
    import importlib.util

    import oodgate.evaluation.evaluate as evaluation_pkg

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    scored = []
    monkeypatch.setattr(evaluation_pkg, "evaluate_session", lambda *a, **k: scored.append(1))
    line = cli_error("evaluate", energy_graph, "--id", "digits:test", "--ood", "noise=ood:noise",
                  "--report", tmp_path / "report")
    assert "matplotlib" in line and "'.[plots]'" in line and "--no-plots" in line
    assert scored == [] and not (tmp_path / "report").exists()
    assert cli_error.stdout == ""  # no table printed before the error


# -- checkpoints on the command line: a whole pickled model needs --trust-pickle, at calibrate and export ---------


def test_pickled_checkpoint_needs_trust_pickle(runner, tmp_path, cli_error):
    import torch

    from oodgate.models.registry import load_model

    torch.save(load_model("digits-cnn").model, tmp_path / "whole.pt")
    args = ["calibrate", "digits-cnn", "--weights", tmp_path / "whole.pt", "--data", "digits:calib", "--method",
            "msp", "-o", tmp_path / "msp.oodcal"]
    line = cli_error(*args)
    assert "not a plain state dict" in line and "SmallCNN" in line and "--trust-pickle" in line
    assert not (tmp_path / "msp.oodcal").exists()
    _ok(runner, *args, "--trust-pickle")
    line = cli_error("export", tmp_path / "msp.oodcal", "-o", tmp_path / "msp.onnx")
    assert "--trust-pickle" in line and not (tmp_path / "msp.onnx").exists()
    _ok(runner, "export", tmp_path / "msp.oodcal", "-o", tmp_path / "msp.onnx", "--trust-pickle")
    from oodgate.data.sets import digits
    from oodgate.runtime.session import Session

    plain = load_model("digits-cnn")
    with Session(tmp_path / "msp.onnx", providers="cpu") as sess:
        got = sess.run(digits("test").images[:8]).scores
    with torch.no_grad():
        logits = plain.model(torch.from_numpy(plain.preprocess(digits("test").images[:8])))
    np.testing.assert_allclose(got, torch.softmax(logits, 1).max(1).values.numpy(), rtol=1e-5, atol=1e-6)
