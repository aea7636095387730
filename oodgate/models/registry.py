"""The one table of built-in models (BUILTIN_MODELS), ModelBundle and load_model()."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data.preprocess import SPEC_HELP, Preprocess
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

    def override(self, *, preprocess: Preprocess | None = None, class_names: list[str] | None = None,
                 head: str | None = None) -> "ModelBundle":
        """Replace what is given (preprocessing, class names, head path) in place; returns self."""
        if preprocess is not None:
            self.preprocess = preprocess
        if class_names is not None:
            self.class_names = list(class_names)
        if head is not None:
            self.head = head
        return self


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


def _fashion_effnet() -> ModelBundle:
    from . import fashion_effnet as m

    card = m.card()
    return ModelBundle(m.fashion_effnet(), Preprocess.from_dict(card["preprocess"]), card["class_names"],
                       "fashion-effnet", head="_fc")


BUILTIN_MODELS: dict[str, Callable[[], ModelBundle]] = {
    "digits-cnn": _digits,
    "fashion-cnn": _fashion,
    "efficientnet-lite0": _efficientnet,
    "fashion-effnet": _fashion_effnet,
}


def _build_from_factory(ref: str, pythonpath: Sequence[str | Path]) -> nn.Module:
    """Import 'module:factory' (from ``pythonpath``, the current folder, then sys.path) and call the factory."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise OodgateError(f"model '{ref}': write module:function, e.g. mynet:build for build() in mynet.py")
    for folder in [*map(Path, pythonpath), Path.cwd()][::-1]:
        entry = str(folder.resolve())
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            where = module_name.replace(".", "/") + ".py"
            raise OodgateError(
                f"cannot import '{module_name}' for model '{ref}': no {where} in the current folder ({Path.cwd()}), "
                "the --pythonpath folders or PYTHONPATH: run from the folder that holds it or pass --pythonpath DIR "
                "(Python: load_model(ref, pythonpath=[DIR]))") from None
        raise OodgateError(f"importing '{module_name}' for model '{ref}' failed: it imports '{exc.name}', which is "
                           "not installed") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing: name it, in one line
        raise OodgateError(f"importing '{module_name}' for model '{ref}' failed: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise OodgateError(f"{getattr(module, '__file__', module_name)} has no function '{attr}': name a function "
                           f"that returns the torch.nn.Module, as in {module_name}:build")
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: name it, in one line
        raise OodgateError(f"calling {ref}() failed: {type(exc).__name__}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    if not isinstance(model, nn.Module):
        raise OodgateError(f"model factory '{ref}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def register_model(name: str, factory: Callable[[], ModelBundle]) -> None:
    """Make a built-in model loadable by name (``load_model(name)``)."""
    BUILTIN_MODELS[name] = factory


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def load_model(ref: str, *, weights: str | Path | None = None, preprocess: Preprocess | None = None,
               class_names: list[str] | None = None, head: str | None = None,
               pythonpath: Sequence[str | Path] = (), trust_pickle: bool = False) -> ModelBundle:
    """Load a model by reference: a built-in name, or 'module:factory' (a callable returning an nn.Module, its
    module found in ``pythonpath``, the current folder or sys.path), with optional ``weights``: a state dict or
    a checkpoint holding one (see oodgate.models.checkpoint; whole pickled models only with ``trust_pickle``)."""
    if ref in BUILTIN_MODELS:
        bundle = BUILTIN_MODELS[ref]()
    elif ":" in ref:
        model = _build_from_factory(ref, pythonpath)
        if preprocess is None:
            raise OodgateError(f"model '{ref}' has no preprocessing recorded: give one, {SPEC_HELP}")
        bundle = ModelBundle(model.eval(), preprocess, class_names, ref)
    else:
        raise OodgateError(
            f"unknown model '{ref}': use one of {', '.join(sorted(BUILTIN_MODELS))} or 'module:factory' "
            "(e.g. mynet:build for a function build() in mynet.py)"
        )
    if weights is not None:
        from .checkpoint import load_weights

        bundle.extra["checkpoint"] = load_weights(bundle.model, weights, ref=ref, trust_pickle=trust_pickle)
        bundle.extra["weights"] = str(Path(weights).resolve())
    return bundle.override(preprocess=preprocess, class_names=class_names, head=head)


__all__ = ["BUILTIN_MODELS", "ModelBundle", "load_model", "read_card", "register_model"]
