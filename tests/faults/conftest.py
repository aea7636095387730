"""Fixtures of the fault-injection suite (issue 13): the CLI in-process, editable copies of the digits artifacts."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faultkit import CliResult, reseal


@pytest.fixture
def cli(monkeypatch, capsys) -> Callable[..., CliResult]:
    """cli(*args) runs the console entry point (oodgate.cli.main) in-process and returns a CliResult."""
    from oodgate.cli import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["oodgate", *map(str, args)])
        code: int | None = None
        exception = None
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - a traceback is what these tests catch
            exception = exc
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err, exception)

    return run


@pytest.fixture
def edit_graph(energy_graph, tmp_path) -> Callable[..., Path]:
    """edit_graph(fn, reseal=False, name=...) -> a copy of the digits energy graph after fn(model) edited it."""
    import onnx

    def make(fn: Callable[[Any], Any], *, reseal_after: bool = False, name: str = "edited.onnx") -> Path:
        model = onnx.load(str(energy_graph))
        fn(model)
        if reseal_after:
            reseal(model)
        path = tmp_path / name
        onnx.save(model, str(path))
        return path

    return make




@pytest.fixture(scope="session")
def energy_cal(digits_calibration):
    """The digits-cnn energy calibration (in memory)."""
    return digits_calibration("energy")




@pytest.fixture(scope="session")
def test_inputs(digits_test, energy_cal) -> np.ndarray:
    """32 preprocessed digits test images (float32 (32, 1, 16, 16))."""
    return energy_cal.preprocess(digits_test.images[:32])
