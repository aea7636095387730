"""Calibrations of the shipped digits CNN on digits('calib'), shared with the rest of the suite (tests/conftest.py)."""

from __future__ import annotations

import pytest

from oodgate.data import digits

METHODS = ("energy", "dice")


@pytest.fixture(scope="session")
def calib_set():
    return digits("calib")


@pytest.fixture(scope="session")
def calibrations(digits_calibration):
    """{method: Calibration} with the defaults (holdout 0.2, seed 0, TPR 0.95)."""
    return {m: digits_calibration(m) for m in METHODS}
