"""README's "Your own model" walkthrough, executed as written in an empty folder, then its outputs checked."""

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


def own_model_blocks() -> list[str]:
    """The ```bash blocks of README's '## Your own model' section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Your own model\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else None]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("own_model")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    blocks = own_model_blocks()
    assert len(blocks) == 4
    for block in blocks:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=folder, env=env, capture_output=True,
                             text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"README block failed:\n{block}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
        (folder / "log.txt").open("a").write(out.stdout + out.stderr)
    return folder


def test_the_walkthrough_runs_and_its_outputs_agree(walkthrough):
    from oodgate.runtime.session import Session
    from sklearn.metrics import roc_auc_score

    folder = walkthrough
    for name in ("mynet.oodcal", "mynet.onnx", "decisions.jsonl", "metrics.json"):
        assert (folder / name).is_file(), name
    decisions = [json.loads(line) for line in (folder / "decisions.jsonl").read_text().splitlines()]
    trousers = sorted((folder / "images/test/Trouser").glob("*.png"))
    inputs = trousers + sorted((folder / "images/textures").glob("*.png"))
    assert [(folder / d["input"]).resolve() for d in decisions] == [p.resolve() for p in inputs]
    with Session(folder / "mynet.onnx", providers="cpu") as sess:
        pred = sess.run([str(p) for p in inputs])
        assert sess.info.preprocess.to_dict()["resize"] == [28, 28] and sess.input_shape == (1, 28, 28)
        test_files = sorted((folder / "images/test").rglob("*.png"))
        id_scores = sess.run([str(p) for p in test_files]).scores
        ood_scores = {name: sess.run([str(p) for p in sorted((folder / "images" / name).glob("*.png"))]).scores
                      for name in ("digits", "textures")}
    np.testing.assert_array_equal([d["score"] for d in decisions], pred.scores.astype(np.float64))
    assert [d["is_ood"] for d in decisions] == pred.is_ood.tolist()
    # the checkpoint was loaded: trousers (class 9 of the sorted folder names) are recognised
    assert np.mean(pred.labels[:len(trousers)] == 9) > 0.8
    report = json.loads((folder / "metrics.json").read_text())
    for name, scores in ood_scores.items():
        want = roc_auc_score(np.r_[np.ones(len(id_scores)), np.zeros(len(scores))], np.r_[id_scores, scores])
        assert report["ood"][name]["auroc"] == pytest.approx(want, abs=1e-12)
    assert report["id_accuracy"] > 0.6
    assert "PASS" in (folder / "log.txt").read_text()
