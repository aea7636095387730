"""oodgate: post-hoc OOD detectors baked into ONNX graphs.

Every score is oriented so that higher = more in-distribution (ID).

Heavy parts are imported lazily: ``import oodgate.runtime`` (serving) never imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._version import __version__
from .errors import ArtifactError, NotFittedError, OodgateError

_LAZY = {
    "detector": "oodgate.detectors",
    "available_detectors": "oodgate.detectors",
    "calibrate": "oodgate.calibration",
    "Calibration": "oodgate.calibration",
    "load_calibration": "oodgate.calibration",
    "fit_threshold": "oodgate.calibration",
    "split_classifier": "oodgate.models",
    "load_model": "oodgate.models",
    "export": "oodgate.exporter",
    "Session": "oodgate.runtime",
    "metrics": "oodgate.evaluation.metrics",
}

__all__ = ["__version__", "ArtifactError", "NotFittedError", "OodgateError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = import_module(_LAZY[name])
        return module if name == "metrics" else getattr(module, name)
    raise AttributeError(f"module 'oodgate' has no attribute {name!r}")
