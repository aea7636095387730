"""Serving at scale on existing engines: a Triton model repository, the Triton protocol through PyTriton, and
Ray Data scoring. Never imports torch; names are imported on first use (no tritonclient, ray or pytriton before)."""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "TritonModel": ".triton", "check_triton_config": ".triton", "check_triton_model": ".triton",
    "triton_config_text": ".triton", "write_triton_repo": ".triton",
    "GraphScorer": ".ray_scoring", "read_scores": ".ray_scoring", "score_dataset": ".ray_scoring",
    "serve_graph": ".pytriton_host",
    "TritonConfigError": "..errors",
}
lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
