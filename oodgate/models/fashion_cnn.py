"""The Fashion-MNIST CNN: the ID classifier of the real benchmark (weights ship with oodgate).

    python -m oodgate.models.training fashion     # rewrites oodgate/models/weights/fashion_cnn.{pt,json}
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data.preprocess import Preprocess
from ..errors import OodgateError
from . import ModelBundle, read_card, register_model
from .digits_cnn import SmallCNN

WEIGHTS = Path(__file__).parent / "weights" / "fashion_cnn.pt"
#: preprocessing, class names, test accuracy and how it was trained, written by ``train_fashion``
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
            raise OodgateError(f"no Fashion-MNIST CNN weights at {path}: run `python -m oodgate.models.training fashion`")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _bundle() -> ModelBundle:
    if not CARD.is_file():
        raise OodgateError(f"no Fashion-MNIST CNN card at {CARD}: run `python -m oodgate.models.training fashion`")
    card = read_card(CARD)
    return ModelBundle(fashion_cnn(), Preprocess.from_dict(card["preprocess"]), card["class_names"], "fashion-cnn")


register_model("fashion-cnn", _bundle)


def train_fashion(epochs: int = 8, train_images: int = TRAIN_IMAGES) -> dict:
    """Train on the first ``train_images`` Fashion-MNIST 'train' images; report accuracy on all 10k 'test' images."""
    from ..data.sets import fashion_mnist
    from .training import evaluate_accuracy, pixel_stats, save_model, train_small_cnn

    train, test = fashion_mnist("train", limit=train_images), fashion_mnist("test")
    mean, std = pixel_stats(train)
    prep = Preprocess(channels="L", resize=(28, 28), mean=(round(mean, 4),), std=(round(std, 4),))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small net trains faster on one thread than on shared cores, and repeatably
    try:
        t0 = time.perf_counter()
        model = train_small_cnn(train, prep, num_classes=10, epochs=epochs, width=WIDTH, batch_size=BATCH_SIZE,
                                lr=LR, max_shift=0)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    info = {"preprocess": prep.to_dict(), "class_names": train.class_names, "train_images": len(train),
            "train_split": f"fashion-mnist:train[:{len(train)}]", "width": WIDTH,
            "batch_size": BATCH_SIZE, "lr": LR, "max_shift": 0,
            "test_images": len(test), "test_accuracy": round(evaluate_accuracy(model, test, prep), 4),
            "epochs": epochs, "train_seconds": round(seconds, 1), "torch": torch.__version__, "threads": 1,
            "command": f"python -m oodgate.models.training fashion --epochs {epochs}"}
    save_model(model, "fashion_cnn", info)
    return info
