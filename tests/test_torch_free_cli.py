"""The serving and checking commands work with torch not importable (README: golden files, `oodgate run`, ... need
no PyTorch): each command runs in a subprocess whose import system refuses torch and onnxscript, on a graph and a
golden file made here, and must print the same numbers as the library computes with torch present."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: a finder that makes `import torch` / `import onnxscript` fail as on an install without them
BLOCK = textwrap.dedent("""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "onnxscript", "torchvision", "timm"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, _NoTorch())
    import atexit

    def _check():
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxscript"))
        if leaked:
            print("LEAKED", leaked, file=sys.stderr)
            sys.stderr.flush()
            import os
            os._exit(3)

    atexit.register(_check)
    from oodgate.cli import main
    sys.argv = ["oodgate", *sys.argv[1:]]
    main()
""")


def oodgate_without_torch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "CI": "true"}
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, timeout=300,
                          env=env, stdin=subprocess.DEVNULL)


def test_the_block_really_blocks_torch():
    proc = subprocess.run([sys.executable, "-c", BLOCK.split("import atexit")[0] + "import torch"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "blocked by the test" in proc.stderr


@pytest.fixture(scope="module")
def golden(energy_graph, digits_calibration, digits_test, tmp_path_factory) -> Path:
    from oodgate.evaluation.parity import save_golden
    from oodgate.exporter.reference import reference_outputs

    cal = digits_calibration("energy")
    inputs = cal.preprocess(digits_test.images[:40])
    path = tmp_path_factory.mktemp("golden") / "energy.npz"
    save_golden(path, inputs, reference_outputs(cal, inputs), graph_hash=cal.checksum())
    return path


def test_parity_against_a_golden_file(energy_graph, golden):
    proc = oodgate_without_torch("parity", str(energy_graph), "--golden", str(golden))
    assert proc.returncode == 0, proc.stderr
    assert f"vs golden {golden.name} on 40 inputs" in proc.stdout and proc.stdout.rstrip().endswith("PASS")
    diffs = [float(d) for d in re.findall(r"ort-cpu\s+(?:logits|score)\s+max\|diff\| (\S+)", proc.stdout)]
    assert len(diffs) == 2 and all(d <= 1e-4 for d in diffs), proc.stdout
    assert "is_ood flips 0" in proc.stdout and "label mismatches 0" in proc.stdout


def test_parity_still_fails_a_wrong_graph(perturbed_energy_graph, golden):
    """Fail closed without torch too: the golden file of another calibration / other outputs is refused."""
    proc = oodgate_without_torch("parity", str(perturbed_energy_graph), "--golden", str(golden))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.rstrip().endswith("FAIL")


def test_methods(digits_calibration):
    proc = oodgate_without_torch("methods")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert set(lines) == {"msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line", "mos",
                          "adascale_a", "adascale_l"}
    assert "p=70.0, clip=None" in lines["dice"] and "p=85.0" in lines["scale"] and "p_min=80.0" in lines["adascale_a"]


def test_run_gives_the_library_s_scores(energy_graph, digit_pngs):
    from oodgate.runtime import Session

    proc = oodgate_without_torch("run", str(energy_graph), *map(str, digit_pngs), "--provider", "cpu",
                                 "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    with Session(energy_graph, "cpu") as sess:
        pred = sess.run([str(p) for p in digit_pngs])
    assert [r["label"] for r in records] == pred.labels.tolist()
    np.testing.assert_allclose([r["score"] for r in records], pred.scores, rtol=1e-6)
    assert [r["is_ood"] for r in records] == pred.is_ood.tolist()


def test_inspect(energy_graph, digits_calibration):
    proc = oodgate_without_torch("inspect", str(energy_graph), "--json")
    assert proc.returncode == 0, proc.stderr
    desc = json.loads(proc.stdout)
    cal = digits_calibration("energy")
    assert desc["method"] == "energy" and desc["threshold"] == pytest.approx(cal.threshold, rel=1e-7)
    assert desc["calibration_hash"] == cal.checksum()


def test_evaluate_gives_the_library_s_metrics(energy_graph, tmp_path):
    from oodgate.data import digits, ood_set
    from oodgate.evaluation.evaluate import evaluate_session
    from oodgate.runtime import Session

    out = tmp_path / "metrics.json"
    proc = oodgate_without_torch("evaluate", str(energy_graph), "--id", "digits:test", "--ood", "noise=ood:noise",
                                 "--provider", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    with Session(energy_graph, "cpu") as sess:
        ref = evaluate_session(sess, digits("test"), {"noise": ood_set("noise")}).to_dict()
    assert got["id_accuracy"] == pytest.approx(ref["id_accuracy"]) and got["id_accuracy"] > 0.9
    for key in ("auroc", "fpr95_id_positive", "accepted_ood_at_tau"):
        assert got["ood"]["noise"][key] == pytest.approx(ref["ood"]["noise"][key], abs=1e-9), key
    assert f"{100 * ref['ood']['noise']['auroc']:.2f}" in proc.stdout


def test_triton_repo_and_check(energy_graph, tmp_path):  # -- serving at scale (issue 18) --
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    proc = oodgate_without_torch("triton-repo", str(energy_graph), "--repo", str(tmp_path / "repo"), "--name", "gate")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "repo" / "gate" / "1" / "model.onnx").read_bytes() == energy_graph.read_bytes()
    proc = oodgate_without_torch("triton-check", str(tmp_path / "repo" / "gate"), "--graph", str(energy_graph))
    assert proc.returncode == 0 and "matches its graph" in proc.stdout, proc.stderr
