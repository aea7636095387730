"""Writing files atomically (temporary name, then rename), refusing to overwrite unless asked. No torch here."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OodgateError


def write_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename; refuse to overwrite unless asked."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OodgateError(f"{path} exists: choose another path or overwrite it (--force / overwrite=True)")
    if not path.parent.is_dir():
        raise OodgateError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
