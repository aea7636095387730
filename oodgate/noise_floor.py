"""The noise-floor parity criterion (torch-free): a graph is as exact as PyTorch float32, judged against float64.

A fixed 1e-4 tolerance is below float32 rounding for a 50-layer net (ResNet-50's logits differ from float64 by
~1e-3 relative in PyTorch itself), and above it for a small one. So the tolerance is measured instead, per output:
with ``ref64`` the float64 PyTorch reference (the same module, computed in float64) and ``ref32`` PyTorch float32,

    max |graph - ref64|  <=  factor * max |ref32 - ref64|  +  atol,   atol = ulps * eps32 * max(1, max |ref64|)

(factor 4 by default: two float32 implementations that sum in different orders differ from float64 by errors of
the same size; a wrong graph is off by orders of magnitude). Labels must agree with float64 except where the
float64 top-2 logit gap is within the logits' bound (a tie within noise); decisions (score < tau) except where the
float64 score is within the score's bound of tau.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: the graph may be this many times further from float64 than PyTorch float32 is
FLOOR_FACTOR = 4.0
#: the tiny absolute floor, in float32 ulps of the output's magnitude (for outputs PyTorch gets exactly)
FLOOR_ULPS = 16.0
EPS32 = float(np.finfo(np.float32).eps)


@dataclass
class FloorComparison:
    """One output of one runtime against the float64 reference, with PyTorch float32's distance as the floor."""

    output: str
    graph_error: float  #: max |graph - float64|
    torch_error: float  #: max |PyTorch float32 - float64|: the measured noise floor
    bound: float  #: factor * torch_error + atol
    scale: float  #: max |float64|
    passed: bool

    @property
    def ratio(self) -> float:
        """graph_error / torch_error (how many noise floors away the graph is; inf if PyTorch is exact)."""
        return self.graph_error / self.torch_error if self.torch_error > 0 else (0.0 if self.graph_error == 0
                                                                                  else float("inf"))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def floor_atol(ref64: np.ndarray, ulps: float = FLOOR_ULPS) -> float:
    """The tiny absolute tolerance: ``ulps`` float32 ulps of the output's largest magnitude (at least of 1)."""
    scale = float(np.max(np.abs(ref64), initial=0.0)) if np.size(ref64) else 0.0
    return ulps * EPS32 * max(1.0, scale)


def compare_to_floor(output: str, got: Any, ref32: Any, ref64: Any, *, factor: float = FLOOR_FACTOR,
                     ulps: float = FLOOR_ULPS) -> FloorComparison:
    """Is ``got`` within ``factor`` noise floors (PyTorch float32's distance to float64) of float64?

    Shapes must match; a non-finite value in ``got`` where float64 is finite fails.
    """
    a, r32, r64 = (np.asarray(v, dtype=np.float64) for v in (got, ref32, ref64))
    if a.shape != r64.shape or r32.shape != r64.shape:
        return FloorComparison(output, float("inf"), float("nan"), float("nan"), float("nan"), False)
    if a.size == 0:
        return FloorComparison(output, 0.0, 0.0, 0.0, 0.0, True)
    finite = np.isfinite(r64)
    if np.any(~np.isfinite(a) & finite):
        return FloorComparison(output, float("inf"), _max_abs(r32 - r64, finite), float("nan"),
                               float(np.max(np.abs(r64[finite]), initial=0.0)), False)
    graph_error = _max_abs(a - r64, finite)
    torch_error = _max_abs(r32 - r64, finite)
    atol = floor_atol(r64[finite], ulps)
    bound = factor * torch_error + atol
    scale = float(np.max(np.abs(r64[finite]), initial=0.0))
    return FloorComparison(output, graph_error, torch_error, bound, scale, bool(graph_error <= bound))


def _max_abs(diff: np.ndarray, where: np.ndarray) -> float:
    return float(np.max(np.abs(diff[where]), initial=0.0))


