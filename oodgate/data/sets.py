"""Image sets: the built-in offline ones (digits, Fashion-MNIST, OOD sets) and the user's own.

Nothing here downloads: every built-in set reads files that ship with scikit-learn, scikit-image or
Debian's dataset-fashion-mnist package. scikit-learn and scikit-image are optional (``oodgate[data]``)
and imported only by the functions that need them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from oodgate.data.preprocess import Preprocess, read_image
from oodgate.errors import OodgateError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "OODGATE_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DIGITS_SPLITS = {"train": (0, 1000), "calib": (1000, 1400), "test": (1400, 1797)}
DIGITS_SEED = 0

#: scikit-image's bundled texture-like images (moon: a grey lunar surface with few features).
SKIMAGE_TEXTURES = ("brick.png", "grass.png", "gravel.png", "moon.png")
#: scikit-image's bundled natural photos (horse.png is left out: it is a drawn silhouette).
SKIMAGE_PHOTOS = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg",
    "motorcycle_left.png", "hubble_deep_field.jpg", "coins.png",
)  # fmt: skip
SKIMAGE_FACES = "lfw_subset.npy"
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")

_PIP_HINT = "install the data extra: pip install 'oodgate[data]'"


@dataclass(eq=False)  # equality is identity: comparing arrays field by field is ambiguous
class ImageSet:
    """A named set of raw images (uint8 arrays, or file paths) with optional labels and class names."""

    name: str
    images: np.ndarray | list
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    #: "folders" when labels are the sorted index of class subfolder names (image_folder), which says nothing about
    #: a model's class order until mapped with `for_classes`; None for sets whose labels are the data set's own
    labels_from: str | None = None
    #: files left out because they could not be read, as (path, reason) (``skip_unreadable=True``)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            if self.images.dtype != np.uint8 or not (
                self.images.ndim == 3 or (self.images.ndim == 4 and self.images.shape[-1] == 3)
            ):
                raise OodgateError(
                    f"image set {self.name!r}: images must be uint8 (N, H, W) or (N, H, W, 3), got "
                    f"{self.images.dtype} {self.images.shape}: convert floats in [0, 1] with "
                    "(x * 255).round().astype(np.uint8), or pass a list of images"
                )
        elif isinstance(self.images, (list, tuple)):
            self.images = list(self.images)
            for item in self.images:
                if not isinstance(item, (str, os.PathLike, np.ndarray, Image.Image)):
                    raise OodgateError(
                        f"image set {self.name!r}: list items must be file paths, arrays or PIL images, "
                        f"got {type(item).__name__}"
                    )
        else:
            raise OodgateError(
                f"image set {self.name!r}: images must be a uint8 array or a list of file paths / "
                f"arrays, got {type(self.images).__name__}"
            )
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.dtype.kind not in "iu" or labels.shape != (len(self),):
                raise OodgateError(
                    f"image set {self.name!r}: labels must be integers of shape ({len(self)},), got "
                    f"{labels.dtype} {labels.shape}"
                )
            if len(labels) and labels.min() < 0:
                raise OodgateError(
                    f"image set {self.name!r}: labels must be >= 0, got {int(labels.min())}"
                )
            self.labels = labels.astype(np.int64)
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
            if self.labels is not None and len(self.labels) and self.labels.max() >= len(self.class_names):
                raise OodgateError(
                    f"image set {self.name!r}: label {int(self.labels.max())} has no class name "
                    f"({len(self.class_names)} names given): give one name per class"
                )

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        if isinstance(self.images, np.ndarray):
            what = f"{self.images.dtype} {self.images.shape}"
        else:
            what = f"{len(self.images)} items"
        labelled = "labelled" if self.labels is not None else "unlabelled"
        return f"ImageSet({self.name!r}, {what}, {labelled})"

    def subset(self, index: Any, name: str | None = None) -> ImageSet:
        """The images at `index` (int array, bool mask, slice or list), in that order."""
        try:
            positions = np.atleast_1d(np.arange(len(self))[index])
        except IndexError as err:
            raise OodgateError(
                f"bad index for image set {self.name!r} of {len(self)} images: {err}"
            ) from err
        if isinstance(self.images, np.ndarray):
            images: np.ndarray | list = self.images[positions]
        else:
            images = [self.images[i] for i in positions]
        labels = None if self.labels is None else self.labels[positions]
        return ImageSet(
            name=self.name if name is None else name,
            images=images,
            labels=labels,
            class_names=None if self.class_names is None else list(self.class_names),
            labels_from=self.labels_from,
            skipped=list(self.skipped),
        )

    def for_classes(self, class_names: Sequence[str] | None, class_map: dict[str, Any] | None = None) -> ImageSet:
        """This set with labels re-indexed to a model's class order (``class_names``), matched by name.

        ``class_map`` maps this set's class (folder) names to the model's class names or indices explicitly (needed
        when the model has no class names, or names that cannot be folder names); classes missing from the data
        are then allowed. Without it, every set class must be a model class and every model class must be present.
        """
        if self.labels is None or (class_names is None and not class_map):
            return self
        if self.class_names is None:
            if class_map:
                raise OodgateError(f"image set {self.name!r} has no class names, so a class map cannot apply: "
                                   "use a folder with one subfolder per class")
            return self
        model = None if class_names is None else [str(c) for c in class_names]
        if class_map is None and model == self.class_names:  # same names, same order: the labels are the model's
            return ImageSet(self.name, self.images, self.labels, list(self.class_names), labels_from=None,
                            skipped=list(self.skipped))
        mapping = {str(k): v for k, v in (class_map or {}).items()}
        unused = sorted(set(mapping) - set(self.class_names))
        if unused:
            raise OodgateError(f"class map names {unused} that are not classes of {self.name!r} "
                               f"(its classes: {self.class_names}): fix the map")
        index: list[int] = []
        unknown: list[str] = []
        for name in self.class_names:
            target = mapping.get(name, None if class_map else name)
            if target is None:
                unknown.append(name)
                continue
            if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
                limit = len(model) if model is not None else None
                if target < 0 or (limit is not None and target >= limit):
                    raise OodgateError(f"class map sends {name!r} to index {target}, outside the model's "
                                       f"{limit} classes (0..{(limit or 1) - 1})")
                index.append(int(target))
            elif model is not None and str(target) in model:
                index.append(model.index(str(target)))
            elif model is None and str(target).isdigit():
                index.append(int(target))
            else:
                unknown.append(name)
        if unknown:
            hint = (f"the model's classes are {model[:12]}{' …' if model and len(model) > 12 else ''}"
                    if model is not None else "the model has no class names")
            raise OodgateError(f"class folder(s) {unknown} of {self.name!r} are not classes of the model ({hint}): "
                               "rename them, or map them explicitly (class_map / --class-map FOLDER=CLASS)")
        if len(set(index)) != len(index):
            raise OodgateError(f"class map sends two classes of {self.name!r} to the same model class: fix the map")
        if not class_map and model is not None:
            missing = [c for c in model if c not in self.class_names]
            if missing:
                raise OodgateError(f"image set {self.name!r} has no folder for the model's class(es) "
                                   f"{missing[:12]}{' …' if len(missing) > 12 else ''}: add them, or map the "
                                   "present folders explicitly (class_map / --class-map FOLDER=CLASS)")
        lookup = np.asarray(index, dtype=np.int64)
        names = model if model is not None else [str(i) for i in range(int(lookup.max()) + 1)]
        return ImageSet(self.name, self.images, lookup[self.labels], list(names), labels_from=None,
                        skipped=list(self.skipped))

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Seeded disjoint split; the first part holds round(fraction * N) images, both keep their order."""
        if not 0.0 < fraction < 1.0:
            raise OodgateError(f"split fraction must be between 0 and 1 (exclusive), got {fraction}")
        n = len(self)
        k = round(fraction * n)
        if k == 0 or k == n:
            raise OodgateError(
                f"splitting {n} images at fraction {fraction} leaves one part empty: "
                "use a fraction nearer 0.5 or more images"
            )
        order = np.random.default_rng(seed).permutation(n)
        first, second = np.sort(order[:k]), np.sort(order[k:])
        return (
            self.subset(first, name=f"{self.name}[split {fraction:g} seed {seed}: part 1]"),
            self.subset(second, name=f"{self.name}[split {fraction:g} seed {seed}: part 2]"),
        )

    def batches(
        self, preprocess: Preprocess, batch_size: int = 256
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield (float32 (N, C, H, W) model input, int64 labels or None) batches in order."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise OodgateError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            if isinstance(self.images, np.ndarray):
                x = preprocess.load_batch(self.images[start:stop])
            else:
                x = preprocess.stack([preprocess.load_image(im) for im in self.images[start:stop]])
            yield x, None if self.labels is None else self.labels[start:stop]

    def fingerprint(self) -> str:
        """sha256 hex over the raw image bytes (file bytes for paths), shapes and labels."""
        digest = hashlib.sha256()

        def put(tag: str, payload: bytes = b"") -> None:
            digest.update(struct.pack("<Q", len(tag)) + tag.encode())
            digest.update(struct.pack("<Q", len(payload)) + payload)

        def put_array(array: np.ndarray) -> None:
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            put(f"array {little.dtype.str} {array.shape}", np.ascontiguousarray(little).tobytes())

        if isinstance(self.images, np.ndarray):
            put_array(self.images)
        else:
            put(f"list {len(self.images)}")
            for item in self.images:
                if isinstance(item, np.ndarray):
                    put_array(item)
                elif isinstance(item, Image.Image):
                    put(f"pil {item.mode} {item.size}", item.tobytes())
                else:
                    try:
                        put("file", Path(item).read_bytes())
                    except OSError as err:
                        raise OodgateError(
                            f"cannot fingerprint image set {self.name!r}: cannot read {item} ({err})"
                        ) from err
        if self.labels is None:
            put("no labels")
        else:
            put_array(self.labels.astype(np.int64))
        return digest.hexdigest()


# -- optional dependencies -----------------------------------------------------------------


def _import_optional(module: str, needed_for: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise OodgateError(f"{needed_for} needs {module.split('.')[0]}: {_PIP_HINT}") from err


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (None when not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _skimage_data_dir() -> Path:
    root = _package_dir("skimage")
    if root is None:
        raise OodgateError(f"scikit-image's bundled images are needed but scikit-image is missing: {_PIP_HINT}")
    return root / "data"


# -- digits ------------------------------------------------------------------------------------


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (1797, 8, 8) values 0..16 and labels, as `load_digits` gives them."""
    root = _package_dir("sklearn")
    csv = None if root is None else root / "datasets" / "data" / "digits.csv.gz"
    if csv is not None and csv.is_file():
        # the file load_digits reads; reading it directly skips importing scikit-learn (seconds)
        table = np.loadtxt(csv, delimiter=",")
        if table.shape == (1797, 65):
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    bunch = _import_optional("sklearn.datasets", "the digits set").load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    values, labels = _digits_raw()
    # values 0..16 → 0..255; numpy rounds half to even (8 → 127.5 → 128)
    images = np.round(values * 255.0 / 16.0).astype(np.uint8)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def digits(split: str = "train") -> ImageSet:
    """scikit-learn's 8x8 digits as uint8: "train" 1000, "calib" 400, "test" 397 images, or "all" 1797."""
    images, labels = _digits_arrays()
    if split == "all":
        index = np.arange(len(images))
    elif split in DIGITS_SPLITS:
        start, stop = DIGITS_SPLITS[split]
        index = np.random.default_rng(DIGITS_SEED).permutation(len(images))[start:stop]
    else:
        raise OodgateError(
            f"unknown digits split {split!r}: use one of {[*DIGITS_SPLITS, 'all']}"
        )
    return ImageSet(
        name=f"digits:{split}",
        images=images[index].copy(),
        labels=labels[index].copy(),
        class_names=[str(d) for d in range(10)],
    )


# -- Fashion-MNIST -------------------------------------------------------------------------


def _fashion_mnist_dir(directory: str | os.PathLike | None) -> Path:
    if directory is not None:
        return Path(directory)
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_available(directory: str | os.PathLike | None = None) -> bool:
    """True when the four Fashion-MNIST idx files are in the folder (see `fashion_mnist`)."""
    folder = _fashion_mnist_dir(directory)
    return all(
        _find_idx(folder, stem) is not None for pair in _FASHION_MNIST_FILES.values() for stem in pair
    )


def _read_idx(path: Path, limit: int | None) -> np.ndarray:
    """Read an IDX uint8 file (optionally gzipped), only the first `limit` items."""
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) != 4 or header[:2] != b"\x00\x00" or header[2] != 0x08:
                raise OodgateError(f"cannot read {path}: not a uint8 IDX file (header {header!r})")
            ndim = header[3]
            dims = list(struct.unpack(f">{ndim}I", f.read(4 * ndim)))
            if limit is not None:
                dims[0] = min(dims[0], limit)
            count = int(np.prod(dims))
            payload = f.read(count)
    except (OSError, EOFError, struct.error) as err:
        raise OodgateError(
            f"cannot read {path}: corrupt or truncated ({err}); reinstall dataset-fashion-mnist"
        ) from err
    if len(payload) != count:
        raise OodgateError(
            f"cannot read {path}: truncated ({len(payload)} of {count} bytes); reinstall dataset-fashion-mnist"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def fashion_mnist(
    split: str = "train", limit: int | None = None, directory: str | os.PathLike | None = None
) -> ImageSet:
    """Fashion-MNIST 28x28 uint8: "train" 60000 or "test" 10000 images (the first `limit` if given).

    Read from `directory`, else $OODGATE_FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist.
    """
    if split not in _FASHION_MNIST_FILES:
        raise OodgateError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
        raise OodgateError(f"limit must be a positive integer or None, got {limit!r}")
    folder = _fashion_mnist_dir(directory)
    paths = [_find_idx(folder, stem) for stem in _FASHION_MNIST_FILES[split]]
    if any(p is None for p in paths):
        raise OodgateError(
            f"Fashion-MNIST not found in {folder}: install Debian's dataset-fashion-mnist "
            f"(apt-get install -y dataset-fashion-mnist), or point {FASHION_MNIST_ENV} at a folder "
            f"holding {', '.join(s + '.gz' for s in _FASHION_MNIST_FILES[split])}"
        )
    images = _read_idx(paths[0], limit)  # type: ignore[arg-type]
    labels = _read_idx(paths[1], limit).astype(np.int64)  # type: ignore[arg-type]
    if images.ndim != 3 or labels.shape != (len(images),):
        raise OodgateError(
            f"Fashion-MNIST files in {folder} do not match: images {images.shape}, labels "
            f"{labels.shape}; reinstall dataset-fashion-mnist"
        )
    return ImageSet(
        name=f"fashion-mnist:{split}",
        images=images.copy(),
        labels=labels,
        class_names=list(FASHION_MNIST_CLASSES),
    )


# -- OOD sets ------------------------------------------------------------------------------


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        return (int(size[0]), int(size[1]))
    raise OodgateError(f"size must be (H, W) with positive integers (or one int), got {size!r}")


@functools.lru_cache(maxsize=16)
def _load_sources(paths: tuple[str, ...], channels: str) -> tuple[Image.Image, ...]:
    return tuple(read_image(p).convert(channels) for p in paths)


def _skimage_sources(files: Sequence[str], what: str, channels: str) -> tuple[Image.Image, ...]:
    folder = _skimage_data_dir()
    present = tuple(str(folder / f) for f in files if (folder / f).is_file())
    if not present:
        raise OodgateError(
            f"no {what} images found in {folder} (looked for {', '.join(files)}): "
            "reinstall scikit-image (its wheels ship these files)"
        )
    return _load_sources(present, channels)


@functools.lru_cache(maxsize=2)
def _sklearn_sources(channels: str) -> tuple[Image.Image, ...]:
    datasets = _import_optional("sklearn.datasets", "the sklearn-photos set")
    bunch = datasets.load_sample_images()
    return tuple(Image.fromarray(np.asarray(im, dtype=np.uint8)).convert(channels) for im in bunch.images)


def _random_crops(
    sources: Sequence[Image.Image], n: int, size: tuple[int, int], rng: np.random.Generator
) -> list[np.ndarray]:
    """n crops with side 1/8..1/2 of the source's shorter side, of the target's aspect, resized to size."""
    th, tw = size
    crops = []
    for _ in range(n):
        source = sources[int(rng.integers(len(sources)))]
        w, h = source.size
        short = min(h, w)
        lo = max(1, short // 8)
        side = int(rng.integers(lo, max(lo, short // 2) + 1))
        scale = side / min(th, tw)
        ch = min(h, max(1, round(th * scale)))
        cw = min(w, max(1, round(tw * scale)))
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        crop = source.crop((left, top, left + cw, top + ch)).resize((tw, th), Image.Resampling.BILINEAR)
        crops.append(np.asarray(crop, dtype=np.uint8))
    return crops


def _resized(images: np.ndarray, size: tuple[int, int], channels: str) -> list[np.ndarray]:
    th, tw = size
    out = []
    for image in images:
        pil = Image.fromarray(np.ascontiguousarray(image)).convert(channels)
        if pil.size != (tw, th):
            pil = pil.resize((tw, th), Image.Resampling.BILINEAR)
        out.append(np.asarray(pil, dtype=np.uint8))
    return out


def _ood_textures(n: int, size: tuple[int, int], channels: str, rng: np.random.Generator) -> list:
    return _random_crops(_skimage_sources(SKIMAGE_TEXTURES, "texture", channels), n, size, rng)


def _ood_photos(n: int, size: tuple[int, int], channels: str, rng: np.random.Generator) -> list:
    return _random_crops(_skimage_sources(SKIMAGE_PHOTOS, "photo", channels), n, size, rng)


def _ood_sklearn_photos(n: int, size: tuple[int, int], channels: str, rng: np.random.Generator) -> list:
    return _random_crops(_sklearn_sources(channels), n, size, rng)


def _ood_faces(n: int, size: tuple[int, int], channels: str, rng: np.random.Generator) -> list:
    path = _skimage_data_dir() / SKIMAGE_FACES
    if not path.is_file():
        raise OodgateError(f"no faces found: {path} is missing; reinstall scikit-image")
    faces = np.round(np.load(path, allow_pickle=False) * 255.0).astype(np.uint8)
    return _resized(faces[rng.permutation(len(faces))[:n]], size, channels)


def _ood_noise(n: int, size: tuple[int, int], channels: str, rng: np.random.Generator) -> list:
    shape = (n, *size) if channels == "L" else (n, *size, 3)
    return list(rng.integers(0, 256, size=shape, dtype=np.uint8))


def _ood_fashion_mnist(n: int, size: tuple[int, int], channels: str, rng: np.random.Generator) -> list:
    images = fashion_mnist("test").images
    return _resized(images[rng.permutation(len(images))[:n]], size, channels)


def _ood_digits(n: int, size: tuple[int, int], channels: str, rng: np.random.Generator) -> list:
    images = _digits_arrays()[0]
    return _resized(images[rng.permutation(len(images))[:n]], size, channels)


_OOD_SETS: dict[str, Callable[[int, tuple[int, int], str, np.random.Generator], list]] = {
    "textures": _ood_textures,
    "photos": _ood_photos,
    "faces": _ood_faces,
    "sklearn-photos": _ood_sklearn_photos,
    "noise": _ood_noise,
    "fashion-mnist": _ood_fashion_mnist,
    "digits": _ood_digits,
}


def ood_set_names() -> list[str]:
    """Names of the built-in OOD sets, whether or not their data is installed."""
    return list(_OOD_SETS)


def _ood_set_present(name: str) -> bool:
    if name == "noise":
        return True
    if name == "fashion-mnist":
        return fashion_mnist_available()
    if name in ("digits", "sklearn-photos"):
        root = _package_dir("sklearn")
        if root is None:
            return False
        if name == "digits":
            return (root / "datasets" / "data" / "digits.csv.gz").is_file()
        return all((root / "datasets" / "images" / f).is_file() for f in SKLEARN_PHOTOS)
    root = _package_dir("skimage")
    if root is None:
        return False
    files = {"textures": SKIMAGE_TEXTURES, "photos": SKIMAGE_PHOTOS, "faces": (SKIMAGE_FACES,)}[name]
    return any((root / "data" / f).is_file() for f in files)


def available_ood_sets() -> list[str]:
    """Names of the built-in OOD sets whose data is present on this machine."""
    return [name for name in _OOD_SETS if _ood_set_present(name)]


def ood_set(
    name: str,
    n: int = 500,
    size: int | tuple[int, int] = (28, 28),
    channels: str = "L",
    seed: int = 0,
) -> ImageSet:
    """`n` uint8 OOD images of exactly `size`, (N, H, W) for "L" or (N, H, W, 3) for "RGB", seeded.

    - "textures", "photos", "sklearn-photos": random crops (side 1/8 to 1/2 of the source's shorter
      side, with the aspect of `size`) of scikit-image's bundled textures / photos or scikit-learn's
      sample photos, resized to `size` (bilinear).
    - "faces": scikit-image's 200 LFW faces, resized; `n` is capped at 200 (no repeats).
    - "noise": uniform random pixels.
    - "fashion-mnist": Fashion-MNIST test images, resized (near-OOD for digits); `n` capped at 10000.
    - "digits": scikit-learn's digits, resized (near-OOD for Fashion-MNIST); `n` capped at 1797.

    The first k images do not depend on `n` (n=100 gives the first 100 of n=500 with the same seed).
    """
    if name not in _OOD_SETS:
        raise OodgateError(
            f"unknown OOD set {name!r}: use one of {ood_set_names()} "
            f"(present on this machine: {available_ood_sets()})"
        )
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise OodgateError(f"n must be a positive integer, got {n!r}")
    if channels not in ("L", "RGB"):
        raise OodgateError(f"channels must be 'L' or 'RGB', got {channels!r}")
    size = _check_size(size)
    rng = np.random.default_rng(seed)
    images = _OOD_SETS[name](int(n), size, channels, rng)
    return ImageSet(name=f"ood:{name}", images=np.stack(images).astype(np.uint8, copy=False))


# -- the user's own images ------------------------------------------------------------------


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def readable_images(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Decode every file; return (the readable paths, [(path, reason)] for those that are not)."""
    ok, skipped = [], []
    for p in paths:
        try:
            read_image(p)
        except OodgateError as err:
            skipped.append((str(p), str(err).split(": ", 1)[-1].split(" (to skip", 1)[0]))
        else:
            ok.append(str(p))
    return ok, skipped


def _without_unreadable(found: ImageSet) -> ImageSet:
    """The set without the files that cannot be decoded; they are listed in ``.skipped``."""
    ok, skipped = readable_images(found.images)
    if not ok:
        raise OodgateError(f"no readable image in {found.name}: all {len(skipped)} files failed "
                           f"(first: {skipped[0][0]}: {skipped[0][1]})")
    keep = set(ok)
    index = [i for i, p in enumerate(found.images) if p in keep]
    out = found.subset(index)
    out.skipped = skipped
    return out


def image_folder(path: str | os.PathLike, class_names: Sequence[str] | None = None,
                 class_map: dict[str, Any] | None = None, *, skip_unreadable: bool = False) -> ImageSet:
    """Images in a folder: one subfolder per class, or flat (no labels).

    Class subfolders are searched recursively; hidden files and folders are skipped; paths are sorted. Labels are
    the model's class indices when ``class_names`` (the model's, in output order) or ``class_map`` (folder ->
    class name or index) is given (see `ImageSet.for_classes`); otherwise the index of the sorted folder names.
    A corrupt or unreadable file is an error when it is read, unless ``skip_unreadable``: then every file is
    decoded up front and those that fail are left out and listed in the set's ``skipped``.
    """
    found = _image_folder(path)
    if skip_unreadable:
        found = _without_unreadable(found)
    return found.for_classes(class_names, class_map) if (class_names is not None or class_map) else found


def _image_folder(path: str | os.PathLike) -> ImageSet:
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise OodgateError(f"image folder {folder} {what}: pass a folder of images or of class subfolders")
    extensions = " ".join(IMAGE_EXTENSIONS)
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = {sub.name: _image_files(sub, recursive=True) for sub in subfolders}
    top_level = _image_files(folder, recursive=False)
    if any(per_class.values()):
        if top_level:
            raise OodgateError(
                f"image folder {folder} holds both images ({top_level[0].name}, ...) and class "
                "subfolders: move the loose images into a class subfolder, or into a folder of their own"
            )
        empty = [name for name, files in per_class.items() if not files]
        if empty:
            raise OodgateError(
                f"class folder(s) {empty} in {folder} hold no images ({extensions}): "
                "add images or remove them"
            )
        class_names = list(per_class)
        paths = [str(p) for files in per_class.values() for p in files]
        labels = np.concatenate(
            [np.full(len(files), i, dtype=np.int64) for i, files in enumerate(per_class.values())]
        )
        return ImageSet(name=str(folder), images=paths, labels=labels, class_names=class_names,
                        labels_from="folders")
    if not top_level:
        raise OodgateError(
            f"image folder {folder} holds no images ({extensions}), directly or in class subfolders"
        )
    return ImageSet(name=str(folder), images=[str(p) for p in top_level])


def _images_from_array(array: np.ndarray, source: str) -> np.ndarray:
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3)):
        raise OodgateError(
            f"{source}: images must have shape (N, H, W) or (N, H, W, 1|3), got {array.shape}"
        )
    if array.dtype.kind in "iu" and array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise OodgateError(
                f"{source}: integer images must hold 0..255, got {int(array.min())}..{int(array.max())}"
            )
        array = array.astype(np.uint8)
    if array.dtype != np.uint8:
        raise OodgateError(
            f"{source}: images must be uint8, got {array.dtype}: save floats in [0, 1] as "
            "(x * 255).round().astype(np.uint8)"
        )
    return array


def array_file(path: str | os.PathLike) -> ImageSet:
    """Images from a .npy file, or a .npz file with "images"/"x", optional "labels"/"y" and "class_names"."""
    file = Path(path)
    if not file.is_file():
        raise OodgateError(f"no such array file: {file}")
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise OodgateError(f"array file {file} must end in .npy or .npz, got {file.suffix!r}")
    try:
        loaded = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise OodgateError(
            f"cannot read {file}: not a plain numpy file, corrupt, or holding Python objects, which "
            f"are not loaded for safety (numpy says {err}); save plain arrays (class names as str)"
        ) from err
    if isinstance(loaded, np.ndarray):
        return ImageSet(name=str(file), images=_images_from_array(np.asarray(loaded), str(file)))
    accepted = {"images", "x", "labels", "y", "class_names"}
    with loaded:
        keys = set(loaded.files)
        unknown = sorted(keys - accepted)
        if unknown:
            raise OodgateError(
                f"{file} holds unknown array(s) {unknown}: accepted names are 'images' (or 'x'), "
                "'labels' (or 'y') and 'class_names'"
            )
        image_keys = sorted(keys & {"images", "x"})
        label_keys = sorted(keys & {"labels", "y"})
        if len(image_keys) != 1 or len(label_keys) > 1:
            raise OodgateError(
                f"{file} must hold exactly one of 'images'/'x' and at most one of 'labels'/'y', "
                f"got {sorted(keys)}"
            )
        try:
            images = _images_from_array(loaded[image_keys[0]], str(file))
            labels = loaded[label_keys[0]] if label_keys else None
            class_names = loaded["class_names"] if "class_names" in keys else None
        except (ValueError, OSError) as err:
            raise OodgateError(
                f"cannot read {file}: an array is corrupt or holds Python objects, which are not "
                f"loaded for safety (numpy says {err}); save plain arrays (class names as str)"
            ) from err
    if labels is not None and (labels.dtype.kind not in "iu" or labels.shape != (len(images),)):
        raise OodgateError(
            f"{file}: labels must be integers of shape ({len(images)},), got {labels.dtype} {labels.shape}"
        )
    if class_names is not None:
        if class_names.ndim != 1 or class_names.dtype.kind not in "US":
            raise OodgateError(
                f"{file}: class_names must be a 1-D str array, got {class_names.dtype} {class_names.shape}"
            )
        class_names = [str(c) for c in class_names.tolist()]
    return ImageSet(name=str(file), images=images, labels=labels, class_names=class_names)


# -- one string for all of them --------------------------------------------------------------

_SPEC_FORMS = (
    "'digits' or 'digits:train|calib|test|all'; 'fashion-mnist' or 'fashion-mnist:train|test'; "
    "'ood:NAME' or plain NAME for an OOD set ({names}); a folder of images (flat or one subfolder "
    "per class); a .npy or .npz file"
)


def load_image_set(spec: str, **kw: Any) -> ImageSet:
    """Resolve a user string to an image set; keyword arguments go to the loader it names.

    Plain "digits" is the whole digits set ("all"), plain "fashion-mnist" its "train" split; use
    "ood:digits" / "ood:fashion-mnist" for the resized OOD versions.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise OodgateError(f"image set spec must be a string, got {type(spec).__name__}")
    text = os.fspath(spec)
    path = Path(text)
    if not path.is_dir():
        kw.pop("skip_unreadable", None)  # only folders hold files that can be corrupt
    names = ", ".join(ood_set_names())
    loader: Callable[..., ImageSet]
    args: tuple[Any, ...]
    if path.is_dir():
        loader, args = image_folder, (path,)
    elif path.suffix.lower() in (".npy", ".npz"):
        loader, args = array_file, (path,)
    else:
        kind, _, rest = text.partition(":")
        if kind == "digits":
            loader, args = digits, (rest or "all",)
        elif kind == "fashion-mnist":
            loader, args = fashion_mnist, (rest or "train",)
        elif kind == "ood" and rest:
            loader, args = ood_set, (rest,)
        elif text in _OOD_SETS:
            loader, args = ood_set, (text,)
        elif path.exists():
            raise OodgateError(
                f"cannot load {text!r} as an image set: it is a file, not a folder or .npy/.npz; "
                f"accepted forms: {_SPEC_FORMS.format(names=names)}"
            )
        else:
            looks_like_path = os.sep in text or "/" in text
            problem = "no such folder" if looks_like_path else "unknown image set"
            raise OodgateError(
                f"{problem} {text!r}: accepted forms: {_SPEC_FORMS.format(names=names)}"
            )
    try:
        inspect.signature(loader).bind(*args, **kw)
    except TypeError as err:
        raise OodgateError(
            f"bad options {sorted(kw)} for image set {text!r}: {loader.__name__}() says {err}"
        ) from err
    return loader(*args, **kw)


def parse_class_map(text: str | os.PathLike | None) -> dict[str, Any] | None:
    """A class map from the CLI: JSON (an object, inline or in a file) or 'FOLDER=CLASS,FOLDER=CLASS'.

    A value that is an integer (in JSON, or digits in the short form) is a class index; anything else a class name.
    """
    if text is None:
        return None
    raw = os.fspath(text)
    path = Path(raw)
    if path.suffix.lower() == ".json" or raw.lstrip().startswith("{"):
        try:
            value = json.loads(path.read_text() if path.suffix.lower() == ".json" else raw)
        except (OSError, json.JSONDecodeError) as err:
            raise OodgateError(f"--class-map {raw!r}: not a readable JSON object ({err})") from None
        if not isinstance(value, dict) or not value or not all(
                isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in value.values()):
            raise OodgateError(f"--class-map {raw!r}: expected a JSON object FOLDER -> class name or index")
        return {str(k): v for k, v in value.items()}
    mapping: dict[str, Any] = {}
    for item in raw.split(","):
        folder, sep, target = item.partition("=")
        if not sep or not folder.strip() or not target.strip():
            raise OodgateError(f"--class-map {raw!r}: write FOLDER=CLASS pairs, e.g. --class-map 'Boot=Ankle boot,Top=0'")
        target = target.strip()
        mapping[folder.strip()] = int(target) if target.isdigit() else target
    return mapping
