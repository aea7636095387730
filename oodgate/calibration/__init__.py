"""Calibration: fit a detector's statistics on ID data and its threshold on held-out ID data; the calibration file.
Names are imported on first use (``load_calibration`` needs no torch)."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "calibrate": ".calibrate", "resolve_images": ".calibrate", "resolve_model": ".calibrate",
    "Calibration": ".artifact", "load_calibration": ".artifact",
    "collect_features": ".features", "iter_features": ".features",
    "write_feature_shards": ".shards", "fit_from_shards": ".shards", "open_shards": ".shards",
    "fit_threshold": "..detectors.threshold",
    "progress_bar": "..progress", "show_progress": "..progress",
    "write_atomic": "..files",
}
lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
