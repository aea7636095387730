"""Helpers of the fault-injection suite (issue 13): CLI results, editing calibration files and graphs.

Each edit helper re-seals what it edits when asked (`reseal=True`): oodgate's checksums are integrity checks that any
script can recompute, so a test of a *consistency* check (threshold baked vs metadata, model hash, ...) must get
past the checksum first, as a deliberate edit would.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


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
