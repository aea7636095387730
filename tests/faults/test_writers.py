"""Defect 7 of issue 13 and the README's 'no overwrite without --force': concurrent writers (processes, threads, real
CLI commands), kill -9 at several points of a write, full disks, read-only folders and the umask."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from oodgate.errors import OodgateError

from faultkit import expect_error, files_in

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def leftovers(folder: Path, suffix: str) -> list[str]:
    """Files in folder that a `*<suffix>` glob would pick up, other than the target itself."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(suffix))


# -- the writer itself, raced by processes and threads --------------------------------------------------------

#: a writer process that, like a slow disk, takes 0.3 s to publish: a check-then-rename writer lets every racer
#: past its "exists?" check in that window; a link-or-fail writer lets exactly one win
RACER = """
import os, sys, time
def slow(real):
    return lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1]
os.link, os.replace = slow(os.link), slow(os.replace)
path, me, start, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
while time.time() < start:
    time.sleep(0.001)
if mode == "cli":
    from oodgate.cli import main
    sys.argv = ["oodgate", *sys.argv[5:]]
    main()
from oodgate.files import write_atomic
from oodgate.errors import OodgateError
try:
    write_atomic(path, bytes([me]) * 1_000_000, overwrite=mode == "force")
    print("won")
except OodgateError as exc:
    print("lost", exc)
"""


def _race(n: int, target: Path, mode: str, *extra: object, lead: float = 4.0) -> list[subprocess.Popen]:
    start = time.time() + lead
    return [subprocess.Popen([sys.executable, "-c", RACER, str(target), str(i), str(start), mode, *map(str, extra)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
            for i in range(n)]


@pytest.mark.parametrize("overwrite", [False, True], ids=["no-clobber", "force"])
def test_d7_sixteen_processes_race_for_one_path(tmp_path, overwrite):
    target = tmp_path / "g.onnx"
    procs = _race(16, target, "force" if overwrite else "plain")
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    won = [i for i, (out, _) in enumerate(outs) if out.startswith("won")]
    data = target.read_bytes()
    assert len(data) == 1_000_000 and len(set(data)) == 1  # one writer's complete content, never a mix
    if overwrite:
        assert len(won) == 16
    else:
        assert len(won) == 1 and data[0] == won[0], outs
        assert all("exists" in out for i, (out, _) in enumerate(outs) if i not in won)
    assert files_in(tmp_path) == ["g.onnx"]


@pytest.mark.parametrize("overwrite", [False, True], ids=["no-clobber", "force"])
def test_d7_sixteen_threads_race_for_one_path(tmp_path, monkeypatch, overwrite):
    from oodgate.files import write_atomic

    for name in ("link", "replace"):  # a slow publish step widens the race window (see RACER)
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, **k: (time.sleep(0.2), _real(*a, **k))[1])

    target = tmp_path / "c.oodcal"
    barrier = threading.Barrier(16)
    results: list[str] = [""] * 16

    def write(i: int) -> None:
        barrier.wait()
        try:
            write_atomic(target, bytes([i]) * 200_000, overwrite=overwrite)
            results[i] = "won"
        except OodgateError as exc:
            results[i] = f"lost {exc}"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = target.read_bytes()
    assert len(data) == 200_000 and len(set(data)) == 1
    assert results.count("won") == (16 if overwrite else 1), results
    assert files_in(tmp_path) == ["c.oodcal"]


def test_d7_a_failing_writer_leaves_nothing(tmp_path):
    from oodgate.files import atomic_output

    target = tmp_path / "g.onnx"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        assert not tmp.name.endswith(".onnx") and tmp.parent == tmp_path
        raise RuntimeError("boom")
    assert files_in(tmp_path) == []


def test_d7_companion_files_are_published_together_or_removed(tmp_path):
    from oodgate.files import atomic_output, companion_temp

    target, data = tmp_path / "g.onnx", tmp_path / "g.onnx.data"
    with pytest.raises(RuntimeError), atomic_output(target, companions=[data]) as tmp:
        companion_temp(tmp, data).write_bytes(b"weights")
        tmp.write_bytes(b"graph")
        raise RuntimeError("boom")
    assert files_in(tmp_path) == []
    with atomic_output(target, companions=[data]) as tmp:
        companion_temp(tmp, data).write_bytes(b"weights")
        tmp.write_bytes(b"graph")
    assert files_in(tmp_path) == ["g.onnx", "g.onnx.data"] and data.read_bytes() == b"weights"
    with pytest.raises(OodgateError, match="exists"), atomic_output(target, companions=[data]) as tmp:
        tmp.write_bytes(b"other")
    assert target.read_bytes() == b"graph" and files_in(tmp_path) == ["g.onnx", "g.onnx.data"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o027])
