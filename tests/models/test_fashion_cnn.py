"""The built-in Fashion-MNIST CNN: registered, loads its committed weights without training, meets its card."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oodgate.data.sets import FASHION_MNIST_CLASSES, fashion_mnist, fashion_mnist_available  # noqa: E402
from oodgate.models import BUILTIN_MODELS, load_model  # noqa: E402
from oodgate.models import fashion_cnn as fc  # noqa: E402

needs_fashion = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed "
                                   "(apt-get install -y dataset-fashion-mnist)")


def test_weights_and_card_ship_small() -> None:
    assert fc.WEIGHTS.is_file() and fc.CARD.is_file()
    assert fc.WEIGHTS.stat().st_size < 1_000_000
    card = json.loads(fc.CARD.read_text())
    assert card["class_names"] == list(FASHION_MNIST_CLASSES)
    assert card["preprocess"]["channels"] == "L" and card["preprocess"]["resize"] == [28, 28]
    assert 0.88 <= card["test_accuracy"] <= 1.0
    assert card["train_images"] == fc.TRAIN_IMAGES and card["test_images"] == 10000


def test_registered_and_loads_without_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import oodgate.models.training as train

    def no_training(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("loading the fashion CNN must not train")

    monkeypatch.setattr(train, "train_small_cnn", no_training)
    bundle = load_model("fashion-cnn")
    assert "fashion-cnn" in BUILTIN_MODELS
    assert bundle.ref == "fashion-cnn" and bundle.class_names == list(FASHION_MNIST_CLASSES)
    assert not bundle.model.training
    assert bundle.preprocess.input_shape == (1, 28, 28)
    assert bundle.model.fc.out_features == 10 and bundle.model.fc.in_features == 4 * fc.WIDTH
    with torch.no_grad():
        out = bundle.model(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@needs_fashion
def test_reaches_its_card_accuracy_on_test_subset() -> None:
    bundle = load_model("fashion-cnn")
    card = json.loads(fc.CARD.read_text())
    # a fixed, spread-out subset of 2000 of the 10000 test images; the card's figure is over all of them
    test = fashion_mnist("test")
    subset = test.subset(np.arange(0, len(test), 5))
    correct = 0
    with torch.no_grad():
        for x, y in subset.batches(bundle.preprocess, 500):
            correct += int((bundle.model(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
    acc = correct / len(subset)
    # 2000 images: the standard error of the estimate is about 0.75 points; allow three of them
    assert acc >= card["test_accuracy"] - 0.025, (acc, card["test_accuracy"])


def test_missing_weights_say_how_to_make_them(tmp_path) -> None:  # noqa: ANN001
    from oodgate.errors import OodgateError

    with pytest.raises(OodgateError, match="oodgate.models.training fashion"):
        fc.fashion_cnn(tmp_path / "none.pt")
