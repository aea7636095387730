"""The benchmark helpers that the figures in docs/BENCHMARKS.md rest on: paired ratios, summaries, interleaving,
and the replaced LINe head the benchmark compares against (it must give the same scores as oodgate's)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

common = pytest.importorskip("common")
torch = pytest.importorskip("torch")


def test_stat_is_median_and_quartiles():
    values = np.random.default_rng(0).gamma(2.0, 1.0, size=37)
    s = common.Stat.of(values)
    assert (s.median, s.q1, s.q3, s.n) == (np.median(values), np.percentile(values, 25), np.percentile(values, 75), 37)


def test_ratio_is_taken_per_repetition():
    num, den = np.array([2.0, 4.0, 9.0]), np.array([1.0, 4.0, 3.0])
    assert common.ratio(num, den).median == 2.0  # per-repetition ratios 2, 1, 3; a ratio of medians would say 1


def test_time_interleaved_rotates_and_times_every_variant():
    calls: list[str] = []

    def variant(name: str):
        return lambda: calls.append(name)

    out = common.time_interleaved({"a": variant("a"), "b": variant("b"), "c": variant("c")}, reps=3, block_s=0.0,
                                  warmup=1)
    assert set(out) == {"a", "b", "c"} and all(v.shape == (3,) and (v >= 0).all() for v in out.values())
    timed = calls[3:]  # after one probe call per variant, one call per block (block_s=0: one call each)
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_replaced_line_head_gives_the_same_scores():
    heads = pytest.importorskip("heads")
    new = heads.fitted_head("line", 20, 48)
    old = heads.fitted_head("line_where", 20, 48)
    h = torch.from_numpy(heads.head_inputs("line", 20, 48, 9)["h"])
    with torch.no_grad():
        a, b = new.score_from(h, None), old.score_from(h, None)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    assert float(a.std()) > 0
