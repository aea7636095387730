"""The one way oodgate writes files: to a temporary name in the target folder, then published in one step.

``overwrite=False`` publishes with ``os.link`` (fails if the target exists, also when two writers race: an atomic
no-clobber), ``overwrite=True`` with ``os.replace``. Temporary names are ``.<name>.tmp-<random>`` and never end in
the target's suffix, so a ``*.onnx`` glob never picks up a half-written graph. Files get mode ``0o666 & ~umask``.
No torch here.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import OodgateError


def _exists_error(path: Path) -> OodgateError:
    return OodgateError(f"{path} exists: choose another path or overwrite it (--force / overwrite=True)")


def _reserve(folder: Path, name: str) -> Path:
    """Create an empty, new temporary file for ``name`` in ``folder`` (mode 0o666 minus the umask)."""
    for _ in range(100):
        tmp = folder / f".{name}.tmp-{secrets.token_hex(6)}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        except OSError as exc:  # a read-only folder, a full disk, no permission: one line naming the folder
            raise OodgateError(f"cannot write in {folder}: {exc.strerror or exc}") from None
        return tmp
    raise OodgateError(f"cannot create a temporary file in {folder}")  # pragma: no cover - 100 random clashes


def companion_temp(tmp: str | Path, final: str | Path) -> Path:
    """The temporary name of a companion file (e.g. a graph's external data) of the output staged at ``tmp``.

    Write the companion there; ``atomic_output(..., companions=[final])`` publishes it as ``final`` with the
    main file, or removes it on failure.
    """
    tmp, final = Path(tmp), Path(final)
    token = tmp.name.rsplit(".tmp-", 1)[-1]
    return tmp.parent / f".{final.name}.tmp-{token}"


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as exc:
        raise OodgateError(f"cannot write {path}: {exc.strerror or exc} (oodgate publishes files with a hard link "
                           "so that nothing is overwritten; write to a local folder)") from None
    os.unlink(tmp)


@contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = False,
                  companions: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it as ``path`` when the block succeeds, else remove it.

    Refuses (OodgateError) when ``path`` or a companion exists, unless ``overwrite``. Companions are files that
    belong to the output (written at ``companion_temp(tmp, companion)``); they are published before the main file
    and removed with it on failure.
    """
    path = Path(path)
    finals = [Path(c) for c in companions]
    for target in (path, *finals):
        if not target.parent.is_dir():
            raise OodgateError(f"cannot write {target}: folder {target.parent} does not exist")
        if target.exists() and not overwrite:
            raise _exists_error(target)
    tmp = _reserve(path.parent, path.name)
    staged = [(companion_temp(tmp, c), c) for c in finals]
    published: list[Path] = []
    try:
        yield tmp
        for ctmp, final in staged:
            if ctmp.exists():
                _publish(ctmp, final, overwrite)
                published.append(final)
        _publish(tmp, path, overwrite)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        for ctmp, _ in staged:
            ctmp.unlink(missing_ok=True)
        if not overwrite:  # companions this call published, with no main file left to use them
            for final in published:
                final.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):  # full disk, read-only, I/O error
            raise OodgateError(f"cannot write {path}: {exc.strerror or exc} (nothing was written)") from None
        raise


@contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False, create: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; when the block succeeds it replaces ``path`` (an old folder there is
    removed only then), else it is removed. ``create=False`` leaves making the folder to the block (e.g. a writer
    that creates its own output folder)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise OodgateError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise _exists_error(path)
    staging = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    if create:
        staging.mkdir()
    try:
        yield staging
        staging.mkdir(exist_ok=True)  # a block that wrote nothing publishes an empty folder
        if path.exists():
            old = path.parent / f".{path.name}.old-{secrets.token_hex(6)}"
            path.rename(old)
            staging.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; refuse to overwrite unless asked."""
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return path


__all__ = ["atomic_folder", "atomic_output", "companion_temp", "write_atomic"]
