"""The calibration file: one versioned, checksummed archive with everything fitted on ID data."""

from __future__ import annotations

import hashlib
import io
import json
import math
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
#: what a loader decompresses at most (manifest / all entries together): a calibration holds a detector's
#: statistics and held-out scores (a few MB for ImageNet models), so anything larger is refused unread
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_UNCOMPRESSED_BYTES = 256 * 2**20


def model_state_hash(model: Any) -> str:
    """sha256 over a torch module's state (names, dtypes, shapes and bytes of every parameter and buffer)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        arr = np.ascontiguousarray(tensor.detach().cpu().numpy())
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


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
    #: sha256 of the (split) model's state the detector and threshold were fitted with (model_state_hash)
    model_sha256: str | None = None
    #: in-memory only: whether a ``module:attr`` model_ref may be imported (set when the user names it again or
    #: trusts the file: ``trust_model=True`` / ``--trust-model``); built-in names never need it
    trust_model: bool = field(default=False, repr=False, compare=False)
    #: in-memory only: the folder relative paths (model_weights) resolve against (the calibration file's)
    base_dir: Path | None = field(default=None, repr=False, compare=False)
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

    def model(self, *, verify_state: bool = True) -> Any:
        """The classifier as a SplitModel: the one calibrated in memory, or reloaded from ``model_ref``.

        A reloaded model whose weights differ from the calibrated ones is refused (unless ``verify_state=False``,
        for a caller that re-checks the threshold itself)."""
        if self._model is None:
            from ..models.registry import load_model
            from ..models.split import split_classifier

            if not self.model_ref:
                raise OodgateError("this calibration was made from an in-memory model with no reference: "
                                   "pass the model again (export(calibration, path, model=...))")
            if ":" in self.model_ref and not self.trust_model:
                raise ArtifactError(
                    f"this calibration names the model '{self.model_ref}', which is code that would be imported and "
                    f"run: name it again (--model {self.model_ref}) or pass --trust-model (trust_model=True) if you "
                    "trust the file as much as that code")
            bundle = load_model(self.model_ref, weights=self.weights_path(), preprocess=self.preprocess)
            split = split_classifier(bundle.model, head=self.model_head)
            if verify_state:
                self.check_model(split)
            self._model = split
        return self._model

    def weights_path(self) -> Path | None:
        """The weights file: a relative ``model_weights`` resolves against the calibration file's folder."""
        if not self.model_weights:
            return None
        path = Path(self.model_weights)
        return path if path.is_absolute() or self.base_dir is None else self.base_dir / path

    def check_model(self, split: Any) -> None:
        """Refuse a model whose state differs from the one this calibration was fitted with."""
        if self.model_sha256 is None:
            return
        got = model_state_hash(split)
        if got != self.model_sha256:
            raise ArtifactError(
                f"the model's weights differ from those this calibration was fitted with (state sha256 "
                f"{got[:12]}…, calibrated {self.model_sha256[:12]}…): the threshold would be wrong for it; re-run "
                "calibrate, or re-check the new weights on held-out ID data (--recheck-data)")

    # -- files --------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """Everything but the arrays, as JSON-ready values."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "oodgate_version": self.oodgate_version,
            "method": self.method, "params": self.params, "info": self.info, "threshold": self.threshold,
            "tpr": self.tpr, "preprocess": self.preprocess.to_dict(), "class_names": self.class_names,
            "data_fingerprint": self.data_fingerprint, "model_ref": self.model_ref, "model_head": self.model_head,
            "model_weights": self.model_weights, "counts": self.counts, "seed": self.seed,
            **({"model_sha256": self.model_sha256} if self.model_sha256 is not None else {}),
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


