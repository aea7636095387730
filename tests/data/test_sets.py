"""Image sets: built-in offline sets, the user's folders and array files, and `load_image_set`."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oodgate.data import (
    ImageSet,
    Preprocess,
    array_file,
    available_ood_sets,
    digits,
    fashion_mnist,
    fashion_mnist_available,
    image_folder,
    load_image_set,
    ood_set,
    ood_set_names,
)
from oodgate.errors import OodgateError

REPO = Path(__file__).resolve().parents[2]
needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="Debian's dataset-fashion-mnist is not installed"
)


def rows(image_set: ImageSet) -> list[bytes]:
    """Each image with its label as bytes, sorted: equal lists mean equal multisets."""
    return sorted(im.tobytes() + bytes([int(y)]) for im, y in zip(image_set.images, image_set.labels))


def numbered_set(n: int = 10) -> ImageSet:
    """n distinct 2x2 images whose first pixel is their index."""
    images = np.zeros((n, 2, 2), np.uint8)
    images[:, 0, 0] = np.arange(n)
    return ImageSet("numbered", images, labels=np.arange(n) % 3, class_names=["a", "b", "c"])


# -- digits ------------------------------------------------------------------------------------


def test_digits_splits_have_the_documented_sizes_and_partition_the_set() -> None:
    parts = {split: digits(split) for split in ("train", "calib", "test", "all")}
    assert {k: len(v) for k, v in parts.items()} == {"train": 1000, "calib": 400, "test": 397, "all": 1797}
    for part in parts.values():
        assert part.images.dtype == np.uint8 and part.images.shape[1:] == (8, 8)
        assert part.labels.dtype == np.int64 and part.class_names == [str(d) for d in range(10)]
    assert sorted(rows(parts["train"]) + rows(parts["calib"]) + rows(parts["test"])) == rows(parts["all"])
    assert np.bincount(parts["test"].labels, minlength=10).min() > 20  # shuffled, every class present


def test_digits_pixels_are_rounded_from_0_16() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    everything = digits("all")
    np.testing.assert_array_equal(everything.images, np.round(raw.images * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(everything.labels, raw.target)
    levels = np.round(np.arange(17) * 255 / 16).astype(np.uint8)  # 0, 16, 32, ..., 128 (8 → 127.5 → 128), ..., 255
    assert set(np.unique(everything.images).tolist()) <= set(levels.tolist())
    assert levels[8] == 128 and levels[16] == 255


def test_digits_are_deterministic_within_and_across_processes() -> None:
    first, again = digits("calib"), digits("calib")
    np.testing.assert_array_equal(first.images, again.images)
    code = "import oodgate.data as d; print(d.digits('calib').fingerprint())"
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == first.fingerprint()


def test_unknown_digits_split_is_an_error() -> None:
    expected = r"unknown digits split 'val': use one of \['train', 'calib', 'test', 'all'\]"
    with pytest.raises(OodgateError, match=expected):
        digits("val")


# -- ImageSet ------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_sensitive_to_pixels_and_labels() -> None:
    base = numbered_set()
    assert base.fingerprint() == numbered_set().fingerprint()
    assert len(base.fingerprint()) == 64
    changed = numbered_set()
    changed.images[3, 1, 1] = 1
    assert changed.fingerprint() != base.fingerprint()
    relabelled = numbered_set()
    relabelled.labels[0] = 2
    assert relabelled.fingerprint() != base.fingerprint()
    unlabelled = ImageSet("x", base.images)
    assert unlabelled.fingerprint() != base.fingerprint()
    reshaped = ImageSet("x", base.images.reshape(10, 1, 4))  # same bytes, other shape
    assert reshaped.fingerprint() != unlabelled.fingerprint()


def test_fingerprint_of_files_reads_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    before = ImageSet("files", [str(path)]).fingerprint()
    assert ImageSet("files", [path]).fingerprint() == before
    Image.fromarray(np.ones((4, 4), np.uint8)).save(path)
    assert ImageSet("files", [str(path)]).fingerprint() != before


def test_split_is_seeded_disjoint_and_sized_by_round() -> None:
    full = numbered_set(10)
    a, b = full.split(0.35, seed=3)
    assert (len(a), len(b)) == (round(0.35 * 10), 10 - round(0.35 * 10)) == (4, 6)
    ids_a, ids_b = set(a.images[:, 0, 0]), set(b.images[:, 0, 0])
    assert ids_a.isdisjoint(ids_b) and ids_a | ids_b == set(range(10))
    np.testing.assert_array_equal(a.labels, a.images[:, 0, 0] % 3)
    a2, _ = full.split(0.35, seed=3)
    np.testing.assert_array_equal(a.images, a2.images)
    others = [set(full.split(0.35, seed=s)[0].images[:, 0, 0]) for s in range(4, 10)]
    assert any(o != ids_a for o in others)
    with pytest.raises(OodgateError, match="between 0 and 1"):
        full.split(1.0)
    with pytest.raises(OodgateError, match="leaves one part empty"):
        full.split(0.01)


def test_subset_by_indices_and_mask() -> None:
    full = numbered_set(6)
    sub = full.subset([4, 1], name="pair")
    assert sub.name == "pair" and sub.images[:, 0, 0].tolist() == [4, 1] and sub.labels.tolist() == [1, 1]
    assert full.subset(full.labels == 0).images[:, 0, 0].tolist() == [0, 3]
    with pytest.raises(OodgateError, match="bad index"):
        full.subset([10])


def test_batches_cover_the_set_in_order_with_labels() -> None:
    full = digits("test")
    pre = Preprocess(channels="L", mean=(0.5,), std=(0.5,))
    batches = list(full.batches(pre, batch_size=128))
    assert [len(x) for x, _ in batches] == [128, 128, 128, 13]
    x = np.concatenate([x for x, _ in batches])
    assert x.dtype == np.float32 and x.shape == (397, 1, 8, 8)
    np.testing.assert_array_equal(x, (full.images[:, None] / np.float32(255) - np.float32(0.5)) / np.float32(0.5))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), full.labels)
    assert all(y is None for _, y in ImageSet("u", full.images[:5]).batches(pre))


def test_image_set_validates_its_fields() -> None:
    with pytest.raises(OodgateError, match=r"images must be uint8 \(N, H, W\) or \(N, H, W, 3\), got float64"):
        ImageSet("bad", np.zeros((2, 4, 4)))
    with pytest.raises(OodgateError, match=r"labels must be integers of shape \(2,\)"):
        ImageSet("bad", np.zeros((2, 4, 4), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(OodgateError, match="label 2 has no class name"):
        ImageSet("bad", np.zeros((2, 4, 4), np.uint8), labels=[0, 2], class_names=["a", "b"])


# -- OOD sets --------------------------------------------------------------------------------


def test_ood_set_names_and_availability() -> None:
    assert ood_set_names() == ["textures", "photos", "faces", "sklearn-photos", "noise", "fashion-mnist", "digits"]
    present = available_ood_sets()
    assert {"textures", "photos", "faces", "sklearn-photos", "noise", "digits"} <= set(present)
    assert ("fashion-mnist" in present) == fashion_mnist_available()


@pytest.mark.parametrize("name", ood_set_names())
def test_each_ood_set_has_exact_size_dtype_and_is_seeded(name: str) -> None:
    if name not in available_ood_sets():
        pytest.skip(f"data for OOD set {name!r} is not installed")
    gray = ood_set(name, n=30, seed=0)
    assert gray.name == f"ood:{name}" and gray.labels is None
    assert gray.images.dtype == np.uint8 and gray.images.shape == (30, 28, 28)
    assert gray.images.std() > 5  # real content, not a constant
    rgb = ood_set(name, n=12, size=(20, 24), channels="RGB", seed=0)
    assert rgb.images.shape == (12, 20, 24, 3)
    assert ood_set(name, n=30, seed=0).fingerprint() == gray.fingerprint()
    assert ood_set(name, n=30, seed=1).fingerprint() != gray.fingerprint()
    np.testing.assert_array_equal(ood_set(name, n=10, seed=0).images, gray.images[:10])


def test_photo_crops_differ_between_seeds_and_within_a_set() -> None:
    a = ood_set("photos", n=20, seed=0).images
    b = ood_set("photos", n=20, seed=1).images
    assert not np.array_equal(a, b)
    assert len({im.tobytes() for im in a}) == 20


def test_faces_are_capped_at_200_and_noise_is_uniform() -> None:
    faces = ood_set("faces", n=500)
    assert len(faces) == 200 and len({im.tobytes() for im in faces.images}) == 200
    noise = ood_set("noise", n=200, size=(16, 16)).images
    assert noise.min() == 0 and noise.max() == 255
    assert abs(noise.mean() - 127.5) < 2
    counts = np.bincount(noise.reshape(-1), minlength=256)
    assert counts.min() > 100 and counts.max() < 100 * 4  # 51200 draws: ~200 per value


def test_digits_as_ood_are_resized_digits() -> None:
    small = ood_set("digits", n=5, size=(8, 8), seed=2).images
    everything = digits("all").images
    lookup = {im.tobytes() for im in everything}
    assert all(im.tobytes() in lookup for im in small)  # same size: no resampling


def test_bad_ood_arguments_are_errors() -> None:
    with pytest.raises(OodgateError, match=r"unknown OOD set 'clouds': use one of \['textures'"):
        ood_set("clouds")
    with pytest.raises(OodgateError, match="n must be a positive integer"):
        ood_set("noise", n=0)
    with pytest.raises(OodgateError, match=r"size must be \(H, W\)"):
        ood_set("noise", size=(0, 4))
    with pytest.raises(OodgateError, match="channels must be 'L' or 'RGB'"):
        ood_set("noise", channels="RGBA")


# -- Fashion-MNIST -----------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_on_small_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 3, 3, 1], np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("OODGATE_FASHION_MNIST_DIR", str(tmp_path))
    assert fashion_mnist_available()
    test = fashion_mnist("test")
    np.testing.assert_array_equal(test.images, images)
    assert test.labels.tolist() == [9, 0, 3, 3, 1] and test.labels.dtype == np.int64
    assert test.class_names[9] == "Ankle boot" and test.class_names[0] == "T-shirt/top"
    np.testing.assert_array_equal(fashion_mnist("train", limit=2).images, images[:2])


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    assert not fashion_mnist_available(tmp_path)
    expected = (
        r"Fashion-MNIST not found in .*: install Debian's dataset-fashion-mnist "
        r"\(apt-get install -y dataset-fashion-mnist\)"
    )
    with pytest.raises(OodgateError, match=expected):
        fashion_mnist("test", directory=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"junk")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(OodgateError, match="cannot read .*t10k-images"):
        fashion_mnist("test", directory=tmp_path)


@needs_fashion_mnist
def test_fashion_mnist_sizes_and_labels() -> None:
    train, test = fashion_mnist("train"), fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert len(fashion_mnist("test", limit=100)) == 100


# -- the user's own data ------------------------------------------------------------------------


def save_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 5), value, np.uint8)).save(path)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    save_png(tmp_path / "dog" / "b.png", 20)
    save_png(tmp_path / "dog" / "a.PNG", 10)
    save_png(tmp_path / "cat" / "x.png", 30)
    save_png(tmp_path / "cat" / "deeper" / "y.png", 40)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    save_png(tmp_path / ".hidden" / "z.png", 50)
    found = image_folder(tmp_path)
    assert found.class_names == ["cat", "dog"]
    assert [Path(p).name for p in found.images] == ["y.png", "x.png", "a.PNG", "b.png"]
    assert found.labels.tolist() == [0, 0, 1, 1]
    x = np.concatenate([x for x, _ in found.batches(Preprocess(channels="L"), batch_size=3)])
    np.testing.assert_array_equal(x[:, 0, 0, 0] * 255, [40, 30, 10, 20])


def test_flat_image_folder_has_no_labels(tmp_path: Path) -> None:
    save_png(tmp_path / "2.png", 2)
    save_png(tmp_path / "1.png", 1)
    flat = image_folder(tmp_path)
    assert [Path(p).name for p in flat.images] == ["1.png", "2.png"]
    assert flat.labels is None and flat.class_names is None


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(OodgateError, match="does not exist"):
        image_folder(tmp_path / "nope")
    with pytest.raises(OodgateError, match="holds no images"):
        image_folder(tmp_path)
    save_png(tmp_path / "cls" / "a.png", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OodgateError, match=r"class folder\(s\) \['empty'\]"):
        image_folder(tmp_path)
    (tmp_path / "empty").rmdir()
    save_png(tmp_path / "loose.png", 1)
    with pytest.raises(OodgateError, match="both images .* and class subfolders"):
        image_folder(tmp_path)


def test_array_file_npz_and_npy(tmp_path: Path) -> None:
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    np.savez(tmp_path / "set.npz", images=images, labels=np.array([1, 0, 1]), class_names=np.array(["no", "yes"]))
    loaded = array_file(tmp_path / "set.npz")
    np.testing.assert_array_equal(loaded.images, images)
    assert loaded.labels.tolist() == [1, 0, 1] and loaded.labels.dtype == np.int64
    assert loaded.class_names == ["no", "yes"]
    np.savez(tmp_path / "xy.npz", x=images[..., None], y=np.array([0, 0, 2]))
    xy = array_file(tmp_path / "xy.npz")
    assert xy.images.shape == (3, 4, 4) and xy.labels.tolist() == [0, 0, 2] and xy.class_names is None
    np.save(tmp_path / "plain.npy", images)
    plain = array_file(tmp_path / "plain.npy")
    assert plain.labels is None and plain.fingerprint() == ImageSet("x", images).fingerprint()


def test_array_file_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "keys.npz", pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(OodgateError, match=r"unknown array\(s\) \['pixels'\]: accepted names are 'images'"):
        array_file(tmp_path / "keys.npz")
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 4), np.uint8))
    with pytest.raises(OodgateError, match=r"images must have shape \(N, H, W\) or \(N, H, W, 1\|3\), got \(2, 4\)"):
        array_file(tmp_path / "shape.npz")
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(OodgateError, match="images must be uint8, got float64"):
        array_file(tmp_path / "float.npz")
    np.savez(tmp_path / "labels.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(OodgateError, match=r"labels must be integers of shape \(2,\)"):
        array_file(tmp_path / "labels.npz")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(OodgateError, match="cannot read .*junk.npy"):
        array_file(tmp_path / "junk.npy")


# -- load_image_set -------------------------------------------------------------------------


def test_load_image_set_resolves_every_form(tmp_path: Path) -> None:
    assert len(load_image_set("digits:test")) == 397
    assert len(load_image_set("digits")) == 1797
    assert load_image_set("ood:noise", n=7).images.shape == (7, 28, 28)
    assert load_image_set("textures", n=3, size=(8, 8), channels="RGB").images.shape == (3, 8, 8, 3)
    assert load_image_set("ood:digits", n=4).images.shape == (4, 28, 28)
    save_png(tmp_path / "folder" / "a" / "1.png", 1)
    assert load_image_set(str(tmp_path / "folder")).class_names == ["a"]
    np.savez(tmp_path / "set.npz", x=np.zeros((2, 3, 3), np.uint8))
    assert len(load_image_set(str(tmp_path / "set.npz"))) == 2


@needs_fashion_mnist
def test_load_image_set_fashion_mnist() -> None:
    assert len(load_image_set("fashion-mnist:test")) == 10000
    assert len(load_image_set("fashion-mnist:train", limit=50)) == 50
    assert load_image_set("ood:fashion-mnist", n=5, size=(8, 8)).images.shape == (5, 8, 8)


def test_load_image_set_errors(tmp_path: Path) -> None:
    expected = r"unknown image set 'imagenet': accepted forms: 'digits'.*'ood:NAME'.*textures"
    with pytest.raises(OodgateError, match=expected):
        load_image_set("imagenet")
    with pytest.raises(OodgateError, match="no such folder"):
        load_image_set(str(tmp_path / "missing" / "folder"))
    with pytest.raises(OodgateError, match="no such array file"):
        load_image_set(str(tmp_path / "missing.npz"))
    with pytest.raises(OodgateError, match=r"bad options \['limit'\] for image set 'digits:test'"):
        load_image_set("digits:test", limit=3)
    with pytest.raises(OodgateError, match="unknown OOD set 'clouds'"):
        load_image_set("ood:clouds")
