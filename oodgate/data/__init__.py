"""Image data: preprocessing (numpy + Pillow, no torch) and the built-in offline image sets."""

from __future__ import annotations

from oodgate.data.preprocess import Preprocess, read_image
from oodgate.data.sets import (
    ImageSet,
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

__all__ = [
    "ImageSet",
    "Preprocess",
    "array_file",
    "available_ood_sets",
    "digits",
    "fashion_mnist",
    "fashion_mnist_available",
    "image_folder",
    "load_image_set",
    "ood_set",
    "ood_set_names",
    "read_image",
]
