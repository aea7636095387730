"""Parity for CI: the same real inputs through each runtime, compared per output with reference outputs (a golden
file, or the PyTorch reference computed by ``oodgate.exporter.reference``). No torch here.

With a float64 reference (``reference64``; ``oodgate.exporter.reference`` computes it), each runtime is judged by
the noise-floor criterion below. Without one (golden files), the fixed-tolerance convention (Polygraphy's): an
element fails only where BOTH |a - b| > atol and |a - b| > rtol * |ref|; decisions (is_ood) must agree for every
sample whose reference score is further than ``margin`` from tau; labels wherever the reference's top-2 logit gap
is larger than ``atol``.

The noise-floor criterion (torch-free): a graph is as exact as PyTorch float32, judged against float64.

A fixed 1e-4 tolerance is below float32 rounding for a 50-layer net (ResNet-50's logits differ from float64 by
~1e-3 relative in PyTorch itself), and above it for a small one. So the tolerance is measured instead, per output:
with ``ref64`` the float64 PyTorch reference (the same module, computed in float64) and ``ref32`` PyTorch float32,

    max |graph - ref64|  <=  factor * max |ref32 - ref64|  +  atol,   atol = ulps * eps32 * max(1, max |ref64|)

(factor 4 by default: two float32 implementations that sum in different orders differ from float64 by errors of
the same size; a wrong graph is off by orders of magnitude; ulps 1024, i.e. 1.2e-4 of the output's largest
magnitude, for ONNX Runtime's approximate exp / logistic kernels: ``FLOOR_ULPS``). Labels must agree with float64
except where the float64 top-2 logit gap is within the logits' bound (a tie within noise; for MOS, whose label is
the argmax of within-group probabilities, the top-2 gap of those, ``label_values``); decisions (score < tau) except
where the float64 score is within the score's bound of tau.

For methods whose score is discontinuous in the input (AdaSCALE: the 5 % smallest |g| are selected; ASH-P/B/S: the
top-k entries of h are kept, so of two nearly equal entries at the k-th place two float32 implementations may keep
different ones and the logits jump by the difference of two weight columns; ``DISCONTINUOUS_METHODS``), the
per-element bound of the score is reported but not required: such a graph passes on decisions away from tau and,
with OOD inputs, on the AUROC/FPR95 drift judged by the same rule (``drift_floor``): the graph's AUROC/FPR95 on the
real ID vs OOD inputs may differ from float64's by at most ``metric_tol`` (0.5 point) + factor x PyTorch float32's
own largest difference from float64 there (float32 AdaSCALE on some models moves AUROC by points against float64 by
itself) + the rates' one-sample resolution 1 / min(n_id, n_ood).
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OodgateError, ProviderError
from ..files import write_atomic
from ..runtime.metadata import OUTPUT_NAMES
from .drift import metric_drift

GOLDEN_FORMAT = "oodgate-golden"
#: methods whose per-sample score is discontinuous in the input (see the module docstring); their graph metadata
#: method names (torch-free, so that golden-file parity needs no detector import)
DISCONTINUOUS_METHODS = frozenset({"adascale_a", "adascale_l", "ash_p", "ash_b", "ash_s"})





#: the graph may be this many times further from float64 than PyTorch float32 is
FLOOR_FACTOR = 4.0
def drift_floor(reference: dict[str, np.ndarray], reference64: dict[str, np.ndarray], got: dict[str, np.ndarray],
                n_id: int, *, metric_tol: float = 0.005, factor: float | None = None,
                threshold: float | None = None) -> dict[str, Any]:
    """The AUROC/FPR95 drift of a discontinuous score judged against float64 (the module docstring).

    ``reference`` (PyTorch float32), ``reference64`` and ``got`` (the runtime) score the same inputs: ``n_id`` ID
    followed by OOD. Passes when the runtime's largest |change| of AUROC or FPR95 against float64 is at most
    ``metric_tol + factor * noise + 1 / min(n_id, n_ood)``: the noise is PyTorch float32's own largest |change|
    against float64, the last term the rates' resolution (one sample crossing the 95 %-TPR threshold moves FPR95 by
    1 / n_ood: on fewer than 200 images a 0.5-point tolerance is finer than the metric can show).
    """
    factor = FLOOR_FACTOR if factor is None else float(factor)
    n_ood = len(reference64["score"]) - n_id
    if n_id < 1 or n_ood < 1:
        raise OodgateError(f"the drift needs ID and OOD inputs, got {n_id} ID and {n_ood} OOD")
    step = 1.0 / min(n_id, n_ood)

    def against64(scores: np.ndarray):  # noqa: ANN202
        r64 = reference64["score"]
        return metric_drift(r64[:n_id], r64[n_id:], scores[:n_id], scores[n_id:], threshold=threshold)

    own, noise = against64(got["score"]), against64(reference["score"])
    bound = float(metric_tol + factor * noise.worst() + step)
    worst = own.worst()
    return {"delta64": own.delta, "torch_delta64": noise.delta, "worst": worst, "noise": noise.worst(),
            "step": step, "bound": bound, "factor": factor,
            "passed": bool(worst <= bound and own.nonfinite_scores == 0)}


#: the absolute floor, in float32 ulps of the output's largest magnitude (1024 ulps = 1.2e-4 of it): ONNX Runtime's
#: CPU kernels approximate exp / logistic (SiLU, sigmoid gates, softmax), so on EfficientNet-style nets its outputs
#: are further from float64 than PyTorch's by more than the factor (docs/ZOO.md: the EfficientNet-B0 MSP cell);
#: a wrong graph is off by far more than 1e-4 of the output's scale
FLOOR_ULPS = 1024.0
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
    #: False for discontinuous scores (DISCONTINUOUS_METHODS): the outputs' bounds are reported, not required
    outputs_judged: bool = True

    @property
    def passed(self) -> bool:
        outputs_ok = all(o.passed for o in self.outputs) or not self.outputs_judged
        return outputs_ok and self.label_mismatches == 0 and self.decision_flips == 0

    def failures(self) -> list[str]:
        """One phrase per failed part (for one-line error messages)."""
        out = [f"{o.output}: max |diff| to float64 {o.graph_error:.3g} > {o.bound:.3g} (= {self.factor:g} x "
               f"PyTorch float32's own {o.torch_error:.3g} + atol)" for o in self.outputs
               if not o.passed and self.outputs_judged]
        if self.label_mismatches:
            out.append(f"{self.label_mismatches} label(s) differ from float64 away from a tie")
        if self.decision_flips:
            out.append(f"{self.decision_flips} is_ood decision(s) differ from float64 away from tau")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": [o.to_dict() for o in self.outputs], "label_mismatches": self.label_mismatches,
                "labels_near_tie": self.labels_near_tie, "decision_flips": self.decision_flips,
                "decisions_near_threshold": self.decisions_near_threshold, "factor": self.factor,
                "outputs_judged": self.outputs_judged, "passed": self.passed}


def floor_report(got: dict[str, Any], ref32: dict[str, Any], ref64: dict[str, Any], *, threshold: float,
                 factor: float = FLOOR_FACTOR, ulps: float = FLOOR_ULPS,
                 smooth: tuple[str, ...] = ("logits", "score"), judge_outputs: bool = True) -> FloorReport:
    """Judge a graph's four outputs (logits, score, is_ood, label) by the noise-floor rule.

    ``smooth`` names the outputs compared element-wise against the floor; labels and decisions are compared
    with float64 away from ties / tau, the margins being the logits' and the score's bounds.
    """
    outputs = [compare_to_floor(name, got[name], ref32[name], ref64[name], factor=factor, ulps=ulps)
               for name in smooth]
    bounds = {o.output: o.bound for o in outputs}
    logits_margin = 2.0 * _finite(bounds.get("logits"), _bound_of("logits", ref32, ref64, factor, ulps))
    score_margin = _finite(bounds.get("score"), _bound_of("score", ref32, ref64, factor, ulps))
    if ref32.get("label_values") is not None and ref64.get("label_values") is not None:
        # the label is the argmax of other values (MOS: within-group probabilities): ties are judged on those
        values_margin = 2.0 * _bound_of("label_values", ref32, ref64, factor, ulps)
        tie = near_tie(np.asarray(ref64["label_values"], np.float64), values_margin)
    else:
        tie = near_tie(ref64["logits"], logits_margin)
    label_diff = np.asarray(got["label"]).astype(np.int64) != np.asarray(ref64["label"]).astype(np.int64)
    decision64 = np.asarray(ref64["score"], np.float64) < float(threshold)
    decision_diff = np.asarray(got["is_ood"]).astype(bool) != decision64
    near = near_threshold(ref64["score"], threshold, score_margin)
    return FloorReport(outputs, int((label_diff & ~tie).sum()), int((label_diff & tie).sum()),
                       int((decision_diff & ~near).sum()), int((decision_diff & near).sum()), factor,
                       judge_outputs)


def _bound_of(name: str, ref32: dict[str, Any], ref64: dict[str, Any], factor: float, ulps: float) -> float:
    r32, r64 = np.asarray(ref32[name], np.float64), np.asarray(ref64[name], np.float64)
    finite = np.isfinite(r64) & np.isfinite(r32)
    return factor * _max_abs(r32 - r64, finite) + floor_atol(r64[finite], ulps)


def _finite(value: float | None, fallback: float) -> float:
    return fallback if value is None or not np.isfinite(value) else float(value)


@dataclass
class OutputComparison:
    """How one output of one runtime compares with the reference."""

    output: str
    max_abs_diff: float
    max_rel_diff: float
    mismatched: int
    total: int
    passed: bool


@dataclass
class RuntimeReport:
    """Parity of one runtime against the reference."""

    runtime: str
    passed: bool
    outputs: list[OutputComparison] = field(default_factory=list)
    decision_flips: int = 0
    decision_flips_near_threshold: int = 0
    label_mismatches: int = 0
    seconds: float = 0.0
    error: str | None = None
    #: change of AUROC / FPR95 on the real ID vs OOD inputs (when OOD inputs were given)
    drift: dict[str, Any] | None = None
    #: the noise-floor judgement against float64 (FloorReport.to_dict()), when a float64 reference was given
    floor: dict[str, Any] | None = None


@dataclass
class ParityReport:
    """All runtimes against one reference; ``passed`` only if every runtime passed."""

    graph: str
    reference: str
    n_inputs: int
    atol: float
    rtol: float
    margin: float
    threshold: float
    n_ood: int = 0
    metric_tol: float = 0.005
    runtimes: list[RuntimeReport] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    #: whether a requested runtime that cannot run may be skipped; otherwise a skip fails the check
    allow_skip: bool = False

    @property
    def passed(self) -> bool:
        return (bool(self.runtimes) and all(r.passed for r in self.runtimes)
                and (self.allow_skip or not self.skipped))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def write_json(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """The report as JSON (for CI systems)."""
        return write_atomic(path, json.dumps(self.to_dict(), indent=1).encode(), overwrite=overwrite)

    def write_junit(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """The report as JUnit XML: one test case per runtime and output."""
        cases = [(r, o) for r in self.runtimes for o in (r.outputs or [None])]

        def failed(r: RuntimeReport, o: OutputComparison | None) -> bool:
            if r.floor is not None:  # judged against float64: the output's own verdict there
                verdicts = {f["output"]: f["passed"] or not r.floor["outputs_judged"] for f in r.floor["outputs"]}
                return not verdicts.get(o.output, True) if o is not None else not r.passed
            return not (o.passed if o else r.passed)

        unrun = 0 if self.allow_skip else len(self.skipped)
        suite = ET.Element("testsuite", name="oodgate.parity", tests=str(len(cases) + len(self.skipped)),
                           failures=str(sum(1 for r, o in cases if failed(r, o))),
                           errors=str(unrun), skipped=str(len(self.skipped) - unrun))
        for r, o in cases:
            case = ET.SubElement(suite, "testcase", classname=f"parity.{r.runtime}",
                                 name=o.output if o else "run", time=f"{r.seconds:.3f}")
            if r.error:
                ET.SubElement(case, "error", message=r.error)
            elif o is not None and r.floor is not None and failed(r, o):
                floor = next(f for f in r.floor["outputs"] if f["output"] == o.output)
                ET.SubElement(case, "failure", message=(
                    f"max |diff| to float64 {floor['graph_error']:.3g} > bound {floor['bound']:.3g} "
                    f"({r.floor['factor']:g} x PyTorch float32's own {floor['torch_error']:.3g} + atol)"))
            elif o is not None and r.floor is None and not o.passed:
                ET.SubElement(case, "failure", message=(
                    f"{o.mismatched}/{o.total} elements beyond atol={self.atol} and rtol={self.rtol}; "
                    f"max abs diff {o.max_abs_diff:.3g}"))
        for name, why in self.skipped.items():
            case = ET.SubElement(suite, "testcase", classname=f"parity.{name}", name="run")
            if self.allow_skip:
                ET.SubElement(case, "skipped", message=why)
            else:
                ET.SubElement(case, "error", message=f"requested runtime cannot run: {why}")
        data = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
        return write_atomic(path, data, overwrite=overwrite)

    def table(self) -> str:
        """A plain-text summary, one line per runtime and output."""
        lines = [f"parity of {self.graph} vs {self.reference} on {self.n_inputs} inputs "
                 f"(atol {self.atol:g}, rtol {self.rtol:g}, decision margin {self.margin:g}, tau {self.threshold:.6g})"]
        for r in self.runtimes:
            if r.error:
                lines.append(f"  {r.runtime:<14} ERROR {r.error}")
                continue
            for o in r.outputs:
                lines.append(f"  {r.runtime:<14} {o.output:<7} max|diff| {o.max_abs_diff:<10.3g} max rel "
                             f"{o.max_rel_diff:<10.3g} beyond tol {o.mismatched}/{o.total}  "
                             + ("(reported; judged vs float64 below)" if r.floor is not None else
                                ('ok' if o.passed else 'FAIL')))
            if r.drift is not None:
                lines.append(f"  {r.runtime:<14} metric drift on {self.n_inputs - self.n_ood} ID vs {self.n_ood} "
                             "OOD inputs: " + ", ".join(f"Δ{k} {100 * v:+.3f} pt" for k, v in r.drift["delta"].items()))
                df = r.drift.get("floor")
                if df is not None:
                    lines.append(f"  {r.runtime:<14} metric drift vs float64: {100 * df['worst']:.3f} pt, PyTorch "
                                 f"float32's own {100 * df['noise']:.3f} pt (noise floor), bound {100 * df['bound']:.3f}"
                                 f" pt ({df['factor']:g}x + {100 * self.metric_tol:g} pt + one sample "
                                 f"{100 * df['step']:.2f} pt)  "
                                 + ("ok" if df["passed"] else "FAIL"))
            if r.floor is not None:
                for o in r.floor["outputs"]:
                    lines.append(f"  {r.runtime:<14} {o['output']:<7} vs float64: {o['graph_error']:.3g}, PyTorch "
                                 f"float32's own {o['torch_error']:.3g} (noise floor), bound {o['bound']:.3g} "
                                 f"({r.floor['factor']:g}x + atol)  " + ("ok" if o["passed"] else (
                                     "FAIL" if r.floor["outputs_judged"] else "reported (discontinuous score)")))
                lines.append(f"  {r.runtime:<14} vs float64: labels differ {r.floor['label_mismatches']} (+"
                             f"{r.floor['labels_near_tie']} within noise of a tie), is_ood differ "
                             f"{r.floor['decision_flips']} (+{r.floor['decisions_near_threshold']} within noise of tau)")
            lines.append(f"  {r.runtime:<14} is_ood flips {r.decision_flips} (near tau: "
                         f"{r.decision_flips_near_threshold}), label mismatches {r.label_mismatches}  "
                         f"{'PASS' if r.passed else 'FAIL'}")
        for name, why in self.skipped.items():
            verdict = "skipped (allowed)" if self.allow_skip else "FAIL, cannot run (pass --allow-skip to allow)"
            lines.append(f"  {name:<14} {verdict}: {why}")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def check_tolerances(**values: Any) -> None:
    """Tolerances are finite numbers >= 0 (a NaN tolerance would pass everything); batch_size a positive integer."""
    for name, value in values.items():
        if value is None:
            continue
        if name == "batch_size":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise OodgateError(f"batch_size must be a positive integer, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise OodgateError(f"{name} must be a finite number >= 0, got {value!r} (--{name.replace('_', '-')})")


def compare_outputs(runtime: str, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], *, threshold: float,
                    atol: float, rtol: float, margin: float, seconds: float = 0.0) -> RuntimeReport:
    """Compare one runtime's outputs with the reference outputs."""
    report = RuntimeReport(runtime, True, seconds=seconds)
    for name in ("logits", "score"):
        a, b = got[name].astype(np.float64), ref[name].astype(np.float64)
        if a.shape != b.shape:
            report.outputs.append(OutputComparison(name, float("inf"), float("inf"), b.size, b.size, False))
            report.passed = False
            continue
        diff = np.abs(a - b)
        rel = diff / np.maximum(np.abs(b), 1e-30)
        # NaN/inf on either side is a mismatch (NaN > atol is False: without this, NaN vs NaN would pass)
        nonfinite = ~np.isfinite(a) | ~np.isfinite(b)
        bad = ((diff > atol) & (diff > rtol * np.abs(b))) | nonfinite
        worst = float("inf") if nonfinite.any() else float(diff.max(initial=0.0))
        worst_rel = float("inf") if nonfinite.any() else float(rel.max(initial=0.0))
        cmp = OutputComparison(name, worst, worst_rel, int(bad.sum()), int(b.size), not bool(bad.any()))
        report.outputs.append(cmp)
        report.passed &= cmp.passed
    flips = got["is_ood"].astype(bool) != ref["is_ood"].astype(bool)
    near = np.abs(ref["score"].astype(np.float64) - threshold) <= margin
    report.decision_flips = int((flips & ~near).sum())
    report.decision_flips_near_threshold = int((flips & near).sum())
    logits = ref["logits"].astype(np.float64)
    if logits.shape[1] >= 2:
        top2 = np.sort(logits, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > atol
    else:
        clear = np.ones(len(logits), bool)
    report.label_mismatches = int(((got["label"] != ref["label"]) & clear).sum())
    report.passed &= report.decision_flips == 0 and report.label_mismatches == 0
    return report


def save_golden(path: str | Path, inputs: np.ndarray, outputs: dict[str, np.ndarray], *, graph_hash: str,
                overwrite: bool = False) -> Path:
    """Store inputs and reference outputs for later comparisons without PyTorch."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, format=np.array(GOLDEN_FORMAT), calibration_hash=np.array(graph_hash),
                        inputs=inputs, **{f"out_{k}": v for k, v in outputs.items()})
    return write_atomic(path, buf.getvalue(), overwrite=overwrite)


def load_golden(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """(inputs, reference outputs, calibration hash) from a golden file."""
    path = Path(path)
    if not path.is_file():
        raise OodgateError(f"no such golden file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != GOLDEN_FORMAT:
                raise OodgateError(f"{path} is not an oodgate golden file")
            outs = {k[4:]: z[k] for k in z.files if k.startswith("out_")}
            return z["inputs"], outs, str(z["calibration_hash"])
    except (OSError, KeyError, ValueError) as exc:
        raise OodgateError(f"{path} is not a readable oodgate golden file ({exc})") from None


def runtime_label(provider: str) -> str:
    """How a provider spec is named in reports: 'trt-native…' as is, ONNX Runtime EPs as 'ort-…'."""
    return provider if provider.startswith("trt-native") else f"ort-{provider}"


def run_runtime(graph: str | Path, provider: str, inputs: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Outputs of the graph under one runtime (a provider spec such as 'cpu' or 'trt-native:fp16'), batched."""
    from ..runtime.session import Session

    with Session(graph, provider) as sess:
        outs = [sess.run_array(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return {k: np.concatenate([o[k] for o in outs]) for k in OUTPUT_NAMES}


def parity(graph: str | Path, inputs: np.ndarray | None = None, *, golden: str | Path | None = None,
           reference: dict[str, np.ndarray] | None = None, reference_name: str = "reference",
           reference_hash: str | None = None, providers: list[str] | None = None, atol: float = 1e-4,
           rtol: float = 1e-4, margin: float | None = None, batch_size: int = 32, ood_inputs: np.ndarray | None = None,
           metric_tol: float = 0.005, allow_skip: bool = False, reference64: dict[str, np.ndarray] | None = None,
           floor_factor: float = FLOOR_FACTOR) -> ParityReport:
    """Compare each runtime's outputs of ``graph`` with a golden file or with given ``reference`` outputs. No torch.

    ``reference``: outputs on ``inputs`` followed by ``ood_inputs`` (``oodgate.exporter.reference`` computes them
    with PyTorch); ``reference_hash``: the calibration hash they were made from, checked against the graph's. With
    ``ood_inputs`` (real OOD images, preprocessed), each runtime's change of AUROC / FPR95 against the reference is
    reported too; for reduced-precision runtimes ('…fp16') that metric drift (at most ``metric_tol``, a fraction)
    is the pass criterion instead of element-wise tolerances. A requested runtime that cannot run here fails the
    check unless ``allow_skip``.
    With ``reference64`` (the same reference computed in
    float64, on the same inputs), full-precision runtimes are judged by the noise-floor criterion instead of
    atol/rtol (the module docstring); the fixed-tolerance comparison is still reported.
    """
    from ..runtime.metadata import read_graph_info

    check_tolerances(atol=atol, rtol=rtol, margin=margin, metric_tol=metric_tol, batch_size=batch_size)
    from ..runtime.providers import parse_provider_spec, resolve_providers

    info = read_graph_info(graph)
    n_ood = 0
    if golden is not None:
        inputs, ref, ghash = load_golden(golden)
        if ghash != info.calibration_hash:
            raise OodgateError(f"golden file {golden} was made for another calibration ({ghash[:12]}…), the graph "
                               f"has {info.calibration_hash[:12]}…: re-create it with --save-golden")
        reference_name = f"golden {Path(golden).name}"
    else:
        if reference is None:
            raise OodgateError("parity needs the calibration (PyTorch reference) or a golden file (--golden)")
        if reference_hash is not None and reference_hash != info.calibration_hash:
            raise OodgateError(f"{graph} was exported from another calibration than the one given: "
                               "pass the calibration file it was exported from")
        if inputs is None or len(inputs) == 0:
            raise OodgateError("parity needs real inputs: pass --data (a data spec) with at least one image")
        if ood_inputs is not None and len(ood_inputs):
            n_ood = len(ood_inputs)
            inputs = np.concatenate([inputs, ood_inputs])
        if any(len(v) != len(inputs) for v in reference.values()):
            raise OodgateError(f"the reference outputs cover {len(next(iter(reference.values())))} inputs, not "
                               f"{len(inputs)}: compute them on the inputs followed by the OOD inputs")
        ref = reference
    if margin is None:
        margin = max(atol, rtol * abs(info.threshold)) * 10
    report = ParityReport(str(graph), reference_name, int(len(inputs)), atol, rtol, margin, info.threshold, n_ood,
                          metric_tol, allow_skip=allow_skip)
    for provider in providers or ["cpu"]:
        label = runtime_label(provider)
        try:
            name, options = parse_provider_spec(provider)
            resolve_providers(name)
        except ProviderError as exc:
            report.skipped[label] = str(exc)
            continue
        t0 = time.perf_counter()
        try:
            got = run_runtime(graph, provider, inputs, batch_size)
        except OodgateError as exc:
            report.runtimes.append(RuntimeReport(label, False, error=str(exc)))
            continue
        rep = compare_outputs(label, ref, got, threshold=info.threshold, atol=atol, rtol=rtol, margin=margin,
                              seconds=time.perf_counter() - t0)
        reduced = str(options.get("precision", "")).lower() == "fp16" or "fp16" in provider.lower()
        if reference64 is not None and not reduced:
            floor = floor_report(got, ref, reference64, threshold=info.threshold, factor=floor_factor,
                                 judge_outputs=info.method not in DISCONTINUOUS_METHODS)
            rep.floor = floor.to_dict()
            rep.passed = floor.passed
        if n_ood:
            n_id = len(inputs) - n_ood
            drift = metric_drift(ref["score"][:n_id], ref["score"][n_id:], got["score"][:n_id],
                                 got["score"][n_id:], threshold=info.threshold)
            rep.drift = drift.to_dict()
            if reduced:
                rep.passed = drift.worst() <= metric_tol and drift.nonfinite_scores == 0
            elif reference64 is not None and info.method in DISCONTINUOUS_METHODS:
                rep.drift["floor"] = drift_floor(ref, reference64, got, n_id, metric_tol=metric_tol,
                                                 factor=floor_factor, threshold=info.threshold)
                rep.passed &= rep.drift["floor"]["passed"]
        report.runtimes.append(rep)
    return report
