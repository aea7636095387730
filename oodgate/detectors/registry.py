"""The one table of detectors: name -> module and class, with the summary and defaults that `oodgate methods` shows.

Looking a name up imports only that detector's module, so listing the detectors needs no torch. The summary and
defaults here mirror each class's docstring and ``defaults`` (tests/detectors/test_registry.py keeps them equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..errors import OodgateError

if TYPE_CHECKING:  # pragma: no cover
    from .base import Detector


@dataclass(frozen=True)
class DetectorEntry:
    """Where a detector lives and what `oodgate methods` says about it."""

    module: str
    cls: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)


_ADASCALE_DEFAULTS = {"p_min": 80.0, "p_max": 85.0, "o": 0.05, "eps": 0.5, "k1": 1.0, "k2": 5.0, "lam": 10.0,
                      "n_fit": 5000, "seed": 0}

DETECTORS: dict[str, DetectorEntry] = {
    "msp": DetectorEntry("msp", "MSP", "Maximum softmax probability; nothing fitted."),
    "energy": DetectorEntry("energy", "Energy", "Energy score; nothing fitted."),
    "react": DetectorEntry("react", "ReAct", "ReAct: c = perc(all ID activations, p), p = 90 by default.",
                           {"p": 90.0}),
    "ash_p": DetectorEntry("ash", "ASHP", "ASH-P: zero all but the top keep(p) entries of h.", {"p": 90.0}),
    "ash_s": DetectorEntry("ash", "ASHS", "ASH-S: ASH-P, then multiply by exp(s1/s2) (sum before / after pruning).",
                           {"p": 90.0}),
    "ash_b": DetectorEntry("ash", "ASHB", "ASH-B: the top keep(p) entries set to s1/keep(p), the rest 0.",
                           {"p": 90.0}),
    "scale": DetectorEntry("scale", "SCALE", "SCALE with p = 85 by default.", {"p": 85.0}),
    "dice": DetectorEntry("dice", "DICE", "DICE with sparsity p (share of weights removed; 70 for ImageNet "
                          "ResNet-50) and optional ReAct clip.", {"p": 70.0, "clip": None}),
    "line": DetectorEntry("line", "LINe", "LINe with p_w = p_a = 10 (ImageNet defaults) and clip 'p90' (90th "
                          "percentile of ID activations).", {"p_w": 10.0, "p_a": 10.0, "clip": "p90"}),
    "mos": DetectorEntry("mos", "MOS", "MOS: a new (C + G)-way group-softmax head trained on ID features with "
                         "labels; score -min_g p_g(others).",
                         {"groups": None, "num_groups": None, "kmeans_on": "class_means", "steps": None, "lr": 0.003,
                          "batch_size": 512, "mixup": None, "val": 0.1, "patience": 5, "seed": 0, "progress": None}),
    "adascale_a": DetectorEntry("adascale", "AdaSCALEA", "AdaSCALE-A: z* = W (h e^r) + b with the adaptive "
                                "percentile in [p_min, p_max].", _ADASCALE_DEFAULTS),
    "adascale_l": DetectorEntry("adascale", "AdaSCALEL", "AdaSCALE-L: z* = r^2 (W h + b) with the adaptive "
                                "percentile in [p_min, p_max].", _ADASCALE_DEFAULTS),
}

#: detector classes added at run time with ``register`` (third-party methods)
_REGISTERED: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Add a detector class under ``cls.name`` (a class decorator; built-ins are in DETECTORS already)."""
    if cls.name not in DETECTORS or DETECTORS[cls.name].cls != cls.__name__:
        _REGISTERED[cls.name] = cls
    return cls


def available_detectors() -> list[str]:
    """Names accepted by ``detector()``."""
    return sorted({*DETECTORS, *_REGISTERED})


def _key(name: str) -> str:
    key = name.lower().replace("-", "_")
    if key not in DETECTORS and key not in _REGISTERED:
        raise OodgateError(f"unknown detector '{name}'; available: {', '.join(available_detectors())}")
    return key


def detector_class(name: str) -> type[Detector]:
    """The detector class registered under ``name`` (imports its module, and so torch)."""
    key = _key(name)
    if key in _REGISTERED:
        return _REGISTERED[key]
    entry = DETECTORS[key]
    return getattr(import_module(f"{__package__}.{entry.module}"), entry.cls)


def detector(name: str, **params: Any) -> Detector:
    """Make an unfitted detector: ``oodgate.detector('dice', p=70)``."""
    return detector_class(name)(**params)


def describe_detectors() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, one-line summary, default parameters) of every detector, without importing torch."""
    out = []
    for name in available_detectors():
        if name in _REGISTERED:
            cls = _REGISTERED[name]
            out.append((name, (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "", dict(cls.defaults)))
        else:
            out.append((name, DETECTORS[name].summary, dict(DETECTORS[name].defaults)))
    return out


__all__ = ["DETECTORS", "DetectorEntry", "available_detectors", "describe_detectors", "detector", "detector_class",
           "register"]
