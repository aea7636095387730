"""Checkpoint layouts users bring, and the full, actionable errors for the rest (issue 15, item 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oodgate.models.checkpoint import CheckpointError, load_weights


class Net(nn.Module):
    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def _trained() -> Net:
    torch.manual_seed(1)
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        net.bn.running_mean.add_(0.5)
    return net.eval()


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model_state_dict", "model", "dataparallel",
                                    "lightning+ddp", "compiled"])
def test_common_layouts_load_exactly(tmp_path, layout):
    src = _trained()
    sd = src.state_dict()
    obj = {
        "plain": sd,
        "state_dict": {"epoch": 7, "state_dict": sd, "optimizer": {"lr": 0.1}},
        "model_state_dict": {"epoch": 7, "model_state_dict": sd},
        "model": {"model": sd, "args": "resnet"},
        "dataparallel": {f"module.{k}": v for k, v in sd.items()},
        "lightning+ddp": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "compiled": {f"_orig_mod.{k}": v for k, v in sd.items()},
    }[layout]
    torch.save(obj, tmp_path / "w.pt")
    dst = Net()
    info = load_weights(dst, tmp_path / "w.pt", ref="mynet:build")
    _assert_same(src, dst)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(src(x), dst.eval()(x))
    assert info["stripped_prefixes"] == {"dataparallel": ["module."], "lightning+ddp": ["module."],
                                         "compiled": ["_orig_mod."]}.get(layout, [])


def test_whole_pickled_model_needs_the_opt_in(tmp_path):
    src = _trained()
    torch.save(src, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError) as err:
        load_weights(Net(), tmp_path / "whole.pt")
    msg = str(err.value)
    assert "\n" not in msg and "not a plain state dict (it pickles the Python object " in msg and ".Net)" in msg
    assert "add_safe_globals" not in msg  # torch's advice to allow-list the class is not ours
    assert "model.state_dict()" in msg and "--trust-pickle" in msg and "trust_pickle=True" in msg
    dst = Net()
    assert load_weights(dst, tmp_path / "whole.pt", trust_pickle=True)["pickled"] is True
    _assert_same(src, dst)


def test_mismatch_message_is_whole_and_says_what_to_do(tmp_path):
    sd = _trained().state_dict()
    torch.save({"epoch": 1, "state_dict": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as err:
        load_weights(Net(), tmp_path / "w.pt", ref="mynet:build")
    msg = str(err.value)
    assert "\n" not in msg and "state dict under key 'state_dict'" in msg
    assert "9 key(s) of the model missing" in msg and "9 key(s) in the file the model does not have" in msg
    assert "prefix 'backbone.'" in msg


def test_shape_mismatch_names_the_tensor(tmp_path):
    torch.save(Net(in_channels=3).state_dict(), tmp_path / "rgb.pt")
    with pytest.raises(CheckpointError, match=r"1 shape mismatch.*conv\.weight: file \(4, 3, 3, 3\) vs model "
                                              r"\(4, 1, 3, 3\).*mynet:build"):
        load_weights(Net(), tmp_path / "rgb.pt", ref="mynet:build")


def test_unreadable_and_keyless_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot load weights .*junk.pt into the model: unreadable.*torch.save"):
        load_weights(Net(), tmp_path / "junk.pt")
    torch.save({"epoch": 1, "lr": torch.tensor(0.1), "opt": {}}, tmp_path / "nokey.pt")
    with pytest.raises(CheckpointError, match="a dict without a state dict .*'epoch', 'lr', 'opt'.*state_dict"):
        load_weights(Net(), tmp_path / "nokey.pt")
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_weights(Net(), tmp_path / "missing.pt")
