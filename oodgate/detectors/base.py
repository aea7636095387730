"""What every detector shares: parameters, fitting from (streamed) features, scoring through its torch head."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ArtifactError, NotFittedError, OodgateError
from ..progress import progress_bar

ArrayLike = Any  # np.ndarray | torch.Tensor
FeatureSource = Any  # ArrayLike, or an iterable of feature batches / (features, labels) batches


def keep_count(d: int, p: float) -> int:
    """Entries kept at percentile p: D - round(D*p/100), round half to even (METHODS.md)."""
    return int(d - round(d * p / 100.0))


def to_numpy(x: ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    """Convert a tensor or array-like to a NumPy array of the given dtype."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def check_features(x: ArrayLike, width: int | None, what: str = "features") -> np.ndarray:
    """Validate a (N, D) feature matrix: 2-D, expected width, finite. Returns float32."""
    arr = to_numpy(x, np.float32)
    if arr.ndim == 1 and width is not None and arr.shape[0] == width:
        raise OodgateError(f"expected {what} of shape (N, {width}), got ({width},): add a batch axis (x[None])")
    if arr.ndim != 2:
        raise OodgateError(f"expected {what} of shape (N, D), got shape {tuple(arr.shape)}")
    if width is not None and arr.shape[1] != width:
        raise OodgateError(
            f"expected {what} of width {width} (the head's input size), got width {arr.shape[1]}: "
            "pass the pooled penultimate features of the same model"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise OodgateError(f"{what} contain {bad} NaN/inf value(s): check the model and the input data")
    return arr


def check_labels(labels: ArrayLike, n: int, num_classes: int) -> np.ndarray:
    """Validate integer class labels in [0, num_classes)."""
    lab = to_numpy(labels, np.float64)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise OodgateError(f"expected {n} labels (one per feature row), got shape {tuple(lab.shape)}")
    if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
        raise OodgateError("labels must be integer class indices")
    lab = lab.astype(np.int64)
    if n and (lab.min() < 0 or lab.max() >= num_classes):
        bad = lab[(lab < 0) | (lab >= num_classes)][0]
        raise OodgateError(f"label {bad} is out of range: the head has {num_classes} classes (0..{num_classes - 1})")
    return lab


def iter_batches(features: FeatureSource, labels: ArrayLike | None, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """Yield (features, labels-or-None) batches: arrays/tensors/lists are one matrix; other iterables are batches."""
    if isinstance(features, (list, tuple)):
        features = np.asarray(features)
    if isinstance(features, (np.ndarray, torch.Tensor)):
        n = features.shape[0] if features.ndim else 0
        if labels is not None and len(labels) != n:
            raise OodgateError(f"expected {n} labels (one per feature row), got {len(labels)}")
        for start in range(0, max(n, 1), batch_size):
            yield features[start:start + batch_size], (None if labels is None else labels[start:start + batch_size])
        return
    if labels is not None:
        raise OodgateError("with streamed features, pass labels inside the batches: yield (features, labels)")
    for item in features:
        if isinstance(item, tuple):
            yield item[0], item[1]
        else:
            yield item, None


class DetectorHead(nn.Module):
    """Base of the scoring modules: forward(h) -> (logits, score, label); fitted state lives in buffers."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The classifier's logits W h + b."""
        return torch.nn.functional.linear(h, self.weight, self.bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        return z, self.score_from(h, z), torch.argmax(z, dim=1)

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FeatureScorer(nn.Module):
    """x -> (logits, score, label) for detectors that score pooled features: head(backbone(x))."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(x))


#: pooled features by (weights, input batch), inside ``feature_cache()`` only
_FEATURE_CACHE: ContextVar[dict | None] = ContextVar("oodgate_feature_cache", default=None)


@contextmanager
def feature_cache() -> Iterator[None]:
    """Within this block, the pooled features of the same weights on the same input batch are computed once (e.g.
    when several single-pass detectors are calibrated on one model and one data set); outside it nothing is kept."""
    token = _FEATURE_CACHE.set({}) if _FEATURE_CACHE.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _FEATURE_CACHE.reset(token)


def feature_cache_active() -> bool:
    """True inside ``feature_cache()``."""
    return _FEATURE_CACHE.get() is not None


def weights_digest(model: nn.Module) -> str:
    """sha256 over a model's class name and state dict (names and bytes)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def pooled_features(split: nn.Module, x: np.ndarray, digest: str | None = None) -> np.ndarray:
    """``split.features`` of a preprocessed batch as float32 (N, D), from the cache inside ``feature_cache()``."""
    cache = _FEATURE_CACHE.get()
    x = np.ascontiguousarray(x, dtype=np.float32)
    key = None
    if cache is not None:
        key = (digest or weights_digest(split), x.shape, hashlib.sha256(x.tobytes()).hexdigest())
        if key in cache:
            return cache[key].copy()  # a copy: callers may change their batch in place
    h = split.features(torch.from_numpy(x)).numpy().astype(np.float32, copy=False)
    if key is not None:
        cache[key] = h.copy()
    return h


@torch.no_grad()
def iter_model_features(split: nn.Module, batches: Iterable[tuple[np.ndarray, Any]], *, progress: bool | None = None,
                        n: int | None = None, desc: str = "features") -> Iterator[tuple[np.ndarray, Any]]:
    """(pooled features float32 (B, D), labels or None) per batch of preprocessed images, with a progress bar."""
    split.eval()
    digest = weights_digest(split) if feature_cache_active() else None  # once per pass, not per batch
    with progress_bar(n, desc, progress) as bar:
        for x, labels in batches:
            h = pooled_features(split, x, digest)
            bar.update(len(x))
            yield h, labels


class Detector:
    """A post-hoc OOD detector: sklearn-style ``fit`` on ID features, ``score`` (higher = ID).

    The contract that calibration and the exporter use, and nothing else:

    - ``fit_model(split, batches, ...)`` / ``score_model(split, batches, ...)``: fit on / score batches of
      preprocessed images through a split model (default: its pooled features, then ``fit`` / ``score``);
    - ``graph_scorer(split)``: the exported x -> (logits, score, label) module (default: backbone + ``head()``).

    Detectors that need the input itself (AdaSCALE) set ``input_kind = "images"`` and override the model-level
    methods; their feature-level ``fit`` / ``score`` then refuse with what to call instead.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    needs_labels: ClassVar[bool] = False
    #: "features": fitted and scored on pooled features; "images": only through the model (fit_model/score_model)
    input_kind: ClassVar[str] = "features"
    #: the method was designed for non-negative (ReLU-pooled) features h: it clips, prunes or ranks h as
    #: activation strengths (calibrate warns when the ID features are signed, e.g. ViT / Swin / ConvNeXt)
    assumes_nonnegative_features: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise OodgateError(f"unknown parameter(s) {unknown} for detector '{self.name}'; allowed: {allowed}")
        self.params: dict[str, Any] = {**self.defaults, **params}
        self.validate_params()

    # -- parameters -------------------------------------------------------------------------------------
    def validate_params(self) -> None:
        """Check parameter values; raise OodgateError naming the bad one."""
        for key in ("p", "p_w", "p_a", "p_min", "p_max"):
            if key in self.params:
                val = self.params[key]
                if (isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val)
                        or not 0 <= val < 100):
                    raise OodgateError(f"parameter {key}={val!r} of '{self.name}' must be a percentile in [0, 100)")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # -- fitting ----------------------------------------------------------------------------------------
    def fit(self, features: FeatureSource, labels: ArrayLike | None = None, *, weight: ArrayLike,
            bias: ArrayLike | None = None, class_names: Sequence[str] | None = None,
            batch_size: int = 4096) -> "Detector":
        """Fit the detector's statistics on ID features (array or iterable of batches); returns self.

        ``class_names`` (optional) name the head's classes, for detectors whose parameters name classes (MOS groups).
        """
        if self.input_kind != "features":
            raise OodgateError(f"'{self.name}' perturbs the input, so it is fitted from the model and images: use "
                               "oodgate.calibrate(model, id_data, method=...) or .fit_model(split_model, batches)")
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        w = to_numpy(weight)
        if w.ndim != 2:
            raise OodgateError(f"expected the head weight of shape (C, D), got shape {w.shape}")
        b = np.zeros(w.shape[0]) if bias is None else to_numpy(bias)
        if b.shape != (w.shape[0],):
            raise OodgateError(f"expected a bias of shape ({w.shape[0]},), got shape {b.shape}")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise OodgateError("the head weight or bias contains NaN/inf")
        self.weight_, self.bias_ = w, b
        batches = self._checked_batches(features, labels, batch_size)
        self._fit(batches)
        self.head_ = self._build_head().eval()
        return self

    def _checked_batches(self, features: FeatureSource, labels: ArrayLike | None,
                         batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        c, d = self.weight_.shape
        seen = 0
        for feats, labs in iter_batches(features, labels, batch_size):
            f = check_features(feats, d).astype(np.float64)
            lab = None if labs is None else check_labels(labs, f.shape[0], c)
            seen += f.shape[0]
            yield f, lab
        if seen == 0:
            raise OodgateError(f"no ID features given to fit '{self.name}': pass at least one sample")

    def _fit(self, batches: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Compute fitted statistics (suffix _) from checked float64 batches; default: consume nothing."""
        for _ in batches:
            pass

    def _build_head(self) -> DetectorHead:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- use --------------------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "head_")

    def head(self) -> nn.Module:
        """The fitted scoring module: forward(h) -> (logits, score, label). The exporter exports this."""
        if not self.is_fitted:
            raise NotFittedError(f"detector '{self.name}' is not fitted: call .fit(features, weight=W, bias=b) first")
        return self.head_

    @property
    def in_features(self) -> int:
        return int(self.head().weight.shape[1])

    @property
    def score_batch_size(self) -> int:
        """Rows scored at once (detectors with large per-sample intermediates lower it)."""
        return 8192

    @torch.no_grad()
    def _run(self, features: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        head = self.head()
        x = check_features(features, self.in_features)
        batch_size = self.score_batch_size
        outs = [head(torch.from_numpy(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        if not outs:
            return np.zeros((0, head.weight.shape[0]), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        return tuple(torch.cat([o[k] for o in outs]).numpy() for k in range(3))  # type: ignore[return-value]

    def score(self, features: ArrayLike) -> np.ndarray:
        """OOD score per row of features, shape (N,); higher = more in-distribution."""
        if self.input_kind != "features":
            raise OodgateError(f"'{self.name}' scores images, not features: use .score_model(split, batches) or "
                               "an exported graph")
        return self._run(features)[1]

    # -- the model-level contract (calibration and the exporter call only these) ---------------------------
    def fit_model(self, split: nn.Module, batches: Iterable[tuple[np.ndarray, Any]], *, progress: bool | None = None,
                  n: int | None = None, class_names: Sequence[str] | None = None) -> "Detector":
        """Fit on batches of (preprocessed images, labels or None) through ``split`` (a SplitModel); returns self."""
        with torch.no_grad():
            weight, bias = split.head.weight.detach().numpy(), split.head.bias.detach().numpy()
        feats = iter_model_features(split, batches, progress=progress, n=n, desc=f"fit {self.name}")
        return self.fit(feats, weight=weight, bias=bias, class_names=class_names)

    def score_model(self, split: nn.Module, batches: Iterable[tuple[np.ndarray, Any]], *,
                    progress: bool | None = None, n: int | None = None) -> np.ndarray:
        """Scores (higher = ID) of batches of preprocessed images through ``split``."""
        feats = [f for f, _ in iter_model_features(split, batches, progress=progress, n=n, desc="features")]
        if not feats:
            return np.zeros(0, np.float32)
        return self.score(np.concatenate(feats))

    def graph_scorer(self, split: nn.Module) -> nn.Module:
        """The exported x -> (logits, score, label) module for ``split``: here backbone + the fitted head."""
        return FeatureScorer(split.backbone, self.head())

    def predict(self, features: ArrayLike) -> np.ndarray:
        """Predicted class per row of features."""
        return self._run(features)[2]

    # -- persistence ------------------------------------------------------------------------------------
    #: fitted attributes (ending in "_") that define the detector; saved without the trailing "_"
    fitted: ClassVar[tuple[str, ...]] = ("weight_", "bias_")
    #: fitted attributes that are plain JSON values (floats, strings) rather than arrays
    fitted_info: ClassVar[tuple[str, ...]] = ()

    def fitted_state(self) -> dict[str, np.ndarray]:
        """Fitted arrays by name (what a calibration file stores)."""
        self.head()
        return {name.rstrip("_"): np.asarray(getattr(self, name)) for name in self.fitted}

    def fit_info(self) -> dict[str, Any]:
        """JSON-serialisable facts about the fit (e.g. which clip value was used)."""
        self.head()
        return {name.rstrip("_"): getattr(self, name) for name in self.fitted_info}

    @classmethod
    def from_state(cls, params: dict[str, Any], state: dict[str, np.ndarray],
                   info: dict[str, Any] | None = None) -> "Detector":
        """Rebuild a fitted detector from saved parameters, arrays and info."""
        det = cls(**params)
        info = info or {}
        for name in cls.fitted:
            if name.rstrip("_") not in state:
                raise ArtifactError(f"saved state of detector '{cls.name}' lacks '{name.rstrip('_')}'")
            setattr(det, name, np.asarray(state[name.rstrip("_")]))
        for name in cls.fitted_info:
            if name.rstrip("_") not in info:
                raise ArtifactError(f"saved state of detector '{cls.name}' lacks '{name.rstrip('_')}'")
            setattr(det, name, info[name.rstrip("_")])
        det.head_ = det._build_head().eval()
        return det
