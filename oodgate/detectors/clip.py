"""The clip parameter shared by DICE (+ReAct) and LINe: an absolute value or a percentile of ID activations."""

from __future__ import annotations

import math
from typing import Any

from ..errors import OodgateError


def parse_clip(clip: Any, *, allow_none: bool) -> tuple[str, float] | None:
    """Parse ``clip``: a number (absolute), 'pNN' (percentile NN of all ID activations), or None (no clip)."""
    if clip is None or (isinstance(clip, str) and clip.lower() in ("none", "")):
        if allow_none:
            return None
        raise OodgateError("clip must be a number (absolute value) or 'pNN' (a percentile of ID activations)")
    if isinstance(clip, str) and clip.lower().startswith("p"):
        try:
            p = float(clip[1:])
        except ValueError:
            p = math.nan
        if not 0 <= p <= 100:
            raise OodgateError(f"clip={clip!r}: a percentile clip is written 'pNN' with NN in [0, 100], e.g. 'p90'")
        return ("percentile", p)
    try:
        value = float(clip)
    except (TypeError, ValueError):
        raise OodgateError(f"clip={clip!r} is neither a number nor 'pNN' (e.g. 0.8 or 'p90')") from None
    if not math.isfinite(value) or value <= 0:
        raise OodgateError(f"clip={clip!r} must be a positive finite activation value")
    return ("absolute", value)
