"""Train the small built-in CNNs (digits, Fashion-MNIST) reproducibly on CPU.

    python -m oodgate.models.training digits     # rewrites oodgate/models/weights/digits_cnn.{pt,json}
    python -m oodgate.models.training fashion    # rewrites oodgate/models/weights/fashion_cnn.{pt,json}

Imported by nothing in the library: the built-ins load their committed weights (oodgate.models.registry).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..data.sets import ImageSet
from ..files import write_atomic
from .digits_cnn import SmallCNN

WEIGHTS_DIR = Path(__file__).parent / "weights"


def pixel_stats(images: ImageSet) -> tuple[float, float]:
    """Mean and std of the raw pixels in [0, 1] units (grayscale sets)."""
    arr = np.asarray(images.images, dtype=np.float64) / 255.0
    return float(arr.mean()), float(arr.std())


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero padding at the background value)."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (max_shift,) * 4, value=float(x.amin()))
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


def train_small_cnn(train: ImageSet, preprocess: Preprocess, *, num_classes: int, epochs: int = 30,
                    batch_size: int = 64, lr: float = 2e-3, width: int = 16, max_shift: int = 1, seed: int = 0,
                    log: bool = True) -> SmallCNN:
    """Train SmallCNN with Adam and a cosine schedule; deterministic for a given seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(preprocess(list(train.images)) if isinstance(train.images, list)
                             else preprocess(train.images))
    y_all = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    model = SmallCNN(num_classes=num_classes, in_channels=x_all.shape[1], width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x_all) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = loss_fn(model(_shift(x_all[idx], gen, max_shift)), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        if log and (epoch % 5 == 4 or epoch == epochs - 1):
            print(f"epoch {epoch + 1}/{epochs} loss {total / len(x_all):.4f}")
    return model.eval()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, data: ImageSet, preprocess: Preprocess) -> float:
    """Top-1 accuracy of ``model`` on a labelled set."""
    correct = 0
    for x, y in data.batches(preprocess, 512):
        correct += int((model(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
    return correct / len(data)


def save_model(model: nn.Module, name: str, info: dict) -> None:
    """Write weights (state dict) and the JSON card (preprocessing, classes, accuracy) next to each other."""
    WEIGHTS_DIR.mkdir(exist_ok=True)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_atomic(WEIGHTS_DIR / f"{name}.pt", buf.getvalue(), overwrite=True)  # retraining rewrites them on purpose
    write_atomic(WEIGHTS_DIR / f"{name}.json", (json.dumps(info, indent=1) + "\n").encode(), overwrite=True)


def train_digits(epochs: int = 40) -> dict:
    """Train the embedded default on digits 'train' (1000 images) and report its 'test' accuracy."""
    from ..data.sets import digits

    train, test = digits("train"), digits("test")
    mean, std = pixel_stats(train)
    prep = Preprocess(channels="L", resize=(16, 16), mean=(round(mean, 4),), std=(round(std, 4),))
    t0 = time.perf_counter()
    model = train_small_cnn(train, prep, num_classes=10, epochs=epochs)
    info = {"preprocess": prep.to_dict(), "class_names": train.class_names, "train_images": len(train),
            "test_accuracy": round(evaluate_accuracy(model, test, prep), 4), "epochs": epochs,
            "train_seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__}
    save_model(model, "digits_cnn", info)
    return info


def train_fashion(epochs: int = 8, train_images: int | None = None) -> dict:
    """Train on the first ``train_images`` Fashion-MNIST 'train' images; report accuracy on all 10k 'test' images."""
    from ..data.sets import fashion_mnist
    from .fashion_cnn import BATCH_SIZE, LR, TRAIN_IMAGES, WIDTH

    train_images = TRAIN_IMAGES if train_images is None else train_images
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["digits", "fashion"])
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    if args.model == "digits":
        info = train_digits(args.epochs or 40)
    else:

        info = train_fashion(args.epochs or 8)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
