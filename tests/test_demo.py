"""The demo: README's table is what `oodgate demo` prints (one row recomputed here through the CLI, the others are
the same code on the same deterministic data), it says what it skipped, and the gate it shows works."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oodgate import demo
from oodgate.cli import app
from oodgate.errors import OodgateError

ROOT = Path(__file__).resolve().parents[1]
#: the row the test recomputes: a seed method, single-pass (AdaSCALE's gradient branch would cost minutes)
CHECKED_ROW = "line"


def readme_demo_table() -> dict[str, str]:
    """README's demo summary table (the first table under '## Results you can reproduce'), rows by method."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Results you can reproduce\n"):]
    table = re.search(r"\n(\| method \| ID acc \| ID kept at τ \|.*?)\n\n", section, flags=re.S)
    assert table, "README's demo table is missing"
    rows = [line for line in table.group(1).splitlines()[2:]]
    return {row.split("|")[1].strip(): row for row in rows}


def test_readme_table_lists_every_demo_row_and_the_command():
    text = (ROOT / "README.md").read_text()
    assert list(readme_demo_table()) == [label for label, _, _ in demo.DEMO_METHODS]
    assert "oodgate demo --report docs/DEMO.md" in text and "docs/DIGITS.md" not in text
    assert "Produced by `oodgate demo --report docs/DEMO.md`" in (ROOT / "docs/DEMO.md").read_text()


def test_readme_table_shows_a_gate_that_works():
    """The seed methods keep ~95 % of ID and reject most OOD (numbers from README, checked against the demo below)."""
    rows = readme_demo_table()
    cells = {m: [float(c) for c in row.split("|")[2:-1]] for m, row in rows.items()}
    for method in ("dice_p90", "line", "mos_g2", "adascale_a"):
        acc, kept, auroc, fpr, rejected = cells[method]
        assert kept >= 93.0 and rejected >= 50.0 and auroc >= 85.0, (method, cells[method])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    runner = CliRunner(env={"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"})
    report = folder / "report.md"
    result = runner.invoke(app, ["demo", "--out", str(folder / "out"), "--method", CHECKED_ROW, "--report",
                                 str(report)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout, report.read_text(), folder


def test_demo_row_equals_readme(demo_run):
    out, report, _ = demo_run
    printed = [line for line in out.splitlines() if line.startswith(f"| {CHECKED_ROW} | ")
               and line.count("|") == 7]
    assert printed and printed[-1] == readme_demo_table()[CHECKED_ROW]


def test_demo_report_names_its_real_command_and_passes_parity(demo_run):
    out, report, folder = demo_run
    assert f"Produced by `oodgate demo --method {CHECKED_ROW} --report {folder / 'report.md'}`" in report
    assert "Parity ONNX Runtime vs PyTorch (atol 1e-4, rtol 1e-4 unless given;" in report
    assert f"- {CHECKED_ROW}: PASS (max |score diff|" in report and "): PASS" in report
    assert (folder / "out" / f"{CHECKED_ROW}.onnx").is_file()
    assert "Skipped" not in report  # the set-up installs every OOD set


def test_demo_says_which_sets_it_skipped_and_why(monkeypatch):
    monkeypatch.setattr(demo, "available_ood_sets", lambda: ["textures", "noise"])
    monkeypatch.setattr(demo, "ood_set", lambda name, **kw: name)
    sets, skipped = demo.demo_ood_sets()
    assert list(sets) == ["textures", "noise"]
    assert skipped == {"digits": "scikit-learn is not installed (pip install 'oodgate[data]')",
                       "photos": "scikit-image is not installed (pip install 'oodgate[data]')",
                       "faces": "scikit-image is not installed (pip install 'oodgate[data]')",
                       "sklearn-photos": "scikit-learn is not installed (pip install 'oodgate[data]')"}
    text = demo.demo_report(demo.DemoResult(skipped=skipped))
    assert "Skipped OOD sets (the means are over the others): digits: scikit-learn is not installed" in text


def test_demo_without_fashion_mnist_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(demo, "fashion_mnist_available", lambda: False)
    with pytest.raises(OodgateError) as err:
        demo.demo_data()
    assert "\n" not in str(err.value) and "apt-get install -y dataset-fashion-mnist" in str(err.value)


def test_unknown_demo_row_is_an_error():
    with pytest.raises(OodgateError, match="demo method 'dice90'.*dice_p90"):
        demo.demo_methods(["dice90"])
    assert demo.demo_methods(["scale"]) == [("scale", "scale", {})]
