"""Serving at scale on existing engines: a Triton model repository and Ray Data scoring. Never imports torch.

Re-exports lazily, so that ``import oodgate.serving`` imports neither tritonclient nor ray.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "TritonConfigError": "oodgate.serving.triton",
    "TritonModel": "oodgate.serving.triton",
    "check_triton_config": "oodgate.serving.triton",
    "check_triton_model": "oodgate.serving.triton",
    "triton_config_text": "oodgate.serving.triton",
    "write_triton_repo": "oodgate.serving.triton",
    "GraphScorer": "oodgate.serving.ray_scoring",
    "read_scores": "oodgate.serving.ray_scoring",
    "score_dataset": "oodgate.serving.ray_scoring",
    "serve_graph": "oodgate.serving.pytriton_host",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'oodgate.serving' has no attribute {name!r}")
