"""Exporter: one ONNX graph = backbone + detector head (+ threshold), with oodgate metadata, checked. Names are
imported on first use."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "EXTERNAL_DATA_BYTES": ".export", "ExportResult": ".export", "check_against_reference": ".export",
    "export": ".export", "graph_metadata": ".export",
    "ExportError": "..errors",
    "OodgateGraph": ".graph", "build_graph_module": ".graph",
    "export_onnx": ".onnx_export",
    "default_reference_device": ".reference", "parity": ".reference", "reference_outputs": ".reference",
}
lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
