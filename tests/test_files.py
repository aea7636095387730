"""The one writer (oodgate.files): atomic, no-clobber also under concurrency, no temp name a glob can pick up,
companion files published or removed with the main file, the umask honoured."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from oodgate.errors import OodgateError
from oodgate.files import atomic_output, companion_temp, write_atomic


def test_publishes_and_leaves_nothing_else(tmp_path: Path):
    path = write_atomic(tmp_path / "a.onnx", b"graph")
    assert path.read_bytes() == b"graph" and os.listdir(tmp_path) == ["a.onnx"]


def test_never_overwrites_unless_asked(tmp_path: Path):
    path = tmp_path / "a.json"
    path.write_bytes(b"precious")
    with pytest.raises(OodgateError, match=r"a\.json exists.*--force"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"precious" and os.listdir(tmp_path) == ["a.json"]
    write_atomic(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["a.json"]


def test_a_file_appearing_while_writing_is_not_clobbered(tmp_path: Path):
    """The existence check up front is not what protects: publishing itself fails if the target appeared."""
    path = tmp_path / "race.onnx"
    with pytest.raises(OodgateError, match="exists"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"mine")
            path.write_bytes(b"theirs")  # another writer won the race
    assert path.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["race.onnx"]


def test_concurrent_writers_exactly_one_wins(tmp_path: Path):
    path = tmp_path / "one.bin"
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def writer(i: int) -> None:
        try:
            with atomic_output(path) as tmp:
                tmp.write_bytes(str(i).encode() * 1000)
                barrier.wait()
            outcomes.append(f"won {i}")
        except OodgateError:
            outcomes.append("refused")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("refused") == 7
    i = winners[0].split()[1]
    assert path.read_bytes() == i.encode() * 1000 and os.listdir(tmp_path) == ["one.bin"]


def test_temporary_names_never_match_the_target_suffix(tmp_path: Path):
    with atomic_output(tmp_path / "model.onnx") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.tmp-")
        assert not tmp.name.endswith(".onnx") and not list(tmp_path.glob("*.onnx"))
        data = companion_temp(tmp, tmp_path / "model.onnx.data")
        assert data.name.startswith(".model.onnx.data.tmp-") and not data.name.endswith((".onnx", ".data"))
        tmp.write_bytes(b"x")


def test_failure_removes_the_temporary_and_its_companions(tmp_path: Path):
    target, data = tmp_path / "g.onnx", tmp_path / "g.onnx.data"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target, companions=[data]) as tmp:
            tmp.write_bytes(b"graph")
            companion_temp(tmp, data).write_bytes(b"weights")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_companions_are_published_with_the_main_file_and_refused_if_present(tmp_path: Path):
    target, data = tmp_path / "g.onnx", tmp_path / "g.onnx.data"
    with atomic_output(target, companions=[data]) as tmp:
        tmp.write_bytes(b"graph")
        companion_temp(tmp, data).write_bytes(b"weights")
    assert target.read_bytes() == b"graph" and data.read_bytes() == b"weights"
    target.unlink()
    with pytest.raises(OodgateError, match=r"g\.onnx\.data exists"):
        with atomic_output(target, companions=[data]):
            pass
    assert sorted(os.listdir(tmp_path)) == ["g.onnx.data"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_mode_honours_the_umask(tmp_path: Path, umask: int):
    old = os.umask(umask)
    try:
        a = write_atomic(tmp_path / f"a{umask}", b"1")
        b = write_atomic(tmp_path / f"a{umask}", b"2", overwrite=True)
    finally:
        os.umask(old)
    assert (a.stat().st_mode & 0o777) == (b.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_missing_folder_is_one_clear_error(tmp_path: Path):
    with pytest.raises(OodgateError, match="folder .*nope does not exist"):
        write_atomic(tmp_path / "nope" / "a.bin", b"")


def test_atomic_folder_replaces_only_on_success(tmp_path):
    from oodgate.files import atomic_folder

    out = tmp_path / "shards"
    with atomic_folder(out) as staging:
        (staging / "a.txt").write_text("one")
        assert not out.exists()  # nothing visible before the block ends
    assert (out / "a.txt").read_text() == "one"
    with pytest.raises(OodgateError, match="exists"):
        with atomic_folder(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_folder(out, overwrite=True) as staging:
            (staging / "b.txt").write_text("two")
            raise RuntimeError("writer died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # old folder kept, staging removed
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_folder(out, overwrite=True, create=False) as staging:
        assert not staging.exists()  # left to the writer; an empty result still publishes a folder
    assert out.is_dir() and not any(out.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
