"""README promises checked through the real console entry point: bad input is ONE 'error:' line with exit 2, and
nothing is overwritten without --force (the demo included)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MAXPOOL_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class MaxPoolNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.pool = nn.AdaptiveMaxPool2d(1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


    def factory():
        torch.manual_seed(0)
        return MaxPoolNet()
''')
PREPROCESS = '{"channels": "L", "resize": [16, 16], "mean": [0.5], "std": [0.25]}'


def oodgate(*args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    paths = [str(REPO), *([str(extra_path)] if extra_path else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "CI": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "oodgate.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, stdin=subprocess.DEVNULL)


def test_adascale_export_of_an_unsupported_layer_is_one_line_exit_2(tmp_path: Path):
    (tmp_path / "maxpool_model.py").write_text(MAXPOOL_MODEL)
    cal = tmp_path / "a.oodcal"
    made = oodgate("calibrate", "maxpool_model:factory", "--data", "digits:calib", "--method", "adascale_a",
                   "--preprocess", PREPROCESS, "--output", str(cal), extra_path=tmp_path)
    assert made.returncode == 0, made.stderr
    graph = tmp_path / "a.onnx"
    proc = oodgate("export", str(cal), "--output", str(graph), "--model", "maxpool_model:factory",
                   extra_path=tmp_path)  # a module:attr model from a file is imported only when named again
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "adaptive_max_pool2d" in lines[0] and "AdaptiveMaxPool2d" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("__")) == ["a.oodcal",
                                                                                      "maxpool_model.py"]


def test_demo_refuses_to_overwrite_without_force(tmp_path: Path):
    out = tmp_path / "demo"
    out.mkdir()
    precious = out / "energy.oodcal"
    precious.write_bytes(b"an earlier run")
    proc = oodgate("demo", "--out", str(out), "--method", "energy")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "energy.oodcal exists" in lines[-1] and "--force" in lines[-1]
    assert precious.read_bytes() == b"an earlier run" and sorted(os.listdir(out)) == ["energy.oodcal"]
