"""Served end to end over the Triton protocol: PyTriton's Triton server hosts the digits DICE graph on 127.0.0.1
with dynamic batching; tritonclient queries it over HTTP and gRPC (batched requests and 8 concurrent clients
sending one image each); every answer equals the local Session's. PyTriton pins numpy<2, so the server and the
clients run in their own environment (bench/pytriton_env.sh), in a child process with a timeout."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("OODGATE_PYTRITON_VENV", ROOT / "bench" / ".cache" / "pytriton-venv"))


def pytriton_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.is_file():
        message = f"no PyTriton environment at {VENV}: create it with bench/pytriton_env.sh"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run does)")
        pytest.skip(message)
    return python


def _loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@pytest.mark.slow
def test_served_outputs_equal_the_local_session(digits_graph, digits_test, tmp_path, assert_outputs_match):
    from oodgate.runtime import Session

    python = pytriton_python()
    graph = digits_graph("dice")
    with Session(graph, providers="cpu") as sess:
        rng = np.random.default_rng(0)
        noise = rng.integers(0, 256, size=(8, 8, 8)).astype(np.uint8)  # OOD: random 8x8 grey images
        x = sess.preprocess(list(digits_test.images[:24]) + list(noise))
        local = sess.run_array(x)
        threshold = sess.threshold
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(python), str(ROOT / "tests" / "serving" / "served_check.py"), str(graph),
                           str(tmp_path / "x.npy"), str(tmp_path / "got.npz")],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    result_lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result_lines, (proc.stdout[-3000:] + proc.stderr[-3000:])
    result = json.loads(result_lines[-1][len("RESULT "):])

    assert result["max_batch_size"] == 8 and result["dynamic_batching"]
    if result["listening"] is not None:  # ss is there: every listening socket of the server is on loopback
        assert result["listening"], "ss found no listening socket of the Triton server"
        assert all(_loopback(a) for a in result["listening"]), result["listening"]
        ports = {a.rsplit(":", 1)[1] for a in result["listening"]}
        assert {a.rsplit(":", 1)[1] for a in result["addresses"].values()} <= ports
    got = np.load(tmp_path / "got.npz")
    for mode in ("http_batch", "grpc_batch", "http_single", "grpc_single"):
        served = {k: got[f"{mode}/{k}"] for k in ("logits", "score", "is_ood", "label")}
        assert served["score"].shape == served["is_ood"].shape == served["label"].shape == (len(x), 1), mode
        assert served["label"].dtype == np.int64 and served["is_ood"].dtype == np.bool_, mode
        flat = {k: (v if k == "logits" else v[:, 0]) for k, v in served.items()}
        assert_outputs_match(flat, local, threshold, what=f"served over {mode}")
        np.testing.assert_allclose(flat["score"], local["score"], rtol=1e-6, atol=1e-6, err_msg=mode)
    assert 0 < int(local["is_ood"].sum()) < len(x), "the inputs should hold accepted and rejected ones"
