"""The Fashion-MNIST CNN: the ID classifier of the real benchmark (weights ship with oodgate).

    python -m oodgate.models.training fashion     # rewrites oodgate/models/weights/fashion_cnn.{pt,json}
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import OodgateError
from .digits_cnn import SmallCNN

WEIGHTS = Path(__file__).parent / "weights" / "fashion_cnn.pt"
#: preprocessing, class names, test accuracy and how it was trained, written by ``oodgate.models.training.train_fashion``
CARD = WEIGHTS.with_suffix(".json")
#: SmallCNN width (channels of the first conv); 4 * WIDTH features reach the head
WIDTH = 16
#: training images: the first TRAIN_IMAGES of Fashion-MNIST 'train' (the rest stay unseen for calibration)
TRAIN_IMAGES = 15000
BATCH_SIZE, LR = 64, 3e-3


def fashion_cnn(weights: str | Path | None = WEIGHTS) -> SmallCNN:
    """The Fashion-MNIST CNN with its committed weights (no training needed), in eval mode."""
    model = SmallCNN(num_classes=10, in_channels=1, width=WIDTH)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise OodgateError(f"no Fashion-MNIST CNN weights at {path}: run "
                               "`python -m oodgate.models.training fashion`")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
