"""The detectors, one file per method. ``detector(name, **params)`` makes one by name; names are imported on first
use (listing the detectors needs no torch)."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "available_detectors": ".registry", "describe_detectors": ".registry", "detector": ".registry",
    "detector_class": ".registry", "register": ".registry",
    "Detector": ".base", "DetectorHead": ".base", "keep_count": ".base", "FeatureScorer": ".base",
    "fit_threshold": ".threshold",
    "MSP": ".msp", "Energy": ".energy", "ReAct": ".react", "ASHP": ".ash", "ASHS": ".ash", "ASHB": ".ash",
    "SCALE": ".scale", "DICE": ".dice", "LINe": ".line", "MOS": ".mos", "AdaSCALEA": ".adascale",
    "AdaSCALEL": ".adascale",
}
lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
