"""Ray Data on a local Ray bound to loopback only: the map_batches scorer (actors with fractional CPUs holding a
Session) writes to Parquet exactly what a plain loop over the Session gives; feature shards extracted as Ray tasks
equal the plain loop's; no Ray process listens on a non-loopback address."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

# Read by Ray when it is imported (set after `import ray` it is ignored: Ray then listened on the machine's external
# address and on all interfaces, which the loopback check below caught). Without it Ray also used the external address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
try:
    import pyarrow  # noqa: F401
    import ray
    import ray.data
except ImportError:  # CI installs them (.ci/run): there a missing Ray fails, never skips
    if os.environ.get("CI"):
        raise
    pytest.skip("Ray Data (pip install 'oodgate[ray]') is needed", allow_module_level=True)

from oodgate.errors import OodgateError  # noqa: E402
from oodgate.runtime import Session  # noqa: E402
from oodgate.serving.ray_scoring import GraphScorer, read_scores, score_dataset  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """Ray on this machine only: 2 CPUs, node address 127.0.0.1, no dashboard, a small object store."""
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024)
    try:
        yield ray
    finally:
        ray.shutdown()


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return tree


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "*":
        return False
    ip = ipaddress.ip_address(host.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def ray_listening_addresses() -> list[str]:
    """Local addresses of every TCP/UDP socket listened on by this process and the Ray processes it started."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is needed to list listening sockets")
    out = subprocess.run(["ss", "-lntupH"], capture_output=True, text=True, timeout=10).stdout
    tree = _descendants(os.getpid())
    found = []
    for line in out.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & tree:
            found.append(line.split()[4])
    return found


@pytest.fixture(scope="module")
def images_and_ids(digits_test):
    noise = np.random.default_rng(1).integers(0, 256, size=(16, 8, 8)).astype(np.uint8)  # OOD
    images = list(digits_test.images[:80]) + list(noise)
    return images, np.arange(len(images))


def test_map_batches_scorer_writes_what_a_plain_loop_gives(local_ray, digits_graph, images_and_ids, tmp_path):
    graph = digits_graph("dice")
    images, ids = images_and_ids
    ds = ray.data.from_items([{"id": int(i), "image": im} for i, im in zip(ids, images)], override_num_blocks=6)
    out = score_dataset(ds, graph, tmp_path / "scores", keep=("id",), actors=2, cpus_per_actor=0.5, batch_size=16)
    got = read_scores(out)
    order = np.argsort(got["id"])
    got = {k: v[order] for k, v in got.items()}
    with Session(graph, providers="cpu") as sess:
        ref = sess.run(images)  # the plain loop
        names = sess.info.class_names
    np.testing.assert_array_equal(got["id"], ids)
    np.testing.assert_array_equal(got["label"], ref.labels)
    np.testing.assert_allclose(got["score"], ref.scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["is_ood"], ref.is_ood)
    assert got["label"].dtype == np.int64 and got["is_ood"].dtype == np.bool_
    assert list(got["class"]) == [names[i] for i in ref.labels]
    assert 0 < ref.is_ood.sum() < len(images)  # both decisions occur
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers
    # what the Ray actors ran is the class itself, callable without Ray on a NumPy batch
    direct = GraphScorer(graph)({"image": np.stack(images[:5]), "id": ids[:5]})
    np.testing.assert_array_equal(direct["label"], ref.labels[:5])
    assert set(direct) == {"label", "score", "is_ood", "class"}  # keep=() drops the other columns
    addresses = ray_listening_addresses()
    assert addresses and all(_is_loopback(a) for a in addresses), addresses


def test_scoring_by_path_and_no_overwrite(local_ray, energy_graph, digit_pngs, tmp_path):
    ds = ray.data.from_items([{"path": str(p)} for p in digit_pngs])
    out = score_dataset(ds, energy_graph, tmp_path / "s", image_column="path", keep=("path",), actors=1,
                        cpus_per_actor=0.5)
    got = read_scores(out)
    by_path = dict(zip(got["path"], got["score"]))
    with Session(energy_graph, providers="cpu") as sess:
        ref = sess.run([str(p) for p in digit_pngs])
    np.testing.assert_allclose([by_path[str(p)] for p in digit_pngs], ref.scores, rtol=1e-6, atol=1e-6)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OodgateError, match="exists"):
        score_dataset(ds, energy_graph, out, image_column="path")
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(OodgateError, match="no column 'image'"):
        GraphScorer(energy_graph)({"path": np.array([str(digit_pngs[0])])})


def test_feature_shards_as_ray_tasks_equal_the_plain_loop(local_ray, tmp_path):
    from oodgate.calibration.shards import fit_from_shards, open_shards, write_feature_shards
    from oodgate.data import digits

    calib = digits("calib")
    ray_dir = write_feature_shards("digits-cnn", calib, tmp_path / "ray", shard_size=96, use_ray=True,
                                   cpus_per_task=0.5)
    loop_dir = write_feature_shards("digits-cnn", calib, tmp_path / "loop", shard_size=96)
    a, b = open_shards(ray_dir), open_shards(loop_dir)
    assert len(a.manifest["shards"]) == 5 and a.rows == len(calib)
    for ea, eb in zip(a.manifest["shards"], b.manifest["shards"]):
        sa, sb = a.read_shard(ea), b.read_shard(eb)
        np.testing.assert_array_equal(sa["index"], sb["index"])
        np.testing.assert_array_equal(sa["labels"], sb["labels"])
        np.testing.assert_allclose(sa["features"], sb["features"], rtol=1e-5, atol=1e-6)
    cal_a, cal_b = fit_from_shards(ray_dir, "dice"), fit_from_shards(loop_dir, "dice")
    assert cal_a.threshold == pytest.approx(cal_b.threshold, rel=1e-5)
    addresses = ray_listening_addresses()
    assert addresses and all(_is_loopback(a) for a in addresses), addresses


def test_readme_ray_snippet_runs_as_written(local_ray, digits_graph, tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = re.search(r"<!-- README ray snippet: begin -->\n```python\n(.*?)```", text, re.S).group(1)
    shutil.copyfile(digits_graph("dice"), tmp_path / "dice.onnx")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102 - the README's own code, as a user runs it
    got = read_scores(tmp_path / "scores")
    from oodgate.data import digits

    with Session(tmp_path / "dice.onnx", providers="cpu") as sess:
        ref = sess.run(digits("test").images)
    order = np.argsort(got["id"])
    np.testing.assert_allclose(got["score"][order], ref.scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["is_ood"][order], ref.is_ood)
