"""keep(p) = D - round(D p / 100), round half to even: the table of METHODS.md."""

from __future__ import annotations

import pathlib
import sys

import pytest

from oodgate.detectors import keep_count

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import numpy_reference as ref  # noqa: E402

TABLE = {60: 819, 65: 717, 70: 614, 80: 410, 85: 307, 90: 205, 95: 102}


@pytest.mark.parametrize(("p", "kept"), sorted(TABLE.items()))
def test_keep_count_table_d2048(p, kept):
    assert keep_count(2048, p) == kept
    assert keep_count(2048, float(p)) == kept
    assert ref.keep(2048, p) == kept
    assert isinstance(keep_count(2048, p), int)


@pytest.mark.parametrize(("d", "p", "kept"), [
    (10, 25, 8),   # 2.5 -> 2 (half to even)
    (10, 35, 6),   # 3.5 -> 4
    (10, 45, 6),   # 4.5 -> 4
    (50, 85, 8),   # 42.5 -> 42
    (64, 90, 6),   # 57.6 -> 58
    (2048, 0, 2048),
])
def test_keep_count_rounds_half_to_even(d, p, kept):
    assert keep_count(d, p) == ref.keep(d, p) == kept


def test_keep_count_matches_reference_on_a_grid():
    for d in (1, 7, 10, 50, 64, 512, 2048):
        for p in range(0, 100):
            assert keep_count(d, p) == ref.keep(d, p), (d, p)
