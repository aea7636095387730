"""The documented preprocessing spec: presets, the command-line flags' parsing, and errors that say the format."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from oodgate.data.preprocess import PRESETS, Preprocess
from oodgate.errors import OodgateError


def test_presets_hold_the_documented_values():
    imagenet = Preprocess.preset("imagenet-224")
    assert imagenet.to_dict() == {"channels": "RGB", "resize": 256, "crop": [224, 224],
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                  "interpolation": "bilinear"}
    assert imagenet.input_shape == (3, 224, 224)
    assert Preprocess.preset("gray-28").input_shape == (1, 28, 28)
    cifar = Preprocess.preset("cifar-32")
    assert cifar.input_shape == (3, 32, 32) and cifar.mean == (0.4914, 0.4822, 0.4465)
    assert sorted(PRESETS) == ["cifar-32", "gray-28", "imagenet-224"]


def test_imagenet_preset_equals_the_torchvision_recipe_by_hand():
    """Shorter side to 256 (aspect kept), centre crop 224, /255, ImageNet mean/std: computed independently."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    got = Preprocess.preset("imagenet-224")(pixels)[0]
    resized = np.asarray(Image.fromarray(pixels).resize((341, 256), Image.Resampling.BILINEAR), np.float32)
    top, left = round((256 - 224) / 2), round((341 - 224) / 2)
    crop = resized[top:top + 224, left:left + 224] / 255.0
    want = ((crop - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32))
    np.testing.assert_allclose(got, want.transpose(2, 0, 1), atol=1e-6)


def test_gray_28_is_pixels_in_0_1():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    np.testing.assert_allclose(Preprocess.preset("gray-28")(img)[0, 0], img / 255.0, atol=1e-7)


def test_flags_parse_and_override_a_preset():
    p = Preprocess.from_options(preset="gray-28", mean="0.2860", std="0.3530")
    assert p.to_dict()["mean"] == [0.286] and p.std == (0.353,) and p.resize == (28, 28)
    q = Preprocess.from_options(channels="rgb", resize="256", crop="224", mean="0.485,0.456,0.406",
                                std="0.229,0.224,0.225")
    assert q == Preprocess.preset("imagenet-224")
    assert Preprocess.from_options(channels="L", resize="28x28").input_shape == (1, 28, 28)
    assert Preprocess.from_options(channels="gray", resize="32,32").input_shape == (1, 32, 32)
    # a channel change of a preset keeps one mean/std value per new channel
    assert Preprocess.from_options(preset="cifar-32", channels="L").mean == (0.4914,)
    assert Preprocess.from_options() is None


@pytest.mark.parametrize("kwargs, words", [
    ({"resize": "28x"}, ["resize '28x'", "28x28"]),
    ({"preset": "imagenet"}, ["unknown preprocessing preset 'imagenet'", "imagenet-224, gray-28, cifar-32"]),
    ({"channels": "BGR", "resize": "28x28"}, ["channels 'BGR'", "L", "RGB"]),
    ({"channels": "RGB", "resize": "28x28", "mean": "0.5;0.5"}, ["mean '0.5;0.5'", "comma-separated"]),
    ({"resize": "28x28"}, ["incomplete preprocessing", "--channels", "--preset"]),
    ({"channels": "RGB", "resize": "28x28", "mean": "0.1,0.2"}, ["mean must hold 1 or 3 values"]),
])
def test_bad_flags_say_the_format(kwargs, words):
    with pytest.raises(OodgateError) as err:
        Preprocess.from_options(**kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_unknown_json_key_shows_an_example():
    with pytest.raises(OodgateError, match=r'accepted keys are .*"crop": \[224, 224\]'):
        Preprocess.from_dict({"size": 28})
