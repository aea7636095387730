"""The serving path (`oodgate.runtime`) runs a graph without importing torch, and without torch installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize("torch_installed", [True, False], ids=["torch-present", "torch-missing"])
def test_runtime_runs_a_graph_without_torch(energy_graph, digit_pngs, torch_installed):
    block = "" if torch_installed else 'sys.modules["torch"] = None  # `import torch` raises ImportError\n'
    no_torch = "'torch' not in sys.modules" if torch_installed else "sys.modules['torch'] is None"
    script = "import sys\n" + block + textwrap.dedent(f"""
        import oodgate.runtime
        from oodgate.runtime import Session, read_graph_info
        from oodgate.runtime.inspect import describe_graph, format_description
        with Session({str(energy_graph)!r}, providers="cpu") as sess:
            pred = sess.run({[str(p) for p in digit_pngs]!r})
            out = sess.run_array(sess.preprocess({str(digit_pngs[0])!r}))
        assert len(pred) == {len(digit_pngs)} and out["score"][0] == pred.scores[0]
        assert read_graph_info({str(energy_graph)!r}).method == "energy"
        format_description(describe_graph({str(energy_graph)!r}))
        assert {no_torch}, "torch was imported"
        assert not [m for m in sys.modules if m.startswith("torch.")]
        print("ok", pred.labels.tolist())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok [")
