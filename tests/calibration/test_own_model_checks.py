"""The own-model path without guessing: the module found as users expect, and every check export would make done
at calibrate time, each a one-line error that says the format or the fix (issue 15, item 3)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from oodgate.calibration.calibrate import calibrate
from oodgate.data.preprocess import Preprocess
from oodgate.data.sets import ImageSet
from oodgate.errors import OodgateError
from oodgate.models.registry import load_model

NET = textwrap.dedent("""
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.body(x))


    def build():
        return Net()
""")


@pytest.fixture()
def module_dir(tmp_path, monkeypatch):
    """A user's module folder with a unique module name (so that no earlier test's import is reused)."""
    name = f"usernet_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(NET)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path, name
    sys.modules.pop(name, None)


def _images(n: int = 12) -> ImageSet:
    rng = np.random.default_rng(0)
    return ImageSet("tiny", rng.integers(0, 256, size=(n, 20, 20), dtype=np.uint8), rng.integers(0, 3, n))


def test_module_in_the_current_folder_is_found(module_dir, monkeypatch):
    folder, name = module_dir
    monkeypatch.chdir(folder)
    bundle = load_model(f"{name}:build", preprocess=Preprocess.preset("gray-28"))
    assert type(bundle.model).__name__ == "Net" and bundle.model.fc.out_features == 3


def test_missing_module_says_where_it_looked_and_the_flag(module_dir, tmp_path_factory, monkeypatch):
    folder, name = module_dir
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(OodgateError) as err:
        load_model(f"{name}:build", preprocess=Preprocess.preset("gray-28"))
    msg = str(err.value)
    assert "\n" not in msg and f"no {name}.py in the current folder ({elsewhere})" in msg and "--pythonpath" in msg
    bundle = load_model(f"{name}:build", preprocess=Preprocess.preset("gray-28"), pythonpath=[folder])
    assert bundle.model.fc.in_features == 4


def test_wrong_function_and_missing_preprocessing_say_the_format(module_dir, monkeypatch):
    folder, name = module_dir
    monkeypatch.chdir(folder)
    with pytest.raises(OodgateError, match=rf"{name}.py has no function 'make'.*{name}:build"):
        load_model(f"{name}:make", preprocess=Preprocess.preset("gray-28"))
    with pytest.raises(OodgateError, match=r"no preprocessing recorded.*--preset imagenet-224\|gray-28\|cifar-32.*"
                                           r"--resize N\|HxW.*Preprocess.preset"):
        load_model(f"{name}:build")


def test_channels_against_the_first_conv_at_calibrate_time(module_dir, monkeypatch):
    folder, name = module_dir
    monkeypatch.chdir(folder)
    bundle = load_model(f"{name}:build", preprocess=Preprocess.preset("cifar-32"))
    with pytest.raises(OodgateError) as err:
        calibrate(bundle, _images(), method="energy", progress=False)
    msg = str(err.value)
    assert "first convolution (body.0) takes 1 channel(s) but the preprocessing gives 3" in msg
    assert "--channels L" in msg and "--preset gray-28" in msg


def test_unfixed_input_size_is_refused_at_calibrate_not_at_export(module_dir, monkeypatch):
    folder, name = module_dir
    monkeypatch.chdir(folder)
    bundle = load_model(f"{name}:build", preprocess=Preprocess(channels="L", resize=28))
    with pytest.raises(OodgateError, match=r"input size is not fixed.*--crop HxW or --resize HxW"):
        calibrate(bundle, _images(), method="energy", progress=False)
    fixed = load_model(f"{name}:build", preprocess=Preprocess.from_options(channels="L", resize="28", crop="28"))
    cal = calibrate(fixed, _images(), method="energy", progress=False)
    assert cal.preprocess.input_shape == (1, 28, 28)


def test_checkpoint_under_a_key_through_load_model(module_dir, monkeypatch):
    folder, name = module_dir
    monkeypatch.chdir(folder)
    src = load_model(f"{name}:build", preprocess=Preprocess.preset("gray-28")).model
    with torch.no_grad():
        src.fc.weight.fill_(0.25)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               folder / "ckpt.pt")
    bundle = load_model(f"{name}:build", preprocess=Preprocess.preset("gray-28"), weights=folder / "ckpt.pt")
    assert torch.equal(bundle.model.fc.weight, torch.full((3, 4), 0.25))
    assert bundle.extra["checkpoint"] == {"found_at": "key 'state_dict'", "stripped_prefixes": ["module."],
                                          "pickled": False}
