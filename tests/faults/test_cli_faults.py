"""Defect 8 of issue 13 and the README's promise: bad input to any command is one 'error: ...' line and exit 2 (no
traceback), and nothing is written (no half file, no temporary left behind)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faultkit import expect_error, files_in

CAL = ["calibrate", "digits-cnn", "--data", "digits:calib"]


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def nothing_written(folder) -> None:
    assert files_in(folder) == [], files_in(folder)


CALIBRATE_FAULTS = {
    "batch-size-0": (["--batch-size", "0"], "batch"),
    "batch-size-minus-1": (["--batch-size", "-1"], "batch"),
    "tpr-0": (["--tpr", "0"], "tpr"),
    "tpr-1.5": (["--tpr", "1.5"], "tpr"),
    "tpr-nan": (["--tpr", "nan"], "tpr"),
    "holdout-0": (["--holdout", "0"], "holdout"),
    "holdout-1": (["--holdout", "1"], "holdout"),
    "holdout-minus": (["--holdout", "-0.2"], "holdout"),
    "holdout-no-such-set": (["--holdout", "no/such/folder"], "no such folder"),
    "method-unknown": (["--method", "nosuch"], "nosuch"),
    "param-no-equals": (["--method", "react", "--param", "p"], "key=value"),
    "param-empty-key": (["--method", "react", "--param", "=5"], "key=value"),
    "param-text": (["--method", "react", "--param", "p=abc"], "p="),
    "param-200": (["--method", "react", "--param", "p=200"], "percentile"),
    "param-true": (["--method", "react", "--param", "p=true"], "p=True"),
    "param-nan": (["--method", "react", "--param", "p=NaN"], "percentile"),
    "param-unknown": (["--method", "react", "--param", "q=1"], "unknown parameter"),
    "preprocess-bad-json": (["--preprocess", "{bad"], "preprocess"),
    "preprocess-bad-channels": (["--preprocess", '{"channels": "XYZ"}'], "channels"),
    "data-missing-folder": (["--data", "no/such/folder"], "no such folder"),
    "data-unknown-set": (["--data", "nosuchset"], "unknown image set"),
    "weights-missing": (["--weights", "no-such.pt"], "no such weights"),
    "head-not-linear": (["--head", "features"], "head"),
    "head-missing": (["--head", "nosuch"], "head"),
}


@pytest.mark.parametrize("case", list(CALIBRATE_FAULTS))
def test_calibrate_option_faults(cli, out, case):
    args, fragment = CALIBRATE_FAULTS[case]
    expect_error(cli(*CAL, "--output", out / "c.oodcal", *args), fragment)
    nothing_written(out)


@pytest.mark.parametrize("kind", ["garbage-bytes", "other-shapes", "empty-file", "a-folder"])
def test_calibrate_with_unusable_weights(cli, out, tmp_path, kind):
    import torch

    path = tmp_path / "w.pt"
    if kind == "garbage-bytes":
        path.write_bytes(b"\x80\x02 not a torch file" * 20)
    elif kind == "other-shapes":
        torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    elif kind == "empty-file":
        path.write_bytes(b"")
    else:
        path.mkdir()
    expect_error(cli(*CAL, "--output", out / "c.oodcal", "--weights", path), "weights")
    nothing_written(out)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A user module with factories that raise, return the wrong thing, or need arguments."""
    (tmp_path / "userfactories.py").write_text(
        "def raises():\n    raise RuntimeError('CUDA out of memory (a user bug)')\n"
        "def not_a_module():\n    return 42\n"
        "def needs_args(width):\n    return None\n"
        "value = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userfactories"


PREP = '{"channels": "L", "resize": 16, "crop": [16, 16], "mean": [0.5], "std": [0.5]}'


@pytest.mark.parametrize("attr,fragment", [("raises", "out of memory"), ("not_a_module", "int"),
                                           ("needs_args", "width"), ("value", "value"),
                                           ("nosuch", "nosuch")])
def test_d8_model_factory_faults(cli, out, factory_module, attr, fragment):
    expect_error(cli("calibrate", f"{factory_module}:{attr}", "--data", "digits:calib", "--output", out / "c.oodcal",
                     "--preprocess", PREP), fragment)
    nothing_written(out)


def test_calibrate_refuses_to_overwrite(cli, out, energy_calibration_file):
    target = out / "c.oodcal"
    target.write_bytes(b"precious")
    expect_error(cli(*CAL, "--output", target), "exists")
    assert target.read_bytes() == b"precious" and files_in(out) == ["c.oodcal"]


def test_calibrate_into_a_missing_folder(cli, tmp_path):
    expect_error(cli(*CAL, "--output", tmp_path / "no" / "such" / "c.oodcal"), "does not exist")
    assert not (tmp_path / "no").exists()


def test_d8_param_true_stays_a_bool(cli, out):
    """`--param p=true` used to be stored as p=1 (a percentile of 1); a bool is not a number."""
    from oodgate.cli import _parse_params

    assert _parse_params(["flag=true", "p=90", "name=abc"]) == {"flag": True, "p": 90, "name": "abc"}
    assert _parse_params(["flag=true"])["flag"] is True
    expect_error(cli(*CAL, "--output", out / "c.oodcal", "--method", "react", "--param", "p=true"), "p=True")


# -- export -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", ["999", "17", "0", "-1", "26"])
def test_d8_export_opset_out_of_range_names_the_supported_range(cli, out, energy_calibration_file, opset):
    line = expect_error(cli("export", energy_calibration_file, "--output", out / "g.onnx", "--opset", opset),
                        "opset", "supported")
    assert "18" in line
    nothing_written(out)


def test_export_refuses_to_overwrite(cli, out, energy_calibration_file):
    target = out / "g.onnx"
    target.write_bytes(b"precious")
    expect_error(cli("export", energy_calibration_file, "--output", target), "exists")
    assert target.read_bytes() == b"precious" and files_in(out) == ["g.onnx"]


@pytest.mark.parametrize("what", ["missing", "a-folder", "a-graph"])
def test_export_of_something_that_is_no_calibration(cli, out, energy_graph, what):
    source = {"missing": out.parent / "nope.oodcal", "a-folder": out.parent, "a-graph": energy_graph}[what]
    expect_error(cli("export", source, "--output", out / "g.onnx"))
    nothing_written(out)


# -- run ----------------------------------------------------------------------------------------------------------


def _bad_inputs(kind, tmp_path):
    if kind == "missing-file":
        return tmp_path / "nope.png"
    if kind == "empty-folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    path = tmp_path / ("x.png" if kind != "zero-bytes-jpg" else "x.jpg")
    if kind == "text-as-png":
        path.write_text("hello, not an image")
    elif kind == "truncated-png":
        from PIL import Image

        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:30])
    elif kind == "zero-bytes-jpg":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["missing-file", "empty-folder", "text-as-png", "truncated-png", "zero-bytes-jpg"])
