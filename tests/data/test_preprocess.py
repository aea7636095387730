"""Preprocess: exact arithmetic, sizes, channel conversion, inputs of every kind and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oodgate.data import Preprocess
from oodgate.errors import OodgateError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def rgb_image(h: int = 37, w: int = 53, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def f32(x: float) -> np.float32:
    return np.float32(x)


# -- arithmetic ------------------------------------------------------------------------------


def test_grayscale_normalisation_matches_hand_computation() -> None:
    image = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    out = Preprocess(channels="L", mean=(0.5,), std=(0.25,))(image)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 2)
    # (p / 255 - 0.5) / 0.25: 0 → -2, 51 → -1.2, 102 → -0.4, 255 → 2
    np.testing.assert_allclose(out[0, 0], [[-2.0, -1.2], [-0.4, 2.0]], rtol=0, atol=1e-6)
    # and bit-exactly the float32 formula, in this order
    exact = [(f32(p) / f32(255) - f32(0.5)) / f32(0.25) for p in (0, 51, 102, 255)]
    assert out.reshape(-1).tolist() == [float(v) for v in exact]


def test_rgb_per_channel_mean_std_and_chw_layout() -> None:
    image = np.array([[[255, 0, 51], [0, 255, 0]]], dtype=np.uint8)  # 1 x 2 RGB
    out = Preprocess(channels="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD).load_image(image)
    assert out.shape == (3, 1, 2)
    expected = np.array(
        [
            [[(1.0 - 0.485) / 0.229, (0.0 - 0.485) / 0.229]],
            [[(0.0 - 0.456) / 0.224, (1.0 - 0.456) / 0.224]],
            [[(0.2 - 0.406) / 0.225, (0.0 - 0.406) / 0.225]],
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert out[0, 0, 0] == pytest.approx(2.2489083, abs=1e-6)


def test_default_preprocess_is_plain_scaling_to_unit_range() -> None:
    image = np.array([[0, 128, 255]], dtype=np.uint8)
    out = Preprocess(channels="L")(image)
    np.testing.assert_array_equal(out[0, 0, 0], np.array([0, 128, 255], np.float32) / f32(255))


# -- channels --------------------------------------------------------------------------------


def test_grayscale_to_rgb_replicates_the_channel() -> None:
    gray = np.array([[10, 200], [0, 255]], dtype=np.uint8)
    out = Preprocess(channels="RGB").load_image(gray)
    assert out.shape == (3, 2, 2)
    for c in range(3):
        np.testing.assert_array_equal(out[c], gray / f32(255))


def test_rgb_to_grayscale_uses_itu_601_luma() -> None:
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    out = Preprocess(channels="L").load_image(image)
    # L = R*299/1000 + G*587/1000 + B*114/1000, rounded: 76.245 → 76, 149.685 → 150, 29.07 → 29
    np.testing.assert_array_equal(out[0, 0] * 255, [76, 150, 29, 255])


def test_alpha_is_dropped_and_palette_images_are_converted() -> None:
    rgb = rgb_image(6, 7)
    rgba = np.concatenate([rgb, np.full((6, 7, 1), 17, np.uint8)], axis=2)
    pre = Preprocess(channels="RGB")
    np.testing.assert_array_equal(pre.load_image(rgba), pre.load_image(rgb))
    palette = Image.fromarray(rgb).quantize(colors=8)
    assert palette.mode == "P"
    np.testing.assert_array_equal(pre.load_image(palette), pre.load_image(palette.convert("RGB")))
    single = rgb[:, :, :1]
    np.testing.assert_array_equal(Preprocess("L").load_image(single), Preprocess("L").load_image(rgb[:, :, 0]))


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    wide = np.array([[0, 257, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = Preprocess(channels="L")(tmp_path / "wide.png")
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 1 / 255, 1.0], atol=1e-7)


# -- sizes ---------------------------------------------------------------------------------


def test_int_resize_keeps_aspect_and_crop_fixes_the_shape() -> None:
    image = rgb_image(40, 60)
    assert Preprocess(resize=20).load_image(image).shape == (3, 20, 30)
    assert Preprocess(resize=20).load_image(rgb_image(61, 40)).shape == (3, 30, 20)  # int(20*61/40)
    pre = Preprocess(resize=20, crop=(16, 16))
    assert pre.input_shape == (3, 16, 16)
    assert pre(image).shape == (1, 3, 16, 16)


def test_tuple_resize_gives_the_exact_size() -> None:
    pre = Preprocess(channels="L", resize=(10, 12))
    assert pre.input_shape == (1, 10, 12)
    assert pre(rgb_image(37, 53)).shape == (1, 1, 10, 12)


def test_nearest_upscale_replicates_pixels() -> None:
    image = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    out = Preprocess(channels="L", resize=(4, 4), interpolation="nearest").load_image(image)
    expected = np.kron(image, np.ones((2, 2), np.uint8)) / f32(255)
    np.testing.assert_array_equal(out[0], expected)


def test_constant_image_stays_constant_under_every_interpolation() -> None:
    image = np.full((9, 13), 77, np.uint8)
    for method in ("nearest", "bilinear", "bicubic"):
        out = Preprocess(channels="L", resize=(5, 6), interpolation=method).load_image(image)
        np.testing.assert_array_equal(out, np.full((1, 5, 6), f32(77) / f32(255)))


def test_centre_crop_takes_the_middle_like_torchvision() -> None:
    image = np.arange(25, dtype=np.uint8).reshape(5, 5)
    out = Preprocess(channels="L", crop=(3, 3)).load_image(image)
    np.testing.assert_array_equal(out[0] * f32(255), image[1:4, 1:4])
    # odd margin: top = round(1.5) = 2 (torchvision: int(round((h - ch) / 2)))
    out = Preprocess(channels="L", crop=(2, 2)).load_image(image)
    np.testing.assert_array_equal(np.round(out[0] * 255), image[2:4, 2:4])


def test_crop_larger_than_image_is_an_error() -> None:
    with pytest.raises(OodgateError, match=r"cannot centre-crop \(8, 8\) from an image of size \(5, 5\)"):
        Preprocess(channels="L", crop=(8, 8)).load_image(np.zeros((5, 5), np.uint8))


def test_undetermined_input_shape_is_an_error() -> None:
    with pytest.raises(OodgateError, match=r"set crop=\(H, W\) or resize=\(H, W\)"):
        _ = Preprocess(resize=32).input_shape
    with pytest.raises(OodgateError, match="different shapes"):
        Preprocess(channels="L")([np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.uint8)])


# -- kinds of input --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff"])
def test_path_array_and_pil_give_identical_output(tmp_path: Path, fmt: str) -> None:
    array = rgb_image()
    path = tmp_path / f"image.{fmt}"
    Image.fromarray(array).save(path)
    pre = Preprocess(resize=24, crop=(20, 20), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    from_array = pre(array)
    for image in (path, str(path), Image.fromarray(array), Image.open(path)):
        np.testing.assert_array_equal(pre(image), from_array)
    np.testing.assert_array_equal(pre([path, array])[1], from_array[0])


def test_uint8_batch_fast_path_matches_per_image_path_bit_for_bit() -> None:
    batch = np.random.default_rng(1).integers(0, 256, size=(7, 12, 12), dtype=np.uint8)
    for pre in (
        Preprocess(channels="RGB", crop=(10, 10), mean=IMAGENET_MEAN, std=IMAGENET_STD),
        Preprocess(channels="L", mean=(0.2860,), std=(0.3530,)),
        Preprocess(channels="L", resize=(6, 6)),
    ):
        per_image = np.stack([pre.load_image(im) for im in batch])
        assert pre(batch).tobytes() == per_image.tobytes()
        assert pre.load_batch(batch).tobytes() == per_image.tobytes()


def test_output_is_exactly_repeatable() -> None:
    image = rgb_image(50, 70)
    pre = Preprocess(resize=33, crop=(32, 32), interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert pre(image).tobytes() == pre(image.copy()).tobytes()


def test_float_images_in_unit_range_are_accepted() -> None:
    image = rgb_image(8, 9)
    pre = Preprocess(channels="RGB", mean=(0.5,), std=(0.5,))
    np.testing.assert_allclose(pre(image / 255.0), pre(image), rtol=0, atol=1e-6)
    resized = Preprocess(channels="L", resize=(4, 4))
    np.testing.assert_array_equal(resized(np.full((8, 8), 0.25)), np.full((1, 1, 4, 4), 0.25, np.float32))
    with pytest.raises(OodgateError, match=r"float images must hold values in \[0, 1\], got 0\.\.255"):
        pre(image.astype(np.float64))


def test_other_integer_dtypes_within_0_255_are_accepted() -> None:
    image = rgb_image(5, 5)
    pre = Preprocess()
    np.testing.assert_array_equal(pre(image.astype(np.int64)), pre(image))
    with pytest.raises(OodgateError, match=r"integer images must hold 0\.\.255, got values 0\.\.300"):
        pre(np.array([[0, 300]], dtype=np.int32))


def test_preprocessed_arrays_pass_through_unchanged() -> None:
    pre = Preprocess(channels="L", resize=(16, 16))
    batch = np.random.default_rng(0).normal(size=(4, 1, 16, 16)).astype(np.float32)
    assert pre(batch) is batch
    one = batch[0]
    assert pre.load_image(one) is one
    np.testing.assert_array_equal(pre(batch[0]), batch[:1])


def test_preprocessed_array_of_wrong_shape_is_an_error() -> None:
    pre = Preprocess(channels="L", resize=(16, 16))
    with pytest.raises(OodgateError, match=r"expected input of shape \(N, 1, 16, 16\), got \(N, 3, 16, 16\)"):
        pre(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(OodgateError, match=r"expected input of shape \(1, 16, 16\), got \(1, 8, 8\)"):
        pre.load_image(np.zeros((1, 8, 8), np.float32))
    with pytest.raises(OodgateError, match=r"must be float32, cast it"):
        pre(np.zeros((2, 1, 16, 16), np.float64))


def test_missing_and_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    pre = Preprocess()
    missing = tmp_path / "missing.png"
    with pytest.raises(OodgateError, match=f"no such image file: {missing}"):
        pre(missing)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not an image")
    with pytest.raises(OodgateError, match=r"cannot read image .*corrupt\.png: not an image or corrupt \(PIL says"):
        pre(corrupt)
    whole = tmp_path / "whole.png"
    Image.fromarray(rgb_image(64, 64)).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(OodgateError, match="not an image or corrupt"):
        pre(truncated)
    with pytest.raises(OodgateError, match="is a folder, not an image file"):
        pre(tmp_path)


def test_unsupported_inputs_give_clear_errors() -> None:
    pre = Preprocess()
    with pytest.raises(OodgateError, match="unsupported image type int"):
        pre.load_image(5)  # type: ignore[arg-type]
    with pytest.raises(OodgateError, match="unsupported input type dict"):
        pre({})  # type: ignore[arg-type]
    with pytest.raises(OodgateError, match=r"cannot read \(2, 3, 4, 5, 6\) as a batch of images"):
        pre(np.zeros((2, 3, 4, 5, 6), np.uint8))
    with pytest.raises(OodgateError, match="empty sequence"):
        pre([])


# -- settings ------------------------------------------------------------------------------


def test_to_dict_from_dict_round_trip_through_json() -> None:
    pre = Preprocess(
        channels="RGB", resize=256, crop=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
    )
    d = json.loads(json.dumps(pre.to_dict()))
    assert d == {
        "channels": "RGB",
        "resize": 256,
        "crop": [224, 224],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "interpolation": "bicubic",
    }
    assert Preprocess.from_dict(d) == pre
    assert Preprocess.from_dict({}) == Preprocess()
    assert Preprocess.from_dict({"resize": [8, 9]}).resize == (8, 9)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"colour": "RGB"}, r"unknown preprocess setting\(s\) \['colour'\]"),
        ({"channels": "RGBA"}, "channels must be 'L'"),
        ({"interpolation": "lanczos"}, "interpolation must be one of"),
        ({"std": [0.0]}, "std must be > 0"),
        ({"mean": [0.1, 0.2]}, "mean must hold 1 or 3 values"),
        ({"resize": 0}, "resize must be >= 1"),
        ({"crop": [224]}, r"crop must be \(H, W\)"),
    ],
)
def test_from_dict_rejects_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(OodgateError, match=message):
        Preprocess.from_dict(settings)


def test_importing_oodgate_data_does_not_import_torch() -> None:
    code = (
        "import oodgate.data, sys; "
        "assert 'torch' not in sys.modules; "
        "assert 'sklearn' not in sys.modules and 'skimage' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