def near_tie(logits64: Any, margin: float) -> np.ndarray:
    """Per sample: is the float64 top-2 logit gap within ``margin`` (so that either label is within noise)?"""
    z = np.asarray(logits64, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        return np.zeros(len(z), bool)
    top2 = np.sort(z, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) <= margin


def near_threshold(score64: Any, threshold: float, margin: float) -> np.ndarray:
    """Per sample: is the float64 score within ``margin`` of tau (so that either decision is within noise)?"""
    return np.abs(np.asarray(score64, dtype=np.float64) - float(threshold)) <= margin


@dataclass
class FloorReport:
    """A graph's outputs against float64, with PyTorch float32 as the noise floor (see the module docstring)."""

    outputs: list[FloorComparison]
    label_mismatches: int  #: labels that differ from float64 away from a tie
    labels_near_tie: int  #: labels that differ from float64 within noise of a tie (allowed)
    decision_flips: int  #: decisions that differ from float64 away from tau
    decisions_near_threshold: int  #: ... within noise of tau (allowed)
    factor: float

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) and self.label_mismatches == 0 and self.decision_flips == 0

    def failures(self) -> list[str]:
        """One phrase per failed part (for one-line error messages)."""
        out = [f"{o.output}: max |diff| to float64 {o.graph_error:.3g} > {o.bound:.3g} (= {self.factor:g} x "
               f"PyTorch float32's own {o.torch_error:.3g} + atol)" for o in self.outputs if not o.passed]
        if self.label_mismatches:
            out.append(f"{self.label_mismatches} label(s) differ from float64 away from a tie")
        if self.decision_flips:
            out.append(f"{self.decision_flips} is_ood decision(s) differ from float64 away from tau")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": [o.to_dict() for o in self.outputs], "label_mismatches": self.label_mismatches,
                "labels_near_tie": self.labels_near_tie, "decision_flips": self.decision_flips,
                "decisions_near_threshold": self.decisions_near_threshold, "factor": self.factor,
                "passed": self.passed}


def floor_report(got: dict[str, Any], ref32: dict[str, Any], ref64: dict[str, Any], *, threshold: float,
                 factor: float = FLOOR_FACTOR, ulps: float = FLOOR_ULPS,
                 smooth: tuple[str, ...] = ("logits", "score")) -> FloorReport:
    """Judge a graph's four outputs (logits, score, is_ood, label) by the noise-floor rule.

    ``smooth`` names the outputs compared element-wise against the floor; labels and decisions are compared
    with float64 away from ties / tau, the margins being the logits' and the score's bounds.
    """
    outputs = [compare_to_floor(name, got[name], ref32[name], ref64[name], factor=factor, ulps=ulps)
               for name in smooth]
    bounds = {o.output: o.bound for o in outputs}
    logits_margin = 2.0 * _finite(bounds.get("logits"), _bound_of("logits", ref32, ref64, factor, ulps))
    score_margin = _finite(bounds.get("score"), _bound_of("score", ref32, ref64, factor, ulps))
    tie = near_tie(ref64["logits"], logits_margin)
    label_diff = np.asarray(got["label"]).astype(np.int64) != np.asarray(ref64["label"]).astype(np.int64)
    decision64 = np.asarray(ref64["score"], np.float64) < float(threshold)
    decision_diff = np.asarray(got["is_ood"]).astype(bool) != decision64
    near = near_threshold(ref64["score"], threshold, score_margin)
    return FloorReport(outputs, int((label_diff & ~tie).sum()), int((label_diff & tie).sum()),
                       int((decision_diff & ~near).sum()), int((decision_diff & near).sum()), factor)


def _bound_of(name: str, ref32: dict[str, Any], ref64: dict[str, Any], factor: float, ulps: float) -> float:
    r32, r64 = np.asarray(ref32[name], np.float64), np.asarray(ref64[name], np.float64)
    finite = np.isfinite(r64) & np.isfinite(r32)
    return factor * _max_abs(r32 - r64, finite) + floor_atol(r64[finite], ulps)


def _finite(value: float | None, fallback: float) -> float:
    return fallback if value is None or not np.isfinite(value) else float(value)


__all__ = ["EPS32", "FLOOR_FACTOR", "FLOOR_ULPS", "FloorComparison", "FloorReport", "compare_to_floor",
           "floor_atol", "floor_report", "near_threshold", "near_tie"]
