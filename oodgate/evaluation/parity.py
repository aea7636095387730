"""Parity for CI: the same real inputs through each runtime, compared per output with reference outputs (a golden
file, or the PyTorch reference computed by ``oodgate.exporter.reference``). No torch here.

Convention (Polygraphy's): an element fails only where BOTH |a - b| > atol and |a - b| > rtol * |ref|.
Decisions (is_ood) must agree for every sample whose reference score is further than ``margin`` from tau;
labels must agree wherever the reference's top-2 logit gap is larger than ``atol``.
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

    @property
    def passed(self) -> bool:
        return bool(self.runtimes) and all(r.passed for r in self.runtimes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def write_json(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """The report as JSON (for CI systems)."""
        return write_atomic(path, json.dumps(self.to_dict(), indent=1).encode(), overwrite=overwrite)

    def write_junit(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """The report as JUnit XML: one test case per runtime and output."""
        cases = [(r, o) for r in self.runtimes for o in (r.outputs or [None])]
        suite = ET.Element("testsuite", name="oodgate.parity", tests=str(len(cases) + len(self.skipped)),
                           failures=str(sum(1 for r, o in cases if not (o.passed if o else r.passed))),
                           skipped=str(len(self.skipped)))
        for r, o in cases:
            case = ET.SubElement(suite, "testcase", classname=f"parity.{r.runtime}",
                                 name=o.output if o else "run", time=f"{r.seconds:.3f}")
            if r.error:
                ET.SubElement(case, "error", message=r.error)
            elif o is not None and not o.passed:
                ET.SubElement(case, "failure", message=(
                    f"{o.mismatched}/{o.total} elements beyond atol={self.atol} and rtol={self.rtol}; "
                    f"max abs diff {o.max_abs_diff:.3g}"))
        for name, why in self.skipped.items():
            case = ET.SubElement(suite, "testcase", classname=f"parity.{name}", name="run")
            ET.SubElement(case, "skipped", message=why)
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
                             f"{'ok' if o.passed else 'FAIL'}")
            if r.drift is not None:
                lines.append(f"  {r.runtime:<14} metric drift on {self.n_inputs - self.n_ood} ID vs {self.n_ood} "
                             "OOD inputs: " + ", ".join(f"Δ{k} {100 * v:+.3f} pt" for k, v in r.drift["delta"].items()))
            lines.append(f"  {r.runtime:<14} is_ood flips {r.decision_flips} (near tau: "
                         f"{r.decision_flips_near_threshold}), label mismatches {r.label_mismatches}  "
                         f"{'PASS' if r.passed else 'FAIL'}")
        for name, why in self.skipped.items():
            lines.append(f"  {name:<14} skipped: {why}")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


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
        bad = (diff > atol) & (diff > rtol * np.abs(b))
        cmp = OutputComparison(name, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), int(bad.sum()),
                               int(b.size), not bool(bad.any()))
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
           metric_tol: float = 0.005) -> ParityReport:
    """Compare each runtime's outputs of ``graph`` with a golden file or with given ``reference`` outputs. No torch.

    ``reference``: outputs on ``inputs`` followed by ``ood_inputs`` (``oodgate.exporter.reference`` computes them
    with PyTorch); ``reference_hash``: the calibration hash they were made from, checked against the graph's. With
    ``ood_inputs`` (real OOD images, preprocessed), each runtime's change of AUROC / FPR95 against the reference is
    reported too; for reduced-precision runtimes ('…fp16') that metric drift (at most ``metric_tol``, a fraction)
    is the pass criterion instead of element-wise tolerances.
    """
    from ..runtime.metadata import read_graph_info
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
                          metric_tol)
    for provider in providers or ["cpu"]:
        label = runtime_label(provider)
        try:
            name, options = parse_provider_spec(provider)
            resolve_providers(name)
        except ProviderError as exc:
            report.skipped[label] = str(exc).split(":")[0]
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
        if n_ood:
            n_id = len(inputs) - n_ood
            drift = metric_drift(ref["score"][:n_id], ref["score"][n_id:], got["score"][:n_id],
                                 got["score"][n_id:], threshold=info.threshold)
            rep.drift = drift.to_dict()
            if reduced:
                rep.passed = drift.worst() <= metric_tol and drift.nonfinite_scores == 0
        report.runtimes.append(rep)
    return report
