"""README's "Python" and "Command line" blocks, executed as written in an empty folder, and the figures README quotes
for them checked against what the commands produced (and against scikit-learn)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(title), flags=re.S)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "CI": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_python_block_runs_as_written(tmp_path):
    (code,) = blocks("Python", "python")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    from oodgate.data import digits
    from oodgate.runtime import Session

    with Session(tmp_path / "digits-line.onnx", "cpu") as sess:  # what the block printed is the graph's answer
        pred = sess.run(digits("test").images[:5])
    printed = out.stdout
    assert str(pred.labels) in printed
    assert (pred.labels == digits("test").labels[:5]).mean() >= 0.8


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory) -> tuple[Path, list[subprocess.CompletedProcess]]:
    from PIL import Image

    from oodgate.data import digits, ood_set

    folder = tmp_path_factory.mktemp("readme_cli")
    (folder / "images").mkdir()
    d, t = digits("test"), ood_set("textures", n=2, seed=0)
    for i in range(3):
        Image.fromarray(d.images[i]).save(folder / "images" / f"digit{i}.png")
    for i in range(2):
        Image.fromarray(np.asarray(t.images[i])).save(folder / "images" / f"texture{i}.png")
    (code,) = blocks("Command line", "bash")
    runs = []
    for line in (ln for ln in code.splitlines() if ln.strip()):
        cmd = line.split("#")[0].strip()
        runs.append(subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=folder, env=env(),
                                   capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL))
        assert runs[-1].returncode == 0, f"{cmd}\n{runs[-1].stdout}\n{runs[-1].stderr}"
    return folder, runs


def test_cli_block_runs_as_written(cli_folder):
    folder, runs = cli_folder
    assert len(runs) == 6
    records = [json.loads(x) for x in runs[2].stdout.splitlines()]
    assert [Path(r["input"]).name for r in records] == [f"digit{i}.png" for i in range(3)] + \
        [f"texture{i}.png" for i in range(2)]
    assert all(r["is_ood"] == (r["score"] < json.loads((folder / "metrics.json").read_text())["threshold"])
               for r in records)
    assert json.loads((folder / "parity.json").read_text())["passed"] is True
    assert "PASS" in runs[4].stdout
    assert "method     line" in runs[5].stdout


def test_cli_block_figures_quoted_in_readme(cli_folder):
    folder, _ = cli_folder
    from sklearn.metrics import roc_auc_score

    from oodgate.data import load_image_set
    from oodgate.runtime import Session

    metrics = json.loads((folder / "metrics.json").read_text())
    with Session(folder / "line.onnx", "cpu") as sess:
        id_scores = sess.run(load_image_set("digits:test").images).scores
        for name in ("textures", "noise"):
            ood_scores = sess.run(load_image_set(f"ood:{name}").images).scores
            y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
            assert metrics["ood"][name]["auroc"] == pytest.approx(roc_auc_score(y, np.r_[id_scores, ood_scores]))
    mean = metrics["ood"]["mean"]
    text = section("Command line")
    assert f"mean AUROC {100 * mean['auroc']:.2f} %" in text
    assert f"mean FPR95 {100 * mean['fpr95_id_positive']:.2f} %" in text
