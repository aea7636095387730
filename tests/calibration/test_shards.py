"""Feature shards and fitting from them: for every feature-based method the calibration fitted from shards is the
one calibrate() fits from the same images (same checksum: state, threshold, held-out scores, counts); fitting
streams shard by shard; tampered, incomplete or foreign shard folders are refused; nothing is written half."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oodgate import calibrate
from oodgate.calibration.shards import (
    FeatureShards, fit_from_shards, holdout_mask, open_shards, write_feature_shards)
from oodgate.data import digits
from oodgate.detectors import available_detectors, detector_class
from oodgate.errors import ArtifactError, OodgateError

FEATURE_METHODS = [m for m in available_detectors() if detector_class(m).input_kind == "features"]


@pytest.fixture(scope="module")
def calib():
    return digits("calib")


@pytest.fixture(scope="module")
def shard_dir(calib, tmp_path_factory):
    return write_feature_shards("digits-cnn", calib, tmp_path_factory.mktemp("shards") / "calib", shard_size=96)


def test_shard_folder_holds_the_features_of_the_images(calib, shard_dir):
    import torch

    from oodgate.models import load_model, split_classifier

    shards = open_shards(shard_dir)
    m = shards.manifest
    assert m["rows"] == len(calib) == 400 and [e["rows"] for e in m["shards"]] == [96, 96, 96, 96, 16]
    assert m["data_fingerprint"] == calib.fingerprint() and m["model_ref"] == "digits-cnn"
    bundle = load_model("digits-cnn")
    split = split_classifier(bundle.model)
    with torch.no_grad():
        ref = split.features(torch.from_numpy(bundle.preprocess.load_batch(calib.images[100:110]))).numpy()
    second = shards.read_shard(m["shards"][1])
    np.testing.assert_array_equal(second["index"], np.arange(96, 192))
    np.testing.assert_array_equal(second["labels"], calib.labels[96:192])
    np.testing.assert_allclose(second["features"][4:14], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(shards.weight, split.head.weight.detach().numpy())


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_fit_from_shards_equals_calibrate_on_the_images(method, calib, shard_dir, digits_calibration):
    in_memory = digits_calibration(method)  # calibrate("digits-cnn", digits("calib"), method=method)
    from_shards = fit_from_shards(shard_dir, method)
    assert from_shards.threshold == in_memory.threshold
    np.testing.assert_array_equal(from_shards.holdout_scores, in_memory.holdout_scores)
    for key, value in in_memory.state.items():
        np.testing.assert_array_equal(from_shards.state[key], value, err_msg=key)
    assert from_shards.counts == in_memory.counts and from_shards.info == in_memory.info
    assert from_shards.checksum() == in_memory.checksum()


def test_separate_holdout_shards_equal_calibrate_with_a_holdout_set(calib, tmp_path):
    fit_set, held_set = calib.subset(np.arange(0, 300)), calib.subset(np.arange(300, 400))
    fit_dir = write_feature_shards("digits-cnn", fit_set, tmp_path / "fit", shard_size=128)
    held_dir = write_feature_shards("digits-cnn", held_set, tmp_path / "held", shard_size=64)
    ref = calibrate("digits-cnn", fit_set, "react", holdout=held_set, progress=False)
    got = fit_from_shards(fit_dir, "react", holdout=held_dir)
    assert got.checksum() == ref.checksum() and got.counts == {"fit": 300, "holdout": 100,
                                                              "accepted_holdout": ref.counts["accepted_holdout"]}


def test_holdout_mask_is_calibrates_split(calib):
    held, _ = calib.split(0.2, seed=3)
    mask = holdout_mask(len(calib), 0.2, seed=3)
    np.testing.assert_array_equal(calib.images[mask], held.images)


def test_fitting_streams_one_shard_at_a_time(shard_dir, monkeypatch):
    """The detector sees its first batch after one shard was read, not after all of them."""
    from oodgate.detectors.dice import DICE

    reads: list[int] = []
    seen: list[tuple[int, int]] = []  # (shards read so far, rows in the batch)
    original_read, original_fit = FeatureShards.read_shard, DICE._fit

    def read_shard(self, entry):
        reads.append(entry["start"])
        return original_read(self, entry)

    def fit(self, batches):
        def spy():
            for f, y in batches:
                seen.append((len(reads), len(f)))
                yield f, y
        return original_fit(self, spy())

    monkeypatch.setattr(FeatureShards, "read_shard", read_shard)
    monkeypatch.setattr(DICE, "_fit", fit)
    fit_from_shards(shard_dir, "dice", batch_size=50)
    assert seen[0] == (1, 50)  # the first batch comes out of the first 96-row shard (about 77 fit rows)
    assert max(rows for _, rows in seen) == 50 and len(seen) == 7  # 320 fit rows in 50-row batches
    assert [n for n, _ in seen] == sorted(n for n, _ in seen) and seen[-1][0] == 5


def test_tampered_incomplete_and_foreign_folders_are_refused(shard_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    shard = copy / "shard-00002.npz"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="shard-00002.npz fails its sha256"):
        fit_from_shards(copy, "energy")
    (copy / "shards.json").unlink()
    with pytest.raises(ArtifactError, match="not a complete feature shard folder"):
        fit_from_shards(copy, "energy")
    (copy / "shards.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not an oodgate feature shard manifest"):
        open_shards(copy)


def test_backbone_methods_and_unlabelled_shards_get_clear_errors(calib, shard_dir, tmp_path):
    with pytest.raises(OodgateError, match="needs the backbone itself"):
        fit_from_shards(shard_dir, "adascale_a")
    unlabelled = write_feature_shards("digits-cnn", (calib.images[:64], None), tmp_path / "u", shard_size=64)
    with pytest.raises(OodgateError, match="fitted with class labels, but the shards hold none"):
        fit_from_shards(unlabelled, "mos")
    with pytest.raises(OodgateError, match="holdout=1.5"):
        fit_from_shards(shard_dir, "energy", holdout=1.5)


def test_no_overwrite_and_nothing_half_written(calib, shard_dir, tmp_path, monkeypatch):
    before = (shard_dir / "shards.json").read_bytes()
    with pytest.raises(OodgateError, match="exists"):
        write_feature_shards("digits-cnn", calib, shard_dir)
    assert (shard_dir / "shards.json").read_bytes() == before
    import oodgate.calibration.shards as shards

    calls = []
    original = shards.extract_shard

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(*args, **kwargs)

    monkeypatch.setattr(shards, "extract_shard", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_feature_shards("digits-cnn", calib, tmp_path / "half", shard_size=100)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


def test_use_ray_without_a_started_ray_is_a_clear_error(calib, tmp_path):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is running in this process")
    with pytest.raises(OodgateError, match="Ray is not started: call ray.init"):
        write_feature_shards("digits-cnn", calib, tmp_path / "r", use_ray=True)
    assert not (tmp_path / "r").exists()



def _class_folders(root, classes):
    """Image folders {folder name: digits class}, five images each."""
    from PIL import Image

    d = digits("test")
    for name, cls in classes.items():
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(d.labels == cls)[:5]:
            Image.fromarray(d.images[i]).save(root / name / f"{i}.png")
    return root


def test_shard_labels_are_the_models_class_ids_not_sorted_folder_indices(tmp_path):
    folder = _class_folders(tmp_path / "imgs", {"seven": 7, "three": 3})  # sorted folder order: 0 and 1
    out = write_feature_shards("digits-cnn", str(folder), tmp_path / "shards", class_map={"seven": 7, "three": 3})
    labels = np.concatenate([lab for _, lab in open_shards(out).stream()])
    assert sorted(set(labels.tolist())) == [3, 7] and (labels == 3).sum() == 5


def test_shard_folders_that_match_no_class_are_refused(tmp_path):
    folder = _class_folders(tmp_path / "imgs", {"seven": 7, "three": 3})
    with pytest.raises(OodgateError, match="seven|three"):
        write_feature_shards("digits-cnn", str(folder), tmp_path / "shards")
    assert [p.name for p in tmp_path.iterdir()] == ["imgs"]  # nothing written
