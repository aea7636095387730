"""The command line: every command's help, outputs in every format, the calibrate -> export -> run chain,
parity reports and golden files, the demo, and errors as exit code 2 with one 'error: ...' line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from oodgate.cli import app

COMMAND_OPTIONS = {
    "calibrate": ["--data", "--output", "--method", "--param", "--holdout", "--tpr", "--seed", "--weights", "--head",
                  "--preprocess", "--batch-size", "--force"],
    "export": ["--output", "--opset", "--check", "--triton-repo", "--triton-name", "--max-batch-size", "--accelerator",
               "--force"],
    "run": ["--provider", "--threshold", "--format", "--output", "--batch-size", "--force"],
    "evaluate": ["--id", "--ood", "--provider", "--json", "--batch-size", "--force"],
    "parity": ["--data", "--calibration", "--provider", "--limit", "--atol", "--rtol", "--margin", "--json", "--junit",
               "--save-golden", "--golden", "--force"],
    "inspect": ["--json"],
    "methods": [],
    "demo": ["--out", "--method", "--report", "--force"],
    # -- serving at scale (issue 18) --
    "triton-repo": ["--repo", "--name", "--max-batch-size", "--preferred-batch-size", "--max-queue-delay-us",
                    "--instance-kind", "--instances", "--accelerator", "--trt-cache-dir", "--force"],
    "triton-check": ["--graph"],
    "extract-features": ["--data", "--output", "--shard-size", "--batch-size", "--ray", "--cpus-per-task", "--force"],
    "fit-shards": ["--output", "--method", "--param", "--holdout", "--tpr", "--seed", "--force"],
}
SINGLE_PASS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line")


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"})


def invoke(runner: CliRunner, *args: object, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args])
    if code == 0 and result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == code, result.output
    return result


# -- help ----------------------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command(runner):
    out = invoke(runner, "--help").stdout
    for command in COMMAND_OPTIONS:
        assert command in out


@pytest.mark.parametrize("command", list(COMMAND_OPTIONS))
def test_command_help_mentions_its_options(runner, command):
    out = invoke(runner, command, "--help").stdout
    assert f"oodgate {command}" in out
    for option in COMMAND_OPTIONS[command]:
        assert option in out, f"{command} --help does not mention {option}"


def test_methods_lists_the_single_pass_detectors(runner):
    lines = invoke(runner, "methods").stdout.splitlines()
    names = {line.split()[0] for line in lines if line.strip()}
    assert set(SINGLE_PASS) <= names


# -- run -----------------------------------------------------------------------------------------------------


def test_run_formats(runner, energy_graph, digit_pngs):
    from oodgate.runtime import Session

    with Session(energy_graph, providers="cpu") as sess:
        pred = sess.run([str(p) for p in digit_pngs])
    folder = digit_pngs[0].parent

    records = [json.loads(line) for line in invoke(runner, "run", energy_graph, folder, "--format", "jsonl",
                                                   "-p", "cpu").stdout.splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in digit_pngs]  # a folder expands to its sorted images
    np.testing.assert_allclose([r["score"] for r in records], pred.scores, rtol=0, atol=0)
    assert [r["is_ood"] for r in records] == pred.is_ood.tolist()
    assert [r["class"] for r in records] == [p.stem.split("label")[1] for p in digit_pngs]

    rows = list(csv.DictReader(io.StringIO(invoke(runner, "run", energy_graph, *digit_pngs[:3], "--format", "csv")
                                           .stdout)))
    assert list(rows[0]) == ["input", "label", "class", "score", "is_ood"] and len(rows) == 3
    assert [float(r["score"]) for r in rows] == pytest.approx(pred.scores[:3].tolist(), rel=1e-6)
    assert [r["is_ood"] for r in rows] == [str(b) for b in pred.is_ood[:3]]

    table = invoke(runner, "run", energy_graph, digit_pngs[0], digit_pngs[1]).stdout.splitlines()
    assert table[0].split()[:3] == ["input", "class", "score"] and "tau=" in table[0] and len(table) == 3
    assert table[1].split()[-1] in ("ID", "OOD") and float(table[1].split()[-2]) == pytest.approx(
        pred.scores[0], abs=1e-4)

    # --threshold overrides the graph's: above every score rejects every image
    high = invoke(runner, "run", energy_graph, folder, "--format", "jsonl", "--threshold",
                  float(pred.scores.max()) + 1).stdout.splitlines()
    assert all(json.loads(line)["is_ood"] for line in high)


def test_run_writes_output_file_only_with_force(runner, energy_graph, digit_pngs, tmp_path, cli_error):
    from oodgate import OodgateError

    out = tmp_path / "scores.jsonl"
    invoke(runner, "run", energy_graph, digit_pngs[0], "--format", "jsonl", "-o", out)
    first = out.read_text()
    assert json.loads(first)["input"] == str(digit_pngs[0])
    result = invoke(runner, "run", energy_graph, digit_pngs[1], "--format", "jsonl", "-o", out, code=1)
    assert isinstance(result.exception, OodgateError) and "--force" in str(result.exception)
    assert out.read_text() == first
    line = cli_error("run", energy_graph, digit_pngs[1], "-o", out)
    assert str(out) in line and "exists" in line
    invoke(runner, "run", energy_graph, digit_pngs[1], "--format", "jsonl", "-o", out, "--force")
    assert json.loads(out.read_text())["input"] == str(digit_pngs[1])


# -- inspect, evaluate ---------------------------------------------------------------------------------------


def test_inspect(runner, energy_graph, digits_calibration):
    cal = digits_calibration("energy")
    text = invoke(runner, "inspect", energy_graph).stdout
    assert "method     energy" in text and f"threshold  {cal.threshold:.6g}" in text
    assert "ops        " in text and "input float32" in text and "is_ood bool" in text
    desc = json.loads(invoke(runner, "inspect", energy_graph, "--json").stdout)
    assert desc["method"] == "energy" and desc["threshold"] == cal.threshold and desc["ops"]
    assert desc["calibration_hash"] == cal.checksum()


def test_evaluate_prints_auroc_table(runner, energy_graph, tmp_path):
    out = invoke(runner, "evaluate", energy_graph, "--id", "digits:test", "--ood", "noise=ood:noise",
                 "--ood", "ood:textures", "-p", "cpu", "--json", tmp_path / "m.json").stdout
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| method | ID acc | noise AUROC | noise FPR95 | textures AUROC")
    row = [c.strip() for c in table[2].strip("|").split("|")]
    assert "threshold" in out and "ID rejected" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["method"] == "energy" and set(metrics["ood"]) == {"noise", "textures", "mean"}
    # the numbers: scikit-learn on the graph's own scores of the same images
    from sklearn.metrics import roc_auc_score

    from oodgate.data import digits, ood_set
    from oodgate.runtime import Session

    with Session(energy_graph, "cpu") as sess:
        id_run = sess.run(digits("test").images)
        ood = {name: sess.run(ood_set(name).images).scores for name in ("noise", "textures")}
    assert metrics["id_accuracy"] == pytest.approx(np.mean(id_run.labels == digits("test").labels))
    assert metrics["id_accuracy"] > 0.95
    aurocs = []
    for name, scores in ood.items():
        y = np.r_[np.ones(len(id_run.scores)), np.zeros(len(scores))]
        aurocs.append(roc_auc_score(y, np.r_[id_run.scores, scores]))
        assert metrics["ood"][name]["auroc"] == pytest.approx(aurocs[-1], abs=1e-12), name
        assert metrics["ood"][name]["accepted_ood_at_tau"] == pytest.approx(np.mean(scores >= sess.threshold))
    assert metrics["ood"]["mean"]["auroc"] == pytest.approx(np.mean(aurocs))
    assert row[0] == "energy" and row[1] == f"{100 * metrics['id_accuracy']:.1f}"
    assert row[2] == f"{100 * aurocs[0]:.2f}" and row[4] == f"{100 * aurocs[1]:.2f}"


# -- calibrate -> export -> run --------------------------------------------------------------------------------


def test_calibrate_export_run_chain(runner, tmp_path, digit_pngs, cli_error):
    from oodgate.calibration import load_calibration
    from oodgate.runtime import read_graph_info

    cal_path, graph = tmp_path / "line.oodcal", tmp_path / "line.onnx"
    out = invoke(runner, "calibrate", "digits-cnn", "--data", "digits:calib", "-o", cal_path, "-m", "line",
                 "--param", "p_w=20", "--param", "clip=p95", "--tpr", "0.9").stdout
    assert f"wrote {cal_path}" in out and "line(" in out
    cal = load_calibration(cal_path)
    assert cal.method == "line" and cal.params["p_w"] == 20 and cal.params["clip"] == "p95" and cal.tpr == 0.9
    assert "exists" in cli_error("calibrate", "digits-cnn", "--data", "digits:calib", "-o",
                                 cal_path)

    out = invoke(runner, "export", cal_path, "-o", graph).stdout
    assert out.startswith(f"exported line to {graph}") and "max |score diff|" in out
    info = read_graph_info(graph)
    assert info.calibration_hash == cal.checksum() and info.threshold == cal.threshold
    assert "exists" in cli_error("export", cal_path, "-o", graph)

    records = [json.loads(line) for line in invoke(runner, "run", graph, *digit_pngs, "--format", "jsonl")
               .stdout.splitlines()]
    assert len(records) == len(digit_pngs)
    assert sum(r["class"] == p.stem.split("label")[1] for r, p in zip(records, digit_pngs)) >= 9


# -- parity ------------------------------------------------------------------------------------------------


def test_parity_reports_and_golden(runner, energy_graph, energy_calibration_file, tmp_path, cli_error):
    js, junit, golden = tmp_path / "p.json", tmp_path / "p.xml", tmp_path / "golden.npz"
    out = invoke(runner, "parity", energy_graph, "--calibration", energy_calibration_file, "--data", "digits:test",
                 "--limit", 24, "--json", js, "--junit", junit, "--save-golden", golden).stdout
    assert out.splitlines()[-1] == "PASS" and f"wrote {golden}" in out and "on 24 inputs" in out
    report = json.loads(js.read_text())
    assert report["passed"] is True and report["n_inputs"] == 24 and report["runtimes"][0]["runtime"] == "ort-cpu"
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "0" and int(suite.get("tests")) == 2
    assert {c.get("name") for c in suite.iter("testcase")} == {"logits", "score"}

    # the golden file replaces the calibration (no PyTorch needed)
    out = invoke(runner, "parity", energy_graph, "--golden", golden, "--json", tmp_path / "g.json").stdout
    assert out.splitlines()[-1] == "PASS" and "golden golden.npz" in out
    assert json.loads((tmp_path / "g.json").read_text())["reference"] == "golden golden.npz"

    assert "exists" in cli_error("parity", energy_graph, "--calibration",
                                 energy_calibration_file, "--data", "digits:test", "--limit", 4, "--save-golden",
                                 golden)
    assert "--calibration and --data" in cli_error("parity", energy_graph)


def test_parity_exit_1_on_perturbed_graph(runner, perturbed_energy_graph, energy_calibration_file, tmp_path):
    js, junit = tmp_path / "p.json", tmp_path / "p.xml"
    result = invoke(runner, "parity", perturbed_energy_graph, "--calibration", energy_calibration_file, "--data",
                    "digits:test", "--limit", 16, "--json", js, "--junit", junit, code=1)
    assert result.stdout.splitlines()[-1] == "FAIL" and "score   max|diff| 0.01" in result.stdout
    assert json.loads(js.read_text())["passed"] is False
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "1"
    (failed,) = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    # judged against float64: the score is further from it than PyTorch float32's own noise floor allows
    assert failed.get("name") == "score" and "to float64" in failed.find("failure").get("message")


def test_parity_refuses_another_calibration(runner, digits_calibration, energy_graph, tmp_path, cli_error):
    other = digits_calibration("line").save(tmp_path / "line.oodcal")
    line = cli_error("parity", energy_graph, "--calibration", other, "--data", "digits:test",
                     "--limit", 4)
    assert "exported from another calibration" in line


def test_parity_report_files_are_not_overwritten_without_force(runner, energy_graph, energy_calibration_file,
                                                               tmp_path):
    js = tmp_path / "p.json"
    js.write_text("keep me")
    invoke(runner, "parity", energy_graph, "--calibration", energy_calibration_file, "--data", "digits:test",
           "--limit", 4, "--json", js, code=1)
    assert js.read_text() == "keep me"


# -- errors: exit code 2 and one line -----------------------------------------------------------------------


def test_errors_are_one_line_with_exit_code_2(runner, energy_graph, foreign_graph, tmp_path, cli_error):
    import onnxruntime

    from oodgate import ArtifactError

    result = invoke(runner, "inspect", foreign_graph, code=1)
    assert isinstance(result.exception, ArtifactError)
    assert "not made by oodgate" in cli_error("inspect", foreign_graph)
    assert "no such graph file" in cli_error("run", tmp_path / "missing.onnx", foreign_graph)
    assert "no such image file or folder" in cli_error("run", energy_graph,
                                                       tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    assert "not an image or corrupt" in cli_error("run", energy_graph, bad)
    assert "--format 'xml'" in cli_error("run", energy_graph, bad, "--format", "xml")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "provider 'cuda' needs" in cli_error("run", energy_graph, tmp_path, "-p", "cuda")
    assert "no such calibration file" in cli_error("export", tmp_path / "missing.oodcal", "-o",
                                                   tmp_path / "x.onnx")
    assert "unknown detector" in cli_error("calibrate", "digits-cnn", "--data", "digits:calib",
                                           "-o", tmp_path / "x.oodcal", "-m", "nonsense")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.oodcal").exists()


def test_console_entry_point_in_a_subprocess(energy_graph, foreign_graph):
    ok = subprocess.run([sys.executable, "-m", "oodgate.cli", "inspect", str(energy_graph), "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["method"] == "energy"
    bad = subprocess.run([sys.executable, "-m", "oodgate.cli", "inspect", str(foreign_graph)], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


# -- demo ----------------------------------------------------------------------------------------------------


# (the demo's tests: tests/test_demo.py)
