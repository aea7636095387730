"""The one table of built-in models (BUILTIN_MODELS), ModelBundle and load_model()."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..errors import OodgateError


@dataclass
class ModelBundle:
    """A classifier with what travels with it: preprocessing, class names and how to load it again (ref)."""

    model: nn.Module
    preprocess: Preprocess
    class_names: list[str] | None = None
    ref: str | None = None
    head: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_card(path: Path) -> dict[str, Any]:
    """The JSON card written next to a built-in model's weights."""
    import json

    return json.loads(path.read_text())


def _digits() -> ModelBundle:
    from . import digits_cnn as m

    card = read_card(m.CARD)
    return ModelBundle(m.digits_cnn(), Preprocess.from_dict(card["preprocess"]), card["class_names"], "digits-cnn")


def _fashion() -> ModelBundle:
    from . import fashion_cnn as m

    if not m.CARD.is_file():
        raise OodgateError(f"no Fashion-MNIST CNN card at {m.CARD}: run `python -m oodgate.models.training fashion`")
    card = read_card(m.CARD)
    return ModelBundle(m.fashion_cnn(), Preprocess.from_dict(card["preprocess"]), card["class_names"], "fashion-cnn")


def _efficientnet() -> ModelBundle:
    from . import efficientnet as m

    return ModelBundle(m.efficientnet_lite0(), Preprocess(channels="RGB", resize=256, crop=(224, 224), mean=m.MEAN,
                                                          std=m.STD), m.imagenet_wnids(), "efficientnet-lite0")


BUILTIN_MODELS: dict[str, Callable[[], ModelBundle]] = {
    "digits-cnn": _digits,
    "fashion-cnn": _fashion,
    "efficientnet-lite0": _efficientnet,
}


def register_model(name: str, factory: Callable[[], ModelBundle]) -> None:
    """Make a built-in model loadable by name (``load_model(name)``)."""
    BUILTIN_MODELS[name] = factory


def load_model(ref: str, *, weights: str | Path | None = None, preprocess: Preprocess | None = None,
               class_names: list[str] | None = None, head: str | None = None) -> ModelBundle:
    """Load a model by reference: a built-in name, or 'package.module:factory' (a callable returning an
    nn.Module), with optional state-dict ``weights`` loaded with ``torch.load(weights_only=True)``."""
    if ref in BUILTIN_MODELS:
        bundle = BUILTIN_MODELS[ref]()
    elif ":" in ref:
        module_name, _, attr = ref.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise OodgateError(f"cannot load model factory '{ref}': {exc}") from None
        model = factory()
        if not isinstance(model, nn.Module):
            raise OodgateError(f"model factory '{ref}' returned {type(model).__name__}, not a torch.nn.Module")
        if preprocess is None:
            raise OodgateError(f"model '{ref}' has no preprocessing recorded: give one (resize, crop, mean, std)")
        bundle = ModelBundle(model.eval(), preprocess, class_names, ref)
    else:
        raise OodgateError(
            f"unknown model '{ref}': use one of {', '.join(sorted(BUILTIN_MODELS))} or 'package.module:factory'"
        )
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise OodgateError(f"no such weights file: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            bundle.model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - surface the reason in one line
            raise OodgateError(f"cannot load weights {path} into {ref}: {str(exc).splitlines()[0]}") from None
        bundle.extra["weights"] = str(path)
    if preprocess is not None:
        bundle.preprocess = preprocess
    if class_names is not None:
        bundle.class_names = list(class_names)
    if head is not None:
        bundle.head = head
    return bundle


__all__ = ["BUILTIN_MODELS", "ModelBundle", "load_model", "read_card", "register_model"]
