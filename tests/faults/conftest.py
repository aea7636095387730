"""Fault injection (issue 13): helpers to run the CLI in-process, to edit calibration files and graphs the way a
damaged disk, a hand edit or a careless script would, and the real digits artifacts they start from.

Each helper re-seals what it edits when asked (`reseal=True`): oodgate's checksums are integrity checks that any
script can recompute, so a test of a *consistency* check (threshold baked vs metadata, model hash, ...) must get
past the checksum first, as a deliberate edit would.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@dataclass
class CliResult:
    """What one `oodgate ...` call did: exit code (None: it raised), stdout, stderr, the exception if any."""

    code: int | None
    out: str
    err: str
    exception: BaseException | None = None

    @property
    def error_line(self) -> str:
        """The one 'error: ...' line of a failed call (asserts that there is exactly one line, and no traceback)."""
        assert self.exception is None, f"raised {type(self.exception).__name__}: {self.exception}"
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{self.err}"
        return lines[0]


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


def expect_error(result: CliResult, *fragments: str, code: int = 2) -> str:
    """Assert exit `code` with one 'error:' line containing every fragment (case-insensitive); return the line."""
    assert result.exception is None, f"raised {type(result.exception).__name__}: {result.exception}"
    assert result.code == code, f"exit {result.code}, expected {code}\nstdout: {result.out}\nstderr: {result.err}"
    line = result.error_line
    for fragment in fragments:
        assert fragment.lower() in line.lower(), f"{fragment!r} not in {line!r}"
    return line


def files_in(folder: Path) -> list[str]:
    """Names of everything in a folder (hidden files included), sorted."""
    return sorted(p.name for p in Path(folder).iterdir())


# -- calibration files -------------------------------------------------------------------------------------


def read_calibration_zip(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {entry name: bytes}) of a calibration file."""
    with zipfile.ZipFile(path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    return json.loads(entries.pop("manifest.json")), entries


def write_calibration_zip(path: Path, manifest: Any, entries: dict[str, bytes], *, reseal: bool = True) -> Path:
    """Write a calibration archive; with `reseal`, recompute the checksum as oodgate would for this content."""
    from oodgate.calibration.artifact import _checksum

    if reseal and isinstance(manifest, dict):
        try:
            arrays = {name[:-4]: np.load(io.BytesIO(data), allow_pickle=False) for name, data in entries.items()
                      if name.endswith(".npy")}
            manifest = {**manifest, "checksum": _checksum(manifest, arrays)}
        except Exception:  # noqa: BLE001 - content that cannot even be checksummed is written as is
            pass
    text = manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest, indent=1, sort_keys=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", text)
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# -- graphs ------------------------------------------------------------------------------------------------


def graph_meta(model: Any) -> dict[str, Any]:
    return json.loads({p.key: p.value for p in model.metadata_props}["oodgate"])


def set_graph_meta(model: Any, meta: dict[str, Any], *, reseal: bool = True) -> None:
    """Replace the oodgate metadata of a graph; with `reseal`, recompute hash and checksum (when oodgate has them)."""
    try:
        from oodgate.runtime.metadata import seal_graph
    except ImportError:  # an oodgate without graph seals: plain edit
        seal_graph = None
    meta = {k: v for k, v in meta.items() if k != "graph_sha256"}
    if reseal and seal_graph is not None:
        seal_graph(model, meta)
        return
    props = {p.key: p.value for p in model.metadata_props}
    props["oodgate"] = json.dumps(meta, sort_keys=True)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def reseal(model: Any) -> None:
    """Recompute the graph's seal after editing its body (no-op on an oodgate without seals)."""
    set_graph_meta(model, graph_meta(model), reseal=True)


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