def test_run_bad_images(cli, energy_graph, tmp_path, kind):
    expect_error(cli("run", energy_graph, _bad_inputs(kind, tmp_path), "-p", "cpu"))


RUN_FAULTS = {
    "format-xml": (["--format", "xml"], "format"),
    "provider-unknown": (["--provider", "gpu9"], "gpu9"),
    "batch-size-0": (["--batch-size", "0"], "batch"),
    "batch-size-minus-1": (["--batch-size", "-1"], "batch"),
    "threshold-text": (["--threshold", "abc"], None),
}


@pytest.mark.parametrize("case", list(RUN_FAULTS))
def test_run_option_faults(cli, energy_graph, digit_pngs, case):
    args, fragment = RUN_FAULTS[case]
    result = cli("run", energy_graph, digit_pngs[0], *(["-p", "cpu"] if case != "provider-unknown" else []), *args)
    if fragment is None:  # typer's own usage error for a non-number: exit 2 without a traceback
        assert result.code == 2 and result.exception is None and "Traceback" not in result.err
        return
    expect_error(result, fragment)


@pytest.mark.parametrize("what", ["missing", "foreign", "text", "calibration"])
def test_run_on_something_that_is_no_oodgate_graph(cli, digit_pngs, foreign_graph, energy_calibration_file,
                                                  tmp_path, what):
    text = tmp_path / "g.onnx"
    text.write_text("not protobuf at all \x00\xff")
    graph = {"missing": tmp_path / "nope.onnx", "foreign": foreign_graph, "text": text,
             "calibration": energy_calibration_file}[what]
    expect_error(cli("run", graph, digit_pngs[0], "-p", "cpu"))


