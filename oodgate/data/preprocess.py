"""How raw images become a model's input tensor, with numpy and Pillow only (no torch).

The same `Preprocess` runs on the PyTorch side (calibration, export checks) and in the torch-free
runtime, so both feed bit-identical inputs to the model: every step is deterministic and done in a
fixed order with fixed dtypes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from oodgate.errors import OodgateError

CHANNELS = {"L": 1, "RGB": 3}
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

#: What `Preprocess.load_image` accepts as one image.
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

_FLOAT32_255 = np.float32(255.0)

#: named preprocessing settings for the common model families; ``Preprocess.preset(name, **overrides)``,
#: ``--preset NAME`` on the command line
PRESETS: dict[str, dict[str, Any]] = {
    # torchvision / timm ImageNet classifiers: shorter side to 256, centre crop 224, ImageNet mean/std
    "imagenet-224": {"channels": "RGB", "resize": 256, "crop": (224, 224), "mean": (0.485, 0.456, 0.406),
                     "std": (0.229, 0.224, 0.225)},
    # MNIST-like grayscale 28x28 nets, pixels in [0, 1] (transforms.ToTensor() alone)
    "gray-28": {"channels": "L", "resize": (28, 28), "mean": (0.0,), "std": (1.0,)},
    # CIFAR-10/100 nets: RGB 32x32, the usual CIFAR-10 mean/std
    "cifar-32": {"channels": "RGB", "resize": (32, 32), "mean": (0.4914, 0.4822, 0.4465),
                 "std": (0.2470, 0.2435, 0.2616)},
}

#: the one-line description of the preprocessing spec, used by every error that asks for one
SPEC_HELP = (
    "--preset imagenet-224|gray-28|cifar-32 and/or --channels L|RGB --resize N|HxW --crop HxW "
    "--mean M[,M,M] --std S[,S,S] (Python: Preprocess.preset('imagenet-224') or Preprocess(channels='RGB', "
    "resize=256, crop=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))"
)


@dataclass(frozen=True)
class Preprocess:
    """How raw images become the model's input tensor; recorded in calibration files and ONNX metadata.

    Steps, in order: read (path, PIL image or array) → convert to ``channels`` → resize → centre crop
    → scale to [0, 1] → ``(x - mean) / std`` → HWC to CHW, float32.

    - ``resize``: an int resizes the shorter side to it keeping the aspect ratio (longer side
      ``int(resize * long / short)``, as torchvision); ``(H, W)`` resizes to exactly that size.
    - ``crop``: centre crop ``(H, W)`` after the resize (offsets ``round((h - H) / 2)``, as torchvision);
      an image smaller than the crop is an error.
    - Alpha is dropped (as ``PIL.Image.convert("RGB")``); RGB to L uses Pillow's ITU-R 601-2 luma;
      L to RGB replicates the channel. EXIF orientation is not applied.
    - uint8 images are resized by Pillow in 8 bits; float images in [0, 1] are resized per channel in
      32-bit float (Pillow mode "F") and clipped to [0, 1], so they are not rounded to 8 bits.
    - Already-preprocessed input passes through unchanged: a float32 array (C, H, W) or (N, C, H, W)
      whose (C, H, W) is ``input_shape`` (or whose C is right, when H and W are not fixed).
    """

    channels: str = "RGB"
    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise OodgateError(
                f"channels must be 'L' (1 channel) or 'RGB' (3 channels), got {self.channels!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise OodgateError(
                f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        object.__setattr__(self, "resize", _check_resize(self.resize))
        object.__setattr__(self, "crop", None if self.crop is None else _check_size(self.crop, "crop"))
        n = CHANNELS[self.channels]
        mean = _check_per_channel(self.mean, "mean", n)
        std = _check_per_channel(self.std, "std", n)
        if any(not s > 0 for s in std):
            raise OodgateError(f"std must be > 0 for every channel, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def num_channels(self) -> int:
        """Number of channels of the model input (1 for "L", 3 for "RGB")."""
        return CHANNELS[self.channels]

    @property
    def spatial_size(self) -> tuple[int, int] | None:
        """(H, W) of the model input, or None when it depends on the image (int resize, no crop)."""
        if self.crop is not None:
            return self.crop
        if isinstance(self.resize, tuple):
            return self.resize
        return None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model input."""
        size = self.spatial_size
        if size is None:
            raise OodgateError(
                f"the input size is not fixed by {self!r}: set crop=(H, W) or resize=(H, W) "
                "(--crop HxW or --resize HxW) so that every image gives the same (C, H, W)"
            )
        return (self.num_channels, *size)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the settings (tuples as lists)."""
        d = asdict(self)
        for key in ("resize", "crop", "mean", "std"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Rebuild from `to_dict` output; unknown keys or bad values raise OodgateError."""
        if not isinstance(d, dict):
            raise OodgateError(f"preprocess settings must be a dict, got {type(d).__name__}")
        allowed = ("channels", "resize", "crop", "mean", "std", "interpolation")
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise OodgateError(
                f"unknown preprocess setting(s) {unknown}: accepted keys are {list(allowed)}, e.g. "
                '{"channels": "RGB", "resize": 256, "crop": [224, 224], "mean": [0.485, 0.456, 0.406], '
                '"std": [0.229, 0.224, 0.225]} (was the file written by a newer oodgate?)'
            )
        return cls(**d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Preprocess:
        """A named preset (imagenet-224, gray-28, cifar-32), with any setting overridden, e.g. mean=(0.5,)."""
        if name not in PRESETS:
            raise OodgateError(f"unknown preprocessing preset {name!r}: use one of {', '.join(PRESETS)}")
        settings = dict(PRESETS[name])
        if "channels" in overrides and "mean" not in overrides and "std" not in overrides:
            n = CHANNELS.get(overrides["channels"], 0)
            settings["mean"], settings["std"] = settings["mean"][:1] * n, settings["std"][:1] * n
        return cls.from_dict({**settings, **overrides})

    @classmethod
    def from_options(cls, *, preset: str | None = None, base: Preprocess | None = None, channels: str | None = None,
                     resize: str | int | Sequence[int] | None = None, crop: str | int | Sequence[int] | None = None,
                     mean: str | float | Sequence[float] | None = None,
                     std: str | float | Sequence[float] | None = None,
                     interpolation: str | None = None) -> Preprocess | None:
        """The spec of the command-line flags: a preset (or ``base``) with the given settings overridden.

        Strings are parsed as on the command line: resize '256' (shorter side) or '28x28', crop '224x224' or
        '224', mean/std '0.485,0.456,0.406' or one value for every channel. None when nothing is given.
        """
        given = {k: v for k, v in {"channels": channels, "resize": resize, "crop": crop, "mean": mean, "std": std,
                                   "interpolation": interpolation}.items() if v is not None}
        if preset is None and base is None and not given:
            return None
        if preset is not None and base is not None:
            raise OodgateError("give either a preset or a full preprocessing (JSON), not both")
        parsed: dict[str, Any] = {}
        if "channels" in given:
            parsed["channels"] = _parse_channels(given["channels"])
        if "resize" in given:
            parsed["resize"] = _parse_size(given["resize"], "resize", allow_int=True)
        if "crop" in given:
            parsed["crop"] = _parse_size(given["crop"], "crop", allow_int=False)
        for key in ("mean", "std"):
            if key in given:
                parsed[key] = _parse_floats(given[key], key)
        if "interpolation" in given:
            parsed["interpolation"] = given["interpolation"]
        if preset is not None:
            return cls.preset(preset, **parsed)
        if base is not None:
            settings = base.to_dict()
        else:
            missing = [k for k in ("channels",) if k not in parsed]
            if missing or ("resize" not in parsed and "crop" not in parsed):
                raise OodgateError(
                    "incomplete preprocessing: give --channels and --resize (or --crop), or a preset: " + SPEC_HELP)
            settings = {}
        if "channels" in parsed and "mean" not in parsed and "std" not in parsed and base is not None:
            n = CHANNELS[parsed["channels"]]
            settings["mean"], settings["std"] = settings["mean"][:1] * n, settings["std"][:1] * n
        return cls.from_dict({**settings, **parsed})

    def load_image(self, image: ImageLike) -> np.ndarray:
        """One image → float32 (C, H, W) model input."""
        if isinstance(image, np.ndarray) and self._is_preprocessed(image, batched=False):
            return image
        if isinstance(image, (str, os.PathLike)):
            return self._from_pil(read_image(image))
        if isinstance(image, Image.Image):
            return self._from_pil(image)
        if isinstance(image, np.ndarray):
            return self._from_array(image)
        raise OodgateError(
            f"unsupported image type {type(image).__name__}: pass a file path, a PIL.Image.Image or a "
            "numpy array of shape (H, W) or (H, W, 1|3|4), uint8 or float in [0, 1]"
        )

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """One image or a sequence of images → float32 (N, C, H, W) model input.

        A 3-D array is one image when its last axis has 1, 3 or 4 entries, else a batch of (H, W)
        grayscale images; a 4-D array is a batch of (H, W, C) images unless it is preprocessed input.
        """
        if isinstance(images, np.ndarray):
            if self._is_preprocessed(images, batched=True):
                return images
            if self._is_preprocessed(images, batched=False):
                return images[None]
            if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4)):
                return self.load_image(images)[None]
            return self.load_batch(images)
        if isinstance(images, (str, os.PathLike, Image.Image)):
            return self.load_image(images)[None]
        if isinstance(images, Sequence):
            if len(images) == 0:
                raise OodgateError("got an empty sequence of images: pass at least one image")
            return self.stack([self.load_image(im) for im in images])
        raise OodgateError(
            f"unsupported input type {type(images).__name__}: pass one image (path, PIL.Image, array) "
            "or a sequence of them"
        )

    def load_batch(self, images: np.ndarray) -> np.ndarray:
        """A batch array (N, H, W) or (N, H, W, 1|3|4), uint8 or float in [0, 1] → float32 (N, C, H, W)."""
        if not isinstance(images, np.ndarray) or images.ndim not in (3, 4) or (
            images.ndim == 4 and images.shape[-1] not in (1, 3, 4)
        ):
            shape = getattr(images, "shape", type(images).__name__)
            raise OodgateError(
                f"cannot read {shape} as a batch of images: pass (N, H, W) or (N, H, W, 1|3|4) arrays, "
                f"or preprocessed float32 (N, {', '.join(self._shape_text())})"
            )
        if len(images) == 0:
            raise OodgateError("got an empty batch of images: pass at least one image")
        fast = self._load_uint8_batch_without_resampling(images)
        if fast is not None:
            return fast
        return self.stack([self.load_image(im) for im in images])

    def stack(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Stack preprocessed (C, H, W) arrays into (N, C, H, W), with a clear error on size mismatch."""
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            raise OodgateError(
                f"images give inputs of different shapes {shapes[:4]}: set resize=(H, W) or crop=(H, W) "
                "so that all images get one size"
            )
        return np.ascontiguousarray(np.stack(arrays))

    # -- internals ---------------------------------------------------------------------------

    def _shape_text(self) -> list[str]:
        size = self.spatial_size
        return [str(self.num_channels), *(("H", "W") if size is None else map(str, size))]

    def _is_preprocessed(self, array: np.ndarray, batched: bool) -> bool:
        """True for a (N,)C,H,W float32 array of this input's shape; error if CHW-like but mismatched."""
        ndim = 4 if batched else 3
        if array.ndim != ndim or array.dtype.kind != "f":
            return False
        chw = array.shape[-3:]
        looks_chw = chw[0] in (1, 3) and chw[-1] not in (1, 3, 4)
        size = self.spatial_size
        matches = chw[0] == self.num_channels and (size is None or tuple(chw[1:]) == size)
        if array.dtype == np.float32 and matches:
            return True
        if not looks_chw:
            return False
        prefix = "N, " if batched else ""
        got = f"({prefix}{', '.join(map(str, chw))})"
        expected = f"({prefix}{', '.join(self._shape_text())})"
        if matches:
            raise OodgateError(
                f"got a preprocessed-looking {array.dtype} array {got}: preprocessed input must be "
                "float32, cast it with .astype(np.float32)"
            )
        raise OodgateError(
            f"expected input of shape {expected}, got {got}: this array looks already preprocessed "
            f"(channels first) but does not match {self!r}; pass raw images (H, W) or (H, W, C) instead"
        )

    def _load_uint8_batch_without_resampling(self, images: np.ndarray) -> np.ndarray | None:
        """Vectorised path for uint8 batches that need no resize or luma conversion, else None.

        Gives exactly the per-image result: the same elementwise float32 operations in the same order.
        """
        if images.dtype != np.uint8:
            return None
        if images.ndim == 3:
            images = images[..., None]
        n_in = images.shape[-1]
        if n_in == 4 or (n_in == 3 and self.channels == "L"):
            return None
        if self._resized_size(images.shape[1], images.shape[2]) != images.shape[1:3]:
            return None
        if n_in == 1 and self.channels == "RGB":
            images = np.repeat(images, 3, axis=-1)
        if self.crop is not None:
            h, w = images.shape[1:3]
            ch, cw = self.crop
            if ch > h or cw > w:
                return None  # the per-image path raises the error
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
            images = images[:, top : top + ch, left : left + cw]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = images.astype(np.float32)
        out /= _FLOAT32_255
        out -= mean
        out /= std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))

    def _from_pil(self, image: Image.Image) -> np.ndarray:
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            return self._from_array(_wide_mode_to_float(image))
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode != self.channels:
            image = image.convert(self.channels)
        image = self._resize_pil(image)
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        pixels = _centre_crop(pixels, self.crop)
        return self._normalise(pixels.astype(np.float32) / _FLOAT32_255)

    def _from_array(self, array: np.ndarray) -> np.ndarray:
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
            pass
        elif array.ndim != 2:
            raise OodgateError(
                f"cannot read an array of shape {array.shape} as one image: expected (H, W) or "
                f"(H, W, 1|3|4), or preprocessed float32 ({', '.join(self._shape_text())})"
            )
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise OodgateError(f"got an empty image of shape {array.shape}: images need H, W >= 1")
        kind = array.dtype.kind
        if kind in "ui":
            if array.dtype != np.uint8:
                lo, hi = int(array.min()), int(array.max())
                if lo < 0 or hi > 255:
                    raise OodgateError(
                        f"integer images must hold 0..255, got values {lo}..{hi} ({array.dtype}): "
                        "rescale to uint8 or to float in [0, 1]"
                    )
                array = array.astype(np.uint8)
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[:, :, 0]
            return self._from_pil(Image.fromarray(np.ascontiguousarray(array)))
        if kind == "f":
            return self._from_float(array)
        raise OodgateError(
            f"unsupported image dtype {array.dtype}: pass uint8 (0..255) or float in [0, 1]"
        )

    def _from_float(self, array: np.ndarray) -> np.ndarray:
        array = array.astype(np.float32)
        lo, hi = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise OodgateError(
                f"float images must hold values in [0, 1], got {lo:g}..{hi:g}: divide 0..255 pixels by "
                "255, pass uint8, or pass preprocessed float32 "
                f"({', '.join(self._shape_text())}) to skip preprocessing"
            )
        if array.ndim == 2:
            array = array[:, :, None]
        if array.shape[-1] == 4:
            array = array[:, :, :3]
        if self.channels == "L" and array.shape[-1] == 3:
            r, g, b = array[:, :, 0], array[:, :, 1], array[:, :, 2]
            array = (
                r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)
            )[:, :, None]
        elif self.channels == "RGB" and array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=2)
        size = self._resized_size(array.shape[0], array.shape[1])
        if size != array.shape[:2]:
            resample = INTERPOLATIONS[self.interpolation]
            planes = [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(array[:, :, c]), mode="F").resize(
                        (size[1], size[0]), resample
                    ),
                    dtype=np.float32,
                )
                for c in range(array.shape[-1])
            ]
            array = np.clip(np.stack(planes, axis=2), 0.0, 1.0)
        return self._normalise(_centre_crop(array, self.crop))

    def _resized_size(self, h: int, w: int) -> tuple[int, int]:
        if self.resize is None:
            return (h, w)
        if isinstance(self.resize, tuple):
            return self.resize
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if h <= w else (new_long, new_short)

    def _resize_pil(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        new_h, new_w = self._resized_size(h, w)
        if (new_h, new_w) == (h, w):
            return image
        return image.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])

    def _normalise(self, hwc: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = (hwc.astype(np.float32, copy=False) - mean) / std
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Read one image file fully into memory (first frame of multi-frame files)."""
    path = Path(path)
    if not path.exists():
        raise OodgateError(f"no such image file: {path}")
    if path.is_dir():
        raise OodgateError(f"{path} is a folder, not an image file: pass a file (or use image_folder)")
    if not os.access(path, os.R_OK):
        raise OodgateError(f"cannot read image {path}: permission denied; check the file's permissions")
    try:
        with Image.open(path) as image:
            image.load()
            # copy() detaches the pixels from the file so that it can be closed
            return image.copy()
    except Exception as err:  # PIL raises many types for bad files
        raise OodgateError(
            f"cannot read image {path}: not an image or corrupt (PIL says {type(err).__name__}: {err}) "
            "(to skip unreadable files and list them: --skip-unreadable, or skip_unreadable=True)"
        ) from err


def _wide_mode_to_float(image: Image.Image) -> np.ndarray:
    """16/32-bit integer or float PIL images as float in [0, 1] (Pillow's convert would clip them)."""
    array = np.asarray(image)
    if image.mode == "F":
        return array.astype(np.float32)
    array = array.astype(np.int64)
    lo, hi = int(array.min()), int(array.max())
    if lo < 0 or hi > 65535:
        raise OodgateError(
            f"cannot scale a {image.mode} image with values {lo}..{hi} to [0, 1]: "
            "save it as 8- or 16-bit"
        )
    return (array / 65535.0).astype(np.float32)


def _centre_crop(hwc: np.ndarray, crop: tuple[int, int] | None) -> np.ndarray:
    if crop is None:
        return hwc
    h, w = hwc.shape[:2]
    ch, cw = crop
    if ch > h or cw > w:
        raise OodgateError(
            f"cannot centre-crop {crop} from an image of size ({h}, {w}) after resizing: "
            "use a smaller crop or a larger resize"
        )
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return hwc[top : top + ch, left : left + cw]


def _check_size(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
        size = (int(value[0]), int(value[1]))
        if min(size) >= 1:
            return size
    raise OodgateError(f"{what} must be (H, W) with positive integers, got {value!r}")


def _check_resize(value: Any) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if _is_int(value):
        if int(value) < 1:
            raise OodgateError(f"resize must be >= 1, got {value!r}")
        return int(value)
    return _check_size(value, "resize (an int for the shorter side, or (H, W))")


def _check_per_channel(value: Any, what: str, channels: int) -> tuple[float, ...]:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        value = (value,)
    elif isinstance(value, np.ndarray):
        value = tuple(value.reshape(-1).tolist())
    if not isinstance(value, (list, tuple)) or len(value) not in (1, channels):
        raise OodgateError(
            f"{what} must hold 1 or {channels} values (one per channel), got {value!r}"
        )
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise OodgateError(f"{what} must hold numbers, got {value!r}") from err
    if not all(np.isfinite(out)):
        raise OodgateError(f"{what} must hold finite numbers, got {value!r}")
    return out


def _parse_channels(value: Any) -> str:
    text = str(value).strip()
    names = {"l": "L", "gray": "L", "grey": "L", "grayscale": "L", "1": "L", "rgb": "RGB", "3": "RGB"}
    if text.lower() not in names:
        raise OodgateError(f"channels {value!r}: use L (grayscale, 1 channel) or RGB (3 channels)")
    return names[text.lower()]


def _parse_size(value: Any, what: str, *, allow_int: bool) -> int | tuple[int, int]:
    """'256' / 256 (resize: the shorter side; crop: a square), '28x28' / '28,28' / (28, 28) -> (H, W)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.lower().replace(",", "x").split("x")]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            form = "N (the shorter side) or HxW, e.g. 256 or 28x28" if allow_int else "HxW or N (square), e.g. 224x224"
            raise OodgateError(f"{what} {value!r}: write {form}") from None
        value = numbers[0] if len(numbers) == 1 else tuple(numbers)
    if _is_int(value) and not allow_int:
        value = (int(value), int(value))
    return _check_resize(value) if allow_int else _check_size(value, what)


def _parse_floats(value: Any, what: str) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            return tuple(float(p) for p in value.split(",") if p.strip())
        except ValueError:
            raise OodgateError(f"{what} {value!r}: write one number per channel, comma-separated, "
                               "e.g. 0.485,0.456,0.406 (or one number for all)") from None
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
