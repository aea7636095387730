"""The evaluation report: files, numbers equal to oodgate.metrics, PNGs of the promised size, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from oodgate import metrics
from oodgate.errors import OodgateError
from oodgate.evaluation.evaluate import Evaluation, SetScores
from oodgate.evaluation.report import (PLOT_DPI, PLOT_PIXELS, PLOT_SIZE, threshold_at_tpr, threshold_options, write_report)

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")


def make_evaluation(method: str = "energy", seed: int = 0) -> Evaluation:
    """Scores with ties and overlap: ID ~ N(2, 1) rounded to 0.05, two OOD sets, labels for accuracy."""
    rng = np.random.default_rng(seed)
    ids = np.round(rng.normal(2, 1, 400) / 0.05) * 0.05
    tau = threshold_at_tpr(ids, 0.95)
    labels = rng.integers(0, 10, 400)
    predicted = np.where(rng.random(400) < 0.8, labels, (labels + 1) % 10)
    oods = {"textures": np.round(rng.normal(0.5, 1, 150) / 0.05) * 0.05, "noise": rng.normal(-4, 0.5, 90)}
    return Evaluation(method, tau, SetScores("fashion-mnist:test", ids.astype(np.float32), ids < tau, labels,
                                            predicted),
                      [SetScores(k, v.astype(np.float32), v < tau) for k, v in oods.items()])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    ev = make_evaluation()
    folder = tmp_path_factory.mktemp("report")
    return ev, write_report(ev, folder, tprs=(0.9, 0.95, 0.99), thresholds=(1.0,))


def test_report_files_exist(report) -> None:
    _, rep = report
    names = sorted(p.name for p in rep.folder.iterdir())
    assert names == sorted(["metrics.md", "metrics.json", "index.html", "roc.png", "tradeoff.png",
                            "hist_textures.png", "hist_noise.png"])
    assert all(p.stat().st_size > 0 for p in rep.files)
    assert not list(rep.folder.glob(".*")), "no temporary files left behind"


def test_json_numbers_equal_metrics(report) -> None:
    ev, rep = report
    data = json.loads((rep.folder / "metrics.json").read_text())
    (m,) = data["methods"]
    assert m["method"] == "energy" and m["threshold"] == ev.threshold
    assert m["id_accuracy"] == metrics.accuracy(ev.id_set.predicted, ev.id_set.labels)
    assert m["id_rejected_at_tau"] == metrics.rejected_share(ev.id_set.scores, ev.threshold)
    assert m["id_images"] == 400 and m["ood_images"] == {"textures": 150, "noise": 90}
    for o in ev.ood_sets:
        expected = metrics.ood_metrics(ev.id_set.scores, o.scores)
        got = m["ood"][o.name]
        for key, value in expected.items():
            assert got[key] == value, (o.name, key)
        assert got["accepted_ood_at_tau"] == np.mean(np.asarray(o.scores, np.float64) >= ev.threshold)
    for key in ("auroc", "fpr95_id_positive", "fpr95_ood_positive", "aupr_in", "aupr_out"):
        assert m["ood"]["mean"][key] == pytest.approx(np.mean([m["ood"][o.name][key] for o in ev.ood_sets]))


def _md_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first_cell} |")]


def test_markdown_numbers_equal_metrics(report) -> None:
    ev, rep = report
    md = (rep.folder / "metrics.md").read_text()
    for o in ev.ood_sets:
        (row,) = _md_rows(md, o.name)
        m = metrics.ood_metrics(ev.id_set.scores, o.scores)
        expected = [m["auroc"], m["fpr95_id_positive"], m["fpr95_ood_positive"], m["aupr_in"], m["aupr_out"],
                    np.mean(np.asarray(o.scores, np.float64) >= ev.threshold)]
        assert row[1] == str(len(o.scores))
        assert [float(c) for c in row[2:]] == [round(100 * x, 2) for x in expected]
    (summary,) = _md_rows(md, "energy")
    assert float(summary[1]) == round(100 * metrics.accuracy(ev.id_set.predicted, ev.id_set.labels), 1)
    assert f"τ = {ev.threshold:.6g}" in md
    for png in ("roc.png", "tradeoff.png", "hist_textures.png", "hist_noise.png"):
        assert f"]({png})" in md


def test_what_if_equals_direct_computation(report) -> None:
    ev, rep = report
    ids = np.asarray(ev.id_set.scores, np.float64)
    opts = rep.options["energy"]
    assert [o.threshold for o in opts] == sorted(o.threshold for o in opts)
    assert {o.label for o in opts} == {"calibrated", "ID TPR 90 %", "ID TPR 95 %", "ID TPR 99 %", "given"}
    for o in opts:
        assert o.id_rejected == np.mean(ids < o.threshold)
        for s in ev.ood_sets:
            assert o.ood_accepted[s.name] == np.mean(np.asarray(s.scores, np.float64) >= o.threshold)
        assert o.ood_accepted["mean"] == pytest.approx(np.mean([o.ood_accepted[s.name] for s in ev.ood_sets]))
        if o.tpr is not None:  # the threshold keeps at least the asked share of ID, as calibrate's does
            assert 1 - o.id_rejected >= o.tpr - 1e-12
    given = next(o for o in opts if o.label == "given")
    assert given.threshold == 1.0
    data = json.loads((rep.folder / "metrics.json").read_text())
    assert data["methods"][0]["threshold_options"] == [o.to_dict() for o in opts]
    md = (rep.folder / "metrics.md").read_text()
    row = next(r for r in _md_rows(md, f"{given.threshold:.6g}"))
    assert row[1] == "given" and float(row[2]) == round(100 * given.id_rejected, 2)


def test_threshold_at_tpr_matches_calibration_rule() -> None:
    pytest.importorskip("torch")
    from oodgate.detectors.threshold import fit_threshold

    rng = np.random.default_rng(3)
    for scores in (rng.normal(size=101), np.repeat([0.0, 1.0, 2.0], [10, 30, 60]), rng.normal(size=7)):
        for tpr in (0.5, 0.9, 0.95, 0.99, 1.0):
            assert threshold_at_tpr(scores, tpr) == fit_threshold(scores, tpr)
    with pytest.raises(OodgateError, match="target TPR"):
        threshold_at_tpr(scores, 1.5)


def test_pngs_are_nonempty_images_of_the_expected_size(report) -> None:
    _, rep = report
    assert PLOT_PIXELS == (round(PLOT_SIZE[0] * PLOT_DPI), round(PLOT_SIZE[1] * PLOT_DPI)) == (640, 400)
    pngs = sorted(rep.folder.glob("*.png"))
    assert len(pngs) == 4
    for path in pngs:
        with PIL.open(path) as im:
            assert im.format == "PNG"
            assert im.size == PLOT_PIXELS, path.name
            pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert pixels.std() > 0, f"{path.name} is blank"
        # drawn content, not a few stray pixels: at least 2 % of pixels differ from the white background
        assert np.mean(np.any(pixels < 250, axis=-1)) > 0.02, path.name


def test_html_links_every_plot(report) -> None:
    _, rep = report
    page = (rep.folder / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(srcs) == sorted(p.name for p in rep.folder.glob("*.png"))
    assert "<table>" in page and "What another τ would do" in page


def test_no_overwrite_without_asking(report, tmp_path: Path) -> None:
    ev, rep = report
    before = (rep.folder / "metrics.md").read_bytes()
    with pytest.raises(OodgateError, match="already holds"):
        write_report(ev, rep.folder)
    assert (rep.folder / "metrics.md").read_bytes() == before
    again = write_report(ev, tmp_path, plots=False, html_page=False)
    assert sorted(p.name for p in again.files) == ["metrics.json", "metrics.md"]
    write_report(ev, tmp_path, plots=False, html_page=False, overwrite=True)


def test_several_methods_prefix_their_plots(tmp_path: Path) -> None:
    evs = [make_evaluation("energy"), make_evaluation("msp", seed=1)]
    rep = write_report(evs, tmp_path)
    assert {"energy_roc.png", "msp_roc.png", "energy_hist_noise.png", "msp_tradeoff.png"} <= {
        p.name for p in rep.files}
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["energy", "msp"]
    with pytest.raises(OodgateError, match="methods repeat"):
        write_report([evs[0], evs[0]], tmp_path / "x")


def test_report_needs_no_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from oodgate.evaluation.evaluate import Evaluation, SetScores\n"
            "from oodgate.evaluation.report import write_report\n"
            "s = np.linspace(0, 1, 50, dtype=np.float32)\n"
            "ev = Evaluation('msp', 0.1, SetScores('id', s, s < 0.1), [SetScores('o', s - 0.5, s < 0.6)])\n"
            f"write_report(ev, {str(tmp_path)!r}, plots=False)\n"
            "assert 'torch' not in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the CLI on a real graph ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import oodgate
    from oodgate.data.sets import digits

    cal = oodgate.calibrate("digits-cnn", digits("calib"), method="energy", progress=False)
    path = tmp_path_factory.mktemp("graph") / "digits-energy.onnx"
    oodgate.export(cal, path)
    return path


def test_cli_evaluate_writes_a_report(digits_graph: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from oodgate.cli import app
    from oodgate.data.sets import digits, ood_set
    from oodgate.runtime import Session

    out = tmp_path / "rep"
    args = ["evaluate", str(digits_graph), "--id", "digits:test", "--ood", "noise=ood:noise",
            "--ood", "textures=ood:textures",
            "--report", str(out), "--tpr-grid", "0.9,0.99", "--tau", "0.5", "--provider", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "what other thresholds would do" in res.output and "| given |" in res.output
    assert {p.name for p in out.iterdir()} == {"metrics.md", "metrics.json", "index.html", "roc.png",
                                               "tradeoff.png", "hist_noise.png", "hist_textures.png"}
    # the report's numbers are oodgate.metrics on the graph's scores of the same images
    with Session(digits_graph, providers="cpu") as sess:
        id_scores = sess.run(digits("test").images).scores
        noise_scores = sess.run(ood_set("noise").images).scores
    (m,) = json.loads((out / "metrics.json").read_text())["methods"]
    assert m["ood"]["noise"]["auroc"] == metrics.auroc(id_scores, noise_scores)
    assert m["ood"]["noise"]["fpr95_id_positive"] == metrics.fpr_at_tpr(id_scores, noise_scores)
    assert [o["label"] for o in m["threshold_options"]].count("ID TPR 99 %") == 1
    for png in out.glob("*.png"):
        with PIL.open(png) as im:
            assert im.size == PLOT_PIXELS
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "already holds a report" in str(again.exception)


def test_evaluate_options_are_checked(digits_graph: Path) -> None:
    from typer.testing import CliRunner

    from oodgate.cli import app

    res = CliRunner().invoke(app, ["evaluate", str(digits_graph), "--id", "digits:test", "--ood", "noise",
                                   "--tpr-grid", "0.9,high"])
    assert res.exit_code != 0 and "--tpr-grid" in str(res.exception)


def test_threshold_options_without_tprs() -> None:
    ev = make_evaluation()
    (only,) = threshold_options(ev, tprs=())
    assert only.label == "calibrated" and only.threshold == ev.threshold
