"""The calibration file: one versioned, checksummed archive with everything fitted on ID data."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..data.preprocess import Preprocess
from ..errors import ArtifactError, OodgateError
from ..files import write_atomic

FORMAT = "oodgate-calibration"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _checksum(manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(json.dumps({k: v for k, v in manifest.items() if k != "checksum"},
                                       sort_keys=True).encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


@dataclass
class Calibration:
    """A detector fitted on ID data plus its threshold and everything needed to export and serve it."""

    method: str
    params: dict[str, Any]
    state: dict[str, np.ndarray]
    info: dict[str, Any]
    threshold: float
    tpr: float
    preprocess: Preprocess
    class_names: list[str] | None
    data_fingerprint: str
    model_ref: str | None = None
    model_head: str | None = None
    model_weights: str | None = None
    holdout_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    counts: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    oodgate_version: str = __version__
    #: in-memory only: the fitted detector and the model it was fitted with (not saved)
    _detector: Any = field(default=None, repr=False, compare=False)
    _model: Any = field(default=None, repr=False, compare=False)

    # -- objects ------------------------------------------------------------------------------------------
    @property
    def detector(self) -> Any:
        """The fitted detector (rebuilt from the saved state after loading)."""
        if self._detector is None:
            from ..detectors.registry import detector_class

            self._detector = detector_class(self.method).from_state(self.params, self.state, self.info)
        return self._detector

    def model(self) -> Any:
        """The classifier as a SplitModel: the one calibrated in memory, or reloaded from ``model_ref``."""
        if self._model is None:
            from ..models.registry import load_model
            from ..models.split import split_classifier

            if not self.model_ref:
                raise OodgateError("this calibration was made from an in-memory model with no reference: "
                                   "pass the model again (export(calibration, path, model=...))")
            bundle = load_model(self.model_ref, weights=self.model_weights, preprocess=self.preprocess)
            self._model = split_classifier(bundle.model, head=self.model_head)
        return self._model

    # -- files --------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON-ready values."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "oodgate_version": self.oodgate_version,
            "method": self.method, "params": self.params, "info": self.info, "threshold": self.threshold,
            "tpr": self.tpr, "preprocess": self.preprocess.to_dict(), "class_names": self.class_names,
            "data_fingerprint": self.data_fingerprint, "model_ref": self.model_ref, "model_head": self.model_head,
            "model_weights": self.model_weights, "counts": self.counts, "seed": self.seed,
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"state/{k}": np.asarray(v) for k, v in self.state.items()}
        arrays["holdout_scores"] = np.asarray(self.holdout_scores, dtype=np.float32)
        return arrays

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the calibration file atomically (refuses to overwrite unless ``overwrite``)."""
        arrays = self._arrays()
        manifest = self.manifest()
        manifest["arrays"] = sorted(arrays)
        manifest["checksum"] = self.checksum()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            for name, arr in arrays.items():
                npy = io.BytesIO()
                np.save(npy, arr, allow_pickle=False)
                zf.writestr(name + ".npy", npy.getvalue())
        return write_atomic(path, buf.getvalue(), overwrite=overwrite)

    def checksum(self) -> str:
        """sha256 of the calibration's content (what the file's checksum covers)."""
        arrays = self._arrays()
        manifest = self.manifest()
        manifest["arrays"] = sorted(arrays)
        return _checksum(manifest, arrays)

    def summary(self) -> str:
        """One line: method, parameters, threshold."""
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        line = f"{self.method}({params}) tau={self.threshold:.6g} at TPR {self.tpr:g} ({self.counts})"
        warning = self.info.get("feature_warning") if isinstance(self.info, dict) else None
        return f"{line}\nwarning: {warning}" if warning else line


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; a missing, foreign, other-version or tampered file gives a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such calibration file: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read(MANIFEST))
            if manifest.get("format") != FORMAT:
                raise ArtifactError(f"{path} is not an oodgate calibration file")
            if manifest.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(
                    f"{path} has calibration format version {manifest.get('format_version')} (written by oodgate "
                    f"{manifest.get('oodgate_version')}); this oodgate reads version {FORMAT_VERSION}: re-run calibrate")
            arrays = {name: np.load(io.BytesIO(zf.read(name + ".npy")), allow_pickle=False)
                      for name in manifest["arrays"]}
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, OSError) as exc:
        raise ArtifactError(f"{path} is not a readable oodgate calibration file ({type(exc).__name__}: {exc})") from None
    if _checksum(manifest, arrays) != manifest.get("checksum"):
        raise ArtifactError(f"{path} fails its checksum: the file was modified or is corrupt; re-run calibrate")
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    return Calibration(
        method=manifest["method"], params=manifest["params"], state=state, info=manifest["info"],
        threshold=float(manifest["threshold"]), tpr=float(manifest["tpr"]),
        preprocess=Preprocess.from_dict(manifest["preprocess"]), class_names=manifest["class_names"],
        data_fingerprint=manifest["data_fingerprint"], model_ref=manifest["model_ref"],
        model_head=manifest["model_head"], model_weights=manifest["model_weights"],
        holdout_scores=arrays["holdout_scores"], counts=manifest["counts"], seed=manifest["seed"],
        oodgate_version=manifest["oodgate_version"],
    )