def test_run_output_refuses_to_overwrite(cli, energy_graph, digit_pngs, out):
    target = out / "r.jsonl"
    target.write_text("precious")
    expect_error(cli("run", energy_graph, digit_pngs[0], "-p", "cpu", "-o", target), "exists")
    assert target.read_text() == "precious"


# -- evaluate / parity / inspect ---------------------------------------------------------------------------------


EVALUATE_FAULTS = {
    "tpr-grid-text": (["--tpr-grid", "a,b"], "tpr-grid"),
    "batch-size-0": (["--batch-size", "0"], "batch"),
    "batch-size-minus-1": (["--batch-size", "-1"], "batch"),
    "ood-unknown": (["--ood", "x=nosuchset"], "nosuchset"),
    "id-missing-folder": (["--id", "no/such/folder"], "no such folder"),
}


@pytest.mark.parametrize("case", list(EVALUATE_FAULTS))
def test_evaluate_option_faults(cli, energy_graph, case):
    args, fragment = EVALUATE_FAULTS[case]
    base = {"--id": "digits:test", "--ood": "noise=ood:noise"}
    for i in range(0, len(args), 2):
        base.pop(args[i], None)
    flat = [x for kv in base.items() for x in kv]
    expect_error(cli("evaluate", energy_graph, *flat, *args, "-p", "cpu"), fragment)


PARITY_FAULTS = {
    "no-calibration": (["--data", "digits:test"], "calibration"),
    "no-data": (["--calibration", "{cal}"], "data"),
    "golden-missing": (["--golden", "no-such.npz"], "golden"),
    "limit-0": (["--calibration", "{cal}", "--data", "digits:test", "--limit", "0"], "limit"),
    "limit-minus-1": (["--calibration", "{cal}", "--data", "digits:test", "--limit", "-1"], "limit"),
    "atol-negative": (["--calibration", "{cal}", "--data", "digits:test", "--atol", "-1"], "atol"),
    "atol-nan": (["--calibration", "{cal}", "--data", "digits:test", "--atol", "nan"], "atol"),
    "provider-unknown": (["--calibration", "{cal}", "--data", "digits:test", "-p", "gpu9"], "gpu9"),
}


@pytest.mark.parametrize("case", list(PARITY_FAULTS))
def test_parity_option_faults(cli, energy_graph, energy_calibration_file, case):
    args, fragment = PARITY_FAULTS[case]
    args = [str(energy_calibration_file) if a == "{cal}" else a for a in args]
    expect_error(cli("parity", energy_graph, *args), fragment)


def test_parity_golden_of_another_graph(cli, energy_graph, digits_graph, energy_calibration_file, out):
    golden = out / "g.npz"
    assert cli("parity", energy_graph, "--calibration", energy_calibration_file, "--data", "digits:test", "--limit",
               8, "--save-golden", golden).code == 0
    expect_error(cli("parity", digits_graph("msp"), "--golden", golden), "golden")


@pytest.mark.parametrize("what", ["missing", "text"])
def test_inspect_faults(cli, tmp_path, what):
    path = tmp_path / "g.onnx"
    if what == "text":
        path.write_text("{}")
    expect_error(cli("inspect", path))
