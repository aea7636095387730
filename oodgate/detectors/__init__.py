"""The detectors, one file per method. ``detector(name, **params)`` makes one by name."""

from __future__ import annotations

from typing import Any

from ..errors import OodgateError
from .ash import ASHB, ASHP, ASHS
from .base import Detector, DetectorHead, keep_count
from .dice import DICE
from .energy import Energy
from .line import LINe
from .msp import MSP
from .react import ReAct
from .scale import SCALE

_REGISTRY: dict[str, type[Detector]] = {
    cls.name: cls for cls in (MSP, Energy, ReAct, ASHP, ASHS, ASHB, SCALE, DICE, LINe)
}


def register(cls: type[Detector]) -> type[Detector]:
    """Add a detector class to the registry (used by methods that live in their own module)."""
    _REGISTRY[cls.name] = cls
    return cls


def available_detectors() -> list[str]:
    """Names accepted by ``detector()``."""
    _load_optional()
    return sorted(_REGISTRY)


def detector_class(name: str) -> type[Detector]:
    """The detector class registered under ``name``."""
    _load_optional()
    key = name.lower().replace("-", "_")
    if key not in _REGISTRY:
        raise OodgateError(f"unknown detector '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def detector(name: str, **params: Any) -> Detector:
    """Make an unfitted detector: ``oodgate.detector('dice', p=70)``."""
    return detector_class(name)(**params)


def _load_optional() -> None:
    """Import detectors that live in optional modules so that they register themselves."""
    import importlib

    for module in ("mos", "adascale"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise


__all__ = ["Detector", "DetectorHead", "available_detectors", "detector", "detector_class", "keep_count", "register"]