def test_d8_files_honour_the_umask(tmp_path, umask):
    from oodgate.files import write_atomic

    old = os.umask(umask)
    try:
        path = write_atomic(tmp_path / "f.oodcal", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_d8_cli_outputs_honour_the_umask(cli, tmp_path):
    old = os.umask(0o022)
    try:
        result = cli("calibrate", "digits-cnn", "--data", "digits:calib", "--output", tmp_path / "c.oodcal")
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    assert stat.S_IMODE((tmp_path / "c.oodcal").stat().st_mode) == 0o644


# -- full disk, read-only folder, no hard links ----------------------------------------------------------------


def _fail_writes_in(monkeypatch, folder: Path, err: int, *, after_bytes: int = 0) -> None:
    """Writes to files in ``folder`` fail with ``err`` once ``after_bytes`` bytes were written (ENOSPC, EROFS...)."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if Path(path).parent == folder and flags & (os.O_WRONLY | os.O_RDWR) and err == errno.EROFS:
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    if err == errno.ENOSPC:
        import builtins

        real_builtin_open = builtins.open
        real_write_bytes = Path.write_bytes

        def full_write_bytes(self, data):
            if Path(self).parent != folder:
                return real_write_bytes(self, data)
            real_write_bytes(self, bytes(data[:after_bytes]))  # the disk fills up part-way
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

        class FullFile:
            def __init__(self, fh, name):
                self._fh, self.name, self.left = fh, name, after_bytes

            def write(self, b):
                if len(b) > self.left:
                    self._fh.write(b[: self.left])
                    self.left = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
                self.left -= len(b)
                return self._fh.write(b)

            def __getattr__(self, name):
                return getattr(self._fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._fh.close()

        def full_open(file, mode="r", *args, **kwargs):
            fh = real_builtin_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and Path(file).parent == folder and ("w" in mode or "a" in mode):
                return FullFile(fh, str(file))
            return fh

        monkeypatch.setattr(builtins, "open", full_open)
        monkeypatch.setattr(Path, "write_bytes", full_write_bytes)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["full-disk", "read-only"])
@pytest.mark.parametrize("command", ["calibrate", "run", "parity-json"])
def test_d8_full_disk_and_read_only_folder_are_one_line(cli, monkeypatch, tmp_path, energy_graph, digit_pngs,
                                                         energy_calibration_file, err, command):
    folder = tmp_path / "out"
    folder.mkdir()
    args = {
        "calibrate": ["calibrate", "digits-cnn", "--data", "digits:calib", "--output", folder / "c.oodcal",
                      "--batch-size", 64],
        "run": ["run", energy_graph, digit_pngs[0], "-p", "cpu", "--output", folder / "r.jsonl"],
        "parity-json": ["parity", energy_graph, "--calibration", energy_calibration_file, "--data", "digits:test",
                        "--limit", 8, "--json", folder / "p.json"],
    }[command]
    _fail_writes_in(monkeypatch, folder, err, after_bytes=100)
    line = expect_error(cli(*args))
    assert os.strerror(err).lower() in line.lower() or ("read-only" in line.lower() and err == errno.EROFS)
    monkeypatch.undo()
    assert files_in(folder) == []


def test_d8_a_filesystem_without_hard_links_is_one_line(cli, monkeypatch, tmp_path):
    def no_links(src, dst, *a, **k):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "out"
    out.mkdir()
    expect_error(cli("calibrate", "digits-cnn", "--data", "digits:calib", "--output", out / "c.oodcal"),
                 "hard link")
    assert files_in(out) == []


# -- kill -9 at several points ------------------------------------------------------------------------------------

KILLED = """
import os, sys, time, pathlib
ready = pathlib.Path(sys.argv[1])
point = sys.argv[2]

def hold(*_a, **_k):
    ready.write_text(point)
    time.sleep(600)

import oodgate.files as files
import oodgate.calibration.artifact as artifact
if point == "before-publish":
    real_link = os.link
    os.link = lambda *a, **k: (hold(), real_link(*a, **k))
elif point == "half-written":
    real_write = pathlib.Path.write_bytes
    def half(self, data):
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            hold()
    pathlib.Path.write_bytes = half
elif point == "fitting":
    from oodgate.data.sets import ImageSet
    real_batches = ImageSet.batches
    def slow(self, *a, **k):
        for i, item in enumerate(real_batches(self, *a, **k)):
            if i == 1:
                hold()
            yield item
    ImageSet.batches = slow
elif point == "graph-saved":
    import onnx
    real_save = onnx.save
    def saved(*a, **k):
        real_save(*a, **k)
        hold()
    onnx.save = saved
    import onnx as _o
from oodgate.cli import main
sys.argv = ["oodgate", *sys.argv[3:]]
main()
"""


def _kill_at(point: str, args: list[str], folder: Path, tmp_path: Path, timeout: float = 180) -> None:
    ready = tmp_path / f"ready-{point}"
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(ready), point, *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"finished before reaching {point}: {proc.communicate()}")
        assert time.time() < deadline, f"never reached {point}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", ["fitting", "half-written", "before-publish"])
def test_d7_kill_9_during_calibrate(cli, tmp_path, point):
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "c.oodcal"
    _kill_at(point, ["calibrate", "digits-cnn", "--data", "digits:calib", "--output", target], folder, tmp_path)
    assert not target.exists() and leftovers(folder, ".oodcal") == []
    # what a kill leaves (a hidden temporary) never blocks the next write to the same path
    result = cli("calibrate", "digits-cnn", "--data", "digits:calib", "--output", target)
    assert result.code == 0, result.err and target.is_file()


def test_d7_kill_9_after_the_graph_is_written_before_it_is_published(cli, tmp_path, energy_calibration_file):
    """The issue's case: a kill used to leave a full-size hidden temp file ending in .onnx next to the target."""
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "g.onnx"
    _kill_at("graph-saved", ["export", energy_calibration_file, "--output", target, "--no-check"], folder, tmp_path)
    assert not target.exists() and leftovers(folder, ".onnx") == [], files_in(folder)


# -- real CLI commands racing ----------------------------------------------------------------------------------


def test_d7_concurrent_cli_writers(energy_graph, digit_pngs, tmp_path):
    """8 `oodgate run -o same.jsonl` at once (the torch-free CLI), publishing slowly: exactly one writes (16 raw
    writer processes race above; 8 CLI start-ups keep this test within seconds on a 2-core machine)."""
    target = tmp_path / "r.jsonl"
    procs = _race(8, target, "cli", "run", energy_graph, digit_pngs[0], "-p", "cpu", "--format", "jsonl", "-o",
                  target, lead=8.0)
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes.count(0) == 1 and codes.count(2) == 7, (codes, outs[:2])
    assert all("exists" in err for (_, err), c in zip(outs, codes) if c == 2)
    assert files_in(tmp_path) == ["r.jsonl"] and target.read_text().startswith("{")


def test_d7_concurrent_exports_without_force(energy_calibration_file, tmp_path):
    """Two real `oodgate export` to one path: exactly one reports success, none overwrites, nothing is left (the
    16-way races above use the same writer; a torch export per process would take minutes on 2 cores)."""
    target = tmp_path / "g.onnx"
    cmd = [sys.executable, "-m", "oodgate.cli", "export", str(energy_calibration_file), "-o", str(target),
           "--no-check"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], (codes, outs)
    assert sum("exported" in out for out, _ in outs) == 1
    assert files_in(tmp_path) == ["g.onnx"]
    from oodgate import Session

    with Session(target, "cpu") as sess:
        assert np.isfinite(sess.threshold)
