"""Classifiers: splitting any torch model into backbone + linear head (split.py), and the built-in models
(registry.py). Names are imported on first use."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "BUILTIN_MODELS": ".registry", "ModelBundle": ".registry", "load_model": ".registry", "read_card": ".registry",
    "register_model": ".registry",
    "HEAD_ATTRIBUTES": ".split", "SplitModel": ".split", "split_classifier": ".split",
}
lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
