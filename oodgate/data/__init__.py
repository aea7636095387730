"""Image data: preprocessing (numpy + Pillow, no torch) and the built-in offline image sets. Names are imported on
first use."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Preprocess": ".preprocess", "read_image": ".preprocess",
    **{name: ".sets" for name in ("ImageSet", "array_file", "available_ood_sets", "digits", "fashion_mnist",
                                  "fashion_mnist_available", "image_folder", "load_image_set", "ood_set",
                                  "ood_set_names")},
}
lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
