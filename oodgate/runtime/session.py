"""Serving an oodgate graph with ONNX Runtime: preprocessing, batching, provider checks. No torch here."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OodgateError
from .metadata import GraphInfo, read_graph_info
from .providers import (NATIVE_TENSORRT, PROVIDER_NAMES, ProviderError, ProviderSpec, check_providers,
                        onnxruntime_module, resolve_providers, session_providers)


def check_threshold(value: Any) -> float:
    """A user-given threshold as a finite float; NaN/inf (which would accept or reject everything) are refused."""
    try:
        tau = float(value)
    except (TypeError, ValueError):
        raise OodgateError(f"threshold {value!r} is not a number: give a finite float, e.g. --threshold 4.2") from None
    if isinstance(value, bool) or not np.isfinite(tau):
        raise OodgateError(f"threshold {value!r} is not a finite number: give a finite float, e.g. --threshold 4.2")
    return tau


def ort_session(path: str, providers: Sequence[Any], *, threads: int | None = None,
                provider_options: Sequence[dict[str, Any]] | None = None) -> Any:
    """An onnxruntime.InferenceSession with full graph optimisation."""
    ort = onnxruntime_module()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=list(providers),
                                    provider_options=list(provider_options) if provider_options else None)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise OodgateError(f"ONNX Runtime cannot load {path}: {str(exc).strip().splitlines()[0]}") from None


@dataclass
class Prediction:
    """Outputs for a batch of inputs: logits, scores (higher = ID), decisions and labels."""

    logits: np.ndarray
    scores: np.ndarray
    is_ood: np.ndarray
    labels: np.ndarray
    threshold: float
    class_names: list[str] | None = None
    #: True where the preprocessed input held NaN/inf values (its score is then not trustworthy; is_ood is True
    #: whenever the score is non-finite)
    nonfinite_input: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def records(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One dict per input: input, label, class (None when the graph has no class names), score, is_ood."""
        out = []
        for i in range(len(self)):
            label = int(self.labels[i])
            known = bool(self.class_names) and 0 <= label < len(self.class_names)
            rec: dict[str, Any] = {"input": names[i] if names else i, "label": label,
                                   "class": self.class_names[label] if known else None,
                                   "score": float(self.scores[i]), "is_ood": bool(self.is_ood[i])}
            if self.nonfinite_input is not None and self.nonfinite_input[i]:
                rec["nonfinite_input"] = True
            out.append(rec)
        return out


class Session:
    """Runs an oodgate graph: ``Session(path, providers='auto').run(images)`` -> Prediction.

    ``providers``: a provider spec ('auto' | 'cpu' | 'cuda' | 'tensorrt' | 'trt-native', with options such as
    'tensorrt:fp16' or 'trt-native:fp16,batch=1/8/32', as on the command line) or an explicit ONNX Runtime
    provider list. A requested
    GPU provider that ONNX Runtime silently replaced by the CPU raises ProviderError. 'trt-native' runs oodgate's
    own TensorRT runner instead of ONNX Runtime; ``provider_options=[{...}]`` then holds its keyword arguments
    (precision='fp16', profile=(1, 8, 32), cache_dir=...). For 'tensorrt'/'cuda' without ``provider_options``,
    the defaults of ``oodgate.runtime.providers.provider_options`` apply (batch profile 1/32/32, engine cache).
    """

    def __init__(self, path: str | Path, providers: str | Sequence[Any] = "auto", *, threads: int | None = None,
                 provider_options: Sequence[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.info: GraphInfo = read_graph_info(self.path)
        spec = ProviderSpec.parse(providers) if isinstance(providers, str) else None
        if spec is not None and spec.native:
            from .tensorrt import TensorRTRunner

            options = {**spec.options, **(dict(provider_options[0]) if provider_options else {})}
            self._sess = TensorRTRunner(self.path, **options)
            self.providers = list(self._sess.get_providers())
            self._outputs = [o.name for o in self._sess.get_outputs()]
            return
        if spec is None:
            requested = list(providers)
        elif provider_options is None:
            requested, provider_options = session_providers(self.path, providers, input_name=self.info.input_name,
                                                            input_shape=self.info.input_shape)
        else:
            requested = resolve_providers(spec.name)
        self._sess = ort_session(str(self.path), requested, threads=threads, provider_options=provider_options)
        self.providers: list[str] = list(self._sess.get_providers())
        check_providers([p if isinstance(p, str) else p[0] for p in requested], self.providers)
        self._outputs = [o.name for o in self._sess.get_outputs()]

    # context manager, as Polygraphy's runners
    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the ONNX Runtime session (or the native TensorRT runner's device memory)."""
        if self._sess is not None and hasattr(self._sess, "close"):
            self._sess.close()
        self._sess = None

    @property
    def threshold(self) -> float:
        return self.info.threshold

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.info.input_shape

    def preprocess(self, images: Any) -> np.ndarray:
        """Apply the graph's recorded preprocessing: images (paths, PIL, arrays) -> float32 (N, C, H, W)."""
        return self.info.preprocess(images)

    def run_array(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run preprocessed inputs (N, C, H, W) as one batch; returns the raw outputs by name."""
        if self._sess is None:
            raise OodgateError("this Session is closed")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            shape = "(N, " + ", ".join(map(str, self.input_shape)) + ")"
            hint = ": add a batch axis" if x.ndim == 3 else ""
            raise OodgateError(f"expected input of shape {shape}, got {tuple(x.shape)}{hint}")
        return dict(zip(self._outputs, self._sess.run(self._outputs, {self.info.input_name: x})))

    def run(self, images: Any, *, threshold: float | None = None, batch_size: int = 32) -> Prediction:
        """Score images (a path, PIL image or array, or a sequence of them; or preprocessed (N,C,H,W) floats)."""
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, (Sequence, np.ndarray)):
            images = [images]
        elif isinstance(images, np.ndarray) and (
                images.ndim == 2 or (images.ndim == 3 and (images.shape[-1] in (1, 3, 4)
                                                          or tuple(images.shape) == tuple(self.input_shape)))):
            images = [images]  # one image (H, W), (H, W, C) or preprocessed (C, H, W), as Preprocess reads it
        tau = self.threshold if threshold is None else check_threshold(threshold)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise OodgateError(f"batch_size must be a positive integer, got {batch_size!r}")
        outs: list[dict[str, np.ndarray]] = []
        flags: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            x = self.preprocess(images[start:start + batch_size])
            flags.append(~np.isfinite(np.asarray(x, np.float32)).reshape(len(x), -1).all(axis=1))
            outs.append(self.run_array(x))
        if not outs:
            raise OodgateError("no inputs to run: give at least one image")
        joined = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        scores = joined["score"]
        is_ood = joined["is_ood"] if threshold is None else ~((scores >= np.float32(tau)) & (scores < np.inf))
        return Prediction(joined["logits"], scores, is_ood.astype(bool), joined["label"], tau,
                          self.info.class_names, np.concatenate(flags))


def open_session(graph: str | Path, spec: str, **session_kwargs: Any) -> Session:
    """A Session for a provider spec ('cpu', 'cuda', 'tensorrt:fp16', 'trt-native:fp16,batch=1/8/32', ...)."""
    return Session(graph, spec, **session_kwargs)


__all__ = ["NATIVE_TENSORRT", "PROVIDER_NAMES", "Prediction", "ProviderError", "Session", "check_providers",
           "open_session", "ort_session", "resolve_providers"]
