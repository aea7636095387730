"""split_classifier finds the final linear head in common layouts; backbone(x) @ W.T + b == model(x)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from oodgate.errors import OodgateError
from oodgate.models import SplitModel, split_classifier

D, C = 12, 5


def _stem() -> nn.Sequential:
    """Conv stem ending in pooled (N, D) features; BatchNorm so that eval/train mode matters."""
    return nn.Sequential(nn.Conv2d(3, D, 3, padding=1), nn.BatchNorm2d(D), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


class WithFc(nn.Module):  # torchvision ResNet
    def __init__(self) -> None:
        super().__init__()
        self.body = _stem()
        self.fc = nn.Linear(D, C)

    def forward(self, x):
        return self.fc(self.body(x))


class WithClassifierLinear(nn.Module):  # torchvision DenseNet
    def __init__(self) -> None:
        super().__init__()
        self.features = _stem()
        self.classifier = nn.Linear(D, C)

    def forward(self, x):
        return self.classifier(self.features(x))


class WithClassifierSequential(nn.Module):  # torchvision MobileNet / EfficientNet
    def __init__(self) -> None:
        super().__init__()
        self.features = _stem()
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(D, D), nn.ReLU(), nn.Linear(D, C))

    def forward(self, x):
        return self.classifier(self.features(x))


class WithHead(nn.Module):  # timm ViT
    def __init__(self) -> None:
        super().__init__()
        self.blocks = _stem()
        self.head = nn.Linear(D, C)

    def forward(self, x):
        return self.head(self.blocks(x))


class WithUnderscoreFc(nn.Module):  # lukemelas EfficientNet-PyTorch
    def __init__(self) -> None:
        super().__init__()
        self._blocks = _stem()
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(D, C)

    def forward(self, x):
        return self._fc(self._dropout(self._blocks(x)))


class ClassifierHead(nn.Module):  # timm ClassifierHead: pool + flatten + fc
    def __init__(self) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(D, C)

    def forward(self, x):
        return self.fc(self.flatten(self.global_pool(x)))


class WithHeadFc(nn.Module):  # timm ConvNeXt / RegNet
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.Sequential(nn.Conv2d(3, D, 3, padding=1), nn.BatchNorm2d(D), nn.ReLU())
        self.head = ClassifierHead()

    def forward(self, x):
        return self.head(self.stages(x))


class WithOtherName(nn.Module):  # no standard name: the user says head='decoder.out'
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _stem()
        self.decoder = nn.Sequential()
        self.decoder.add_module("mid", nn.Linear(D, D))
        self.decoder.add_module("act", nn.Tanh())
        self.decoder.add_module("out", nn.Linear(D, C))

    def forward(self, x):
        return self.decoder(self.encoder(x))


class WithNamedSequentialClassifier(nn.Module):  # Sequential(OrderedDict(...)): children named, not numbered
    def __init__(self) -> None:
        super().__init__()
        self.features = _stem()
        self.classifier = nn.Sequential(OrderedDict([("drop", nn.Dropout(0.2)), ("fc", nn.Linear(D, C))]))

    def forward(self, x):
        return self.classifier(self.features(x))


LAYOUTS = [
    (WithFc, None, "fc"),
    (WithClassifierLinear, None, "classifier"),
    (WithClassifierSequential, None, "classifier.3"),
    (WithHead, None, "head"),
    (WithUnderscoreFc, None, "_fc"),
    (WithHeadFc, None, "head.fc"),
    (WithOtherName, "decoder.out", "decoder.out"),
    # a Sequential named as head: its last Linear
    (WithOtherName, "decoder", "decoder.out"),
    (WithNamedSequentialClassifier, None, "classifier.fc"),
    (WithFc, "fc", "fc"),
]


_ids = [f"{v[0].__name__}-{v[1]}" for v in (getattr(p, "values", p) for p in LAYOUTS)]


def _model(cls) -> nn.Module:
    torch.manual_seed(0)
    model = cls()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a train-mode backbone would differ
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _x() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("cls", "head", "path"), LAYOUTS, ids=_ids)
def test_split_finds_head_and_reproduces_logits(cls, head, path):
    model = _model(cls)
    split = split_classifier(model, head=head)
    assert isinstance(split, SplitModel) and split.head_path == path
    assert isinstance(split.head, nn.Linear) and (split.num_features, split.num_classes) == (D, C)
    x = _x()
    with torch.no_grad():
        expected = model(x)
        h = split.features(x)
        assert h.shape == (4, D)
        by_hand = h @ split.head.weight.T + split.head.bias
        torch.testing.assert_close(by_hand, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(split(x), expected, rtol=1e-5, atol=1e-6)
    # the head's weights are the model's final layer
    final = model.get_submodule(path)
    torch.testing.assert_close(split.head.weight, final.weight, rtol=0, atol=0)


@pytest.mark.parametrize(("cls", "head", "path"), LAYOUTS, ids=_ids)
def test_split_does_not_mutate_the_callers_model(cls, head, path):
    model = _model(cls).train()
    before = copy.deepcopy(model.state_dict())
    x = _x()
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    split = split_classifier(model, head=head)
    assert model.training  # the caller's mode is kept; the split is in eval mode
    assert not split.training and not split.backbone.training
    assert isinstance(model.get_submodule(path), nn.Linear)  # head still in place
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    # no shared parameters: changing the split does not change the model
    with torch.no_grad():
        split.head.weight.add_(1.0)
        next(split.backbone.parameters()).add_(1.0)
        torch.testing.assert_close(model.eval()(x), expected, rtol=0, atol=0)


def test_split_of_a_split_is_itself():
    split = split_classifier(_model(WithFc))
    assert split_classifier(split) is split


def test_first_standard_name_wins():
    class Both(WithFc):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = nn.Linear(D, 3)  # unused by forward

    assert split_classifier(_model(Both)).head_path == "fc"
    assert split_classifier(_model(Both), head="classifier").head_path == "classifier"


# -- errors ------------------------------------------------------------------------------------------------


class NoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = _stem()
        self.fc = nn.Conv2d(D, C, 1)  # a 1x1-conv "head": not linear

    def forward(self, x):
        return self.body(x)


class SequentialNotEndingInLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = _stem()
        self.classifier = nn.Sequential(nn.Linear(D, C), nn.Softmax(dim=1))

    def forward(self, x):
        return self.classifier(self.features(x))


@pytest.mark.parametrize("cls", [NoHead, SequentialNotEndingInLinear])
def test_no_linear_head_is_a_clear_error(cls):
    with pytest.raises(OodgateError, match=rf"{cls.__name__} has no linear head at any of \.fc, \.classifier.*"
                                           r"pass head='attribute\.path'") as info:
        split_classifier(_model(cls))
    assert "\n" not in str(info.value)


def test_plain_sequential_without_head_attribute():
    with pytest.raises(OodgateError, match=r"Sequential has no linear head"):
        split_classifier(nn.Sequential(_stem(), nn.Linear(D, C)))
    # ... but naming its last index works
    model = nn.Sequential(_stem(), nn.Linear(D, C)).eval()
    split = split_classifier(model, head="1")
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(split.features(x) @ split.head.weight.T + split.head.bias, model(x))


def test_named_head_that_is_not_linear():
    with pytest.raises(OodgateError, match=r"head 'fc' of NoHead is a Conv2d, not an nn\.Linear"):
        split_classifier(_model(NoHead), head="fc")
    with pytest.raises(OodgateError, match=r"head 'body\.2' of NoHead is a ReLU, not an nn\.Linear"):
        split_classifier(_model(NoHead), head="body.2")


def test_named_head_that_does_not_exist():
    with pytest.raises(OodgateError, match=r"head 'nope\.fc' of WithFc is no such attribute"):
        split_classifier(_model(WithFc), head="nope.fc")


def test_not_a_module():
    with pytest.raises(OodgateError, match=r"expected a torch\.nn\.Module classifier, got dict"):
        split_classifier({"fc": 1})


def test_backbone_not_giving_pooled_features_is_a_clear_error():
    class Unpooled(nn.Module):  # a per-pixel head on (N, H, W, D): removing it leaves 4-D features
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, D, 1)
            self.fc = nn.Linear(D, C)

        def forward(self, x):
            return self.fc(self.conv(x).permute(0, 2, 3, 1))

    split = split_classifier(Unpooled().eval())
    with pytest.raises(OodgateError, match=r"features of shape \(4, 8, 8, 12\), expected \(N, 12\)"):
        split.features(_x())
