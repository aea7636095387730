"""oodgate: post-hoc OOD detectors baked into ONNX graphs.

Every score is oriented so that higher = more in-distribution (ID).

Names are imported on first use: ``import oodgate`` or ``oodgate.Session`` (serving) never import torch.
"""

from __future__ import annotations

from ._lazy import lazy_exports
from ._version import __version__
from .errors import ArtifactError, NotFittedError, OodgateError

_EXPORTS = {
    "detector": ".detectors.registry", "available_detectors": ".detectors.registry",
    "fit_threshold": ".detectors.threshold",
    "calibrate": ".calibration.calibrate",
    "Calibration": ".calibration.artifact", "load_calibration": ".calibration.artifact",
    "split_classifier": ".models.split", "load_model": ".models.registry",
    "export": ".exporter.export", "export_onnx": ".exporter.onnx_export",
    "Session": ".runtime.session",
    "write_triton_repo": ".serving.triton", "write_feature_shards": ".calibration.shards",
    "fit_from_shards": ".calibration.shards", "serving": ".serving",
    "metrics": ".evaluation.metrics",
    "data": ".data", "detectors": ".detectors", "models": ".models", "calibration": ".calibration",
    "exporter": ".exporter", "runtime": ".runtime", "evaluation": ".evaluation",
}
lazy_exports(__name__, _EXPORTS, modules=("metrics", "data", "detectors", "models", "calibration", "exporter",
                                          "runtime", "evaluation", "serving"))

__all__ = ["__version__", "ArtifactError", "NotFittedError", "OodgateError", *_EXPORTS]
