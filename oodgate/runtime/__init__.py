"""Runtime: load an oodgate graph and run it (ONNX Runtime CPU/CUDA/TensorRT EPs, native TensorRT). Never imports
torch; names are imported on first use."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "GraphInfo": ".metadata", "read_graph_info": ".metadata",
    "PROVIDER_NAMES": ".providers", "ProviderError": ".providers", "resolve_providers": ".providers",
    "Prediction": ".session", "Session": ".session", "open_session": ".session",
}
lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