def _bad(path: Path, field: str, value: Any, want: str) -> ArtifactError:
    return ArtifactError(f"{path}: manifest field '{field}' is {value!r:.80}, expected {want}: the file was edited "
                         "or is damaged; re-run calibrate")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_manifest(manifest: Any, path: Path) -> None:
    """Types and values of every manifest field; one ArtifactError naming the first bad one."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: the manifest is {type(manifest).__name__}, not an object: re-run calibrate")
    required = ("method", "params", "info", "threshold", "tpr", "preprocess", "class_names", "data_fingerprint",
                "model_ref", "model_head", "model_weights", "counts", "seed", "arrays", "checksum", "oodgate_version")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise ArtifactError(f"{path}: the manifest lacks {missing}: the file was edited or is damaged; re-run calibrate")
    m = manifest
    for name in ("method", "data_fingerprint", "checksum", "oodgate_version"):
        if not isinstance(m[name], str) or not m[name]:
            raise _bad(path, name, m[name], "a non-empty string")
    for name in ("model_ref", "model_head", "model_weights", "model_sha256"):
        if m.get(name) is not None and (not isinstance(m[name], str) or not m[name]):
            raise _bad(path, name, m[name], "null or a non-empty string")
    for name in ("params", "info", "preprocess", "counts"):
        if not isinstance(m[name], dict):
            raise _bad(path, name, m[name], "an object")
    if not _is_number(m["threshold"]):
        raise _bad(path, "threshold", m["threshold"], "a finite number (a NaN threshold accepts every input)")
    if not _is_number(m["tpr"]) or not 0 < m["tpr"] <= 1:
        raise _bad(path, "tpr", m["tpr"], "a share in (0, 1]")
    if not isinstance(m["seed"], int) or isinstance(m["seed"], bool):
        raise _bad(path, "seed", m["seed"], "an integer")
    names = m["class_names"]
    if names is not None and (not isinstance(names, list) or not all(isinstance(c, str) for c in names)):
        raise _bad(path, "class_names", names, "null or a list of strings")
    arrays = m["arrays"]
    if (not isinstance(arrays, list) or not all(isinstance(a, str) for a in arrays) or len(set(arrays)) != len(arrays)
            or "holdout_scores" not in arrays or any(a != "holdout_scores" and not a.startswith("state/") for a in arrays)):
        raise _bad(path, "arrays", arrays, "the list of distinct array names, holdout_scores and state/*")


def _read_bounded(zf: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ArtifactError(f"{path} is not a readable oodgate calibration file (the archive lacks {name}): it was "
                            "edited or is damaged; re-run calibrate") from None
    if info.file_size > limit:
        raise ArtifactError(f"{path}: {name} would decompress to {info.file_size} bytes, more than a calibration "
                            f"holds ({limit}): refused unread; the file is not an oodgate calibration")
    return zf.read(name)


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; a missing, foreign, other-version or tampered file gives a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such calibration file: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > MAX_UNCOMPRESSED_BYTES:
                raise ArtifactError(f"{path} would decompress to {total} bytes, more than a calibration holds "
                                    f"({MAX_UNCOMPRESSED_BYTES}): refused unread; it is not an oodgate calibration")
            if len({i.filename for i in infos}) != len(infos):
                raise ArtifactError(f"{path} holds duplicate archive entries: the file was edited; re-run calibrate")
            manifest = json.loads(_read_bounded(zf, MANIFEST, MAX_MANIFEST_BYTES, path))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ArtifactError(f"{path} is not an oodgate calibration file")
            if manifest.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(
                    f"{path} has calibration format version {str(manifest.get('format_version'))[:20]} (written by "
                    f"oodgate {str(manifest.get('oodgate_version'))[:20]}); this oodgate reads version {FORMAT_VERSION}: "
                    "re-run calibrate")
            validate_manifest(manifest, path)
            extra = sorted({i.filename for i in infos} - {MANIFEST} - {a + ".npy" for a in manifest["arrays"]})
            if extra:
                raise ArtifactError(f"{path} holds entries the manifest does not list ({extra[:3]}): the file was "
                                    "edited; re-run calibrate")
            arrays = {name: np.load(io.BytesIO(_read_bounded(zf, name + ".npy", MAX_UNCOMPRESSED_BYTES, path)),
                                    allow_pickle=False)
                      for name in manifest["arrays"]}
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, KeyError, ValueError, OSError,
            NotImplementedError, RuntimeError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ArtifactError(f"{path} is not a readable oodgate calibration file ({type(exc).__name__}: "
                            f"{first:.120})") from None
    if _checksum(manifest, arrays) != manifest.get("checksum"):
        raise ArtifactError(f"{path} fails its checksum: the file was modified or is corrupt; re-run calibrate")
    from ..detectors.registry import available_detectors

    if manifest["method"] not in available_detectors():
        raise ArtifactError(f"{path}: method '{manifest['method']:.40}' is not a detector of this oodgate "
                            f"({', '.join(available_detectors())}): re-run calibrate")
    scores = arrays["holdout_scores"]
    if scores.ndim != 1 or scores.dtype != np.float32 or not np.all(np.isfinite(scores)):
        raise ArtifactError(f"{path}: its held-out scores are not finite float32 values: re-run calibrate")
    if scores.size:
        from ..detectors.threshold import fit_threshold

        if np.float32(fit_threshold(scores, manifest["tpr"])) != np.float32(manifest["threshold"]):
            raise ArtifactError(f"{path}: threshold {manifest['threshold']!r} is not the one fitted on its held-out "
                                f"scores at TPR {manifest['tpr']}: the file was edited; re-run calibrate")
    state = {k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}
    try:
        preprocess = Preprocess.from_dict(manifest["preprocess"])
    except (OodgateError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: manifest field 'preprocess' is invalid ({exc}): re-run calibrate") from None
    return Calibration(
        method=manifest["method"], params=manifest["params"], state=state, info=manifest["info"],
        threshold=float(manifest["threshold"]), tpr=float(manifest["tpr"]),
        preprocess=preprocess, class_names=manifest["class_names"],
        data_fingerprint=manifest["data_fingerprint"], model_ref=manifest["model_ref"],
        model_head=manifest["model_head"], model_weights=manifest["model_weights"],
        holdout_scores=scores, counts=manifest["counts"], seed=manifest["seed"],
        oodgate_version=manifest["oodgate_version"], model_sha256=manifest.get("model_sha256"),
        base_dir=path.resolve().parent,
    )
