"""The benchmark helpers that docs/BENCHMARKS.md rests on: paired ratios, summaries, interleaving, the previous LINe
head the benchmark compares against (same scores as oodgate's), the export stage timer, the cache's build lock, and
the GPU check's comparison and CPU-runnable path (device=cpu)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
os.environ.setdefault("OODGATE_BENCH_CACHE", tempfile.mkdtemp(prefix="oodgate-bench-cache-"))

torch = pytest.importorskip("torch")
common = pytest.importorskip("common")


def test_stat_is_median_and_quartiles():
    values = np.random.default_rng(0).gamma(2.0, 1.0, size=37)
    s = common.Stat.of(values)
    assert (s.median, s.q1, s.q3, s.n) == (np.median(values), np.percentile(values, 25), np.percentile(values, 75), 37)


def test_ratio_is_taken_per_repetition():
    num, den = np.array([2.0, 4.0, 9.0]), np.array([1.0, 4.0, 3.0])
    assert common.ratio(num, den).median == 2.0  # per-repetition ratios 2, 1, 3; a ratio of medians would say 1


def test_time_interleaved_rotates_and_times_every_variant():
    calls: list[str] = []
    out = common.time_interleaved({k: (lambda k=k: calls.append(k)) for k in "abc"}, reps=3, block_s=0.0, warmup=1)
    assert set(out) == {"a", "b", "c"} and all(v.shape == (3,) and (v >= 0).all() for v in out.values())
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # after one probe call each, rotating


def test_previous_line_head_gives_the_same_scores_as_the_current_one():
    heads = pytest.importorskip("heads")
    from oodgate.detectors import detector

    h, y, w, b = heads.synthetic_problem(30, 64, n=400)
    det = detector("line").fit(h, y, weight=w, bias=b)
    x = torch.from_numpy(heads.head_inputs("line", 30, 64, 50)["h"])
    with torch.no_grad():
        new, old = det.head()(x), heads.previous_line_head(det)(x)
    for a, o in zip(new, old):
        np.testing.assert_allclose(a.numpy(), o.numpy(), rtol=1e-5, atol=1e-5)
    assert float(new[1].std()) > 0


def test_line_floor_is_lines_pass_without_its_mask():
    """bench's line_floor: LINe's head with ThresholdedRelu made the identity scores E(W (h' * m_l) + b) (NumPy), in a
    graph with LINe's Mul and MatMul per block and no ThresholdedRelu; LINe's own head is restored afterwards."""
    import onnx

    heads = pytest.importorskip("heads")
    from oodgate.detectors import detector
    from oodgate.detectors.line import LINeHead
    from oodgate.exporter.onnx_export import export_onnx

    c, d = 30, 64
    h, y, w, b = heads.synthetic_problem(c, d, n=400)
    det = detector("line").fit(h, y, weight=w, bias=b)
    x = heads.head_inputs("line", c, d, 20)["h"]
    state, clip = det.fitted_state(), det.fit_info()["clip"]
    hc = np.minimum(x.astype(np.float64), clip)
    lab = np.argmax(hc @ w.T + b, axis=1)
    z = (hc * state["neuron_mask"][lab]) @ w.T + b
    want = np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LINeHead, "BLOCK", 8 * c)  # several feature blocks, as at ImageNet sizes
        head = det.head()
        with heads.floor_of_line(), torch.no_grad():
            floor = head(torch.from_numpy(x))[1].numpy()
            graph = export_onnx(head, torch.from_numpy(x[:2]), input_names=["h"]).model_proto.graph
        ops = [n.op_type for n in graph.node]
        with torch.no_grad():
            line = head(torch.from_numpy(x))[1].numpy()
    np.testing.assert_allclose(floor, want, rtol=1e-5, atol=1e-5)
    assert "ThresholdedRelu" not in ops and ops.count("Mul") >= 8 and ops.count("MatMul") == 8, ops
    np.testing.assert_allclose(line, det.score(x), rtol=1e-5, atol=1e-5)  # restored: LINe again
    assert np.abs(line - floor).max() > 1e-3


def test_peak_memory_sees_an_allocation():
    # in a fresh process, as the benchmarks measure (a worker's freed heap could hold the block without growing)
    code = ("import sys, json; sys.path.insert(0, %r); import numpy as np, common\n"
            "with common.peak_memory() as mem:\n"
            "    np.ones(64 * 2**20 // 8).sum()  # 64 MiB, touched\n"
            "print(json.dumps(mem))" % str(BENCH))
    mem = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.splitlines()[-1])
    if mem["reset"]:
        assert 60 <= mem["peak_mib"] < 200


def test_gpu_check_compare_flags_a_changed_score_label_and_decision():
    gpu_check = pytest.importorskip("gpu_check")
    ref = {"score": np.array([1.0, 2.0, 3.0]), "label": np.array([0, 1, 2])}
    assert gpu_check.compare(dict(ref), ref, threshold=1.5)["ok"]
    bad = gpu_check.compare({"score": np.array([1.0, 2.0, 1.0]), "label": np.array([0, 1, 2])}, ref, threshold=1.5)
    assert not bad["ok"] and bad["decisions_equal_away_from_threshold"] < 1 and bad["max_score_diff"] == 2.0
    assert not gpu_check.compare({"score": ref["score"], "label": np.array([0, 1, 1])}, ref, 1.5)["ok"]


def test_gpu_check_runs_on_the_cpu_and_the_graph_matches_the_reference(digits_calibration, energy_graph,
                                                                          digits_test):
    gpu_check = pytest.importorskip("gpu_check")
    from oodgate.models import load_model

    x = np.concatenate([b for b, _ in digits_test.batches(load_model("digits-cnn").preprocess, 32)])[:32]
    row = gpu_check.compare_on_device(digits_calibration("energy"), energy_graph, x, "cpu", {}, reps=2)
    assert row["onnx_cpu_vs_reference"]["ok"], row
    assert row["onnx_cpu_vs_reference"]["max_score_diff"] < 1e-3
    assert set(row["timings_s"]) == {"reference b1", "reference b32"} and min(row["timings_s"].values()) > 0
    row["model"] = "digits-cnn"
    text = gpu_check.markdown({"machine": gpu_check.machine("cpu"), "rows": [row], "skipped": ["x y"],
                               "seconds": 1.0, "date": "today"})
    assert "digits-cnn | energy | onnx_cpu_vs_reference: ok" in text and "Skipped (budget): x y" in text


def test_export_stage_timer_subtracts_nested_stages():
    export_time = pytest.importorskip("export_time")
    import time

    exclusive, wrap = export_time.stage_timer()
    inner = wrap("inner", lambda: time.sleep(0.05))
    outer = wrap("outer", lambda: (time.sleep(0.03), inner(), inner()))
    outer()
    assert 0.1 <= exclusive["inner"] < 0.13 and 0.03 <= exclusive["outer"] < 0.06  # not 0.13: inner's time is its own


def test_cached_file_builds_once_when_two_builders_race(tmp_path):
    import threading
    import time

    built = []

    def write(tmp):
        built.append(tmp)
        time.sleep(0.2)
        tmp.write_text("graph")

    path = tmp_path / "g" / "x.onnx"
    threads = [threading.Thread(target=common.cached_file, args=(path, "x", write, None)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and path.read_text() == "graph"
