"""Runtime: load an oodgate graph and run it (ONNX Runtime CPU/CUDA/TensorRT EPs). Never imports torch."""

from __future__ import annotations

from .metadata import GraphInfo, read_graph_info
from .session import PROVIDER_NAMES, Prediction, ProviderError, Session, resolve_providers

__all__ = ["GraphInfo", "PROVIDER_NAMES", "Prediction", "ProviderError", "Session", "read_graph_info",
           "resolve_providers"]
