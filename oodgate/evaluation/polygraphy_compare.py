"""oodgate's parity rules on Polygraphy's comparison machinery (issue 17), for checking a graph or an engine with
Polygraphy's runners (OnnxrtRunner, TrtRunner) and ``Comparator``. Needs ``polygraphy`` (in ``oodgate[tensorrt]``
and ``oodgate[trt-check]``), imported inside the functions; no torch.

- ``ood_compare_func``: a compare function for ``Comparator.compare_accuracy``: Polygraphy's SimpleCompareFunc
  with per-output atol/rtol on the float outputs (logits, score), and oodgate's OOD rules from
  ``oodgate.evaluation.parity.compare_outputs`` on the others: is_ood must agree away from tau, label wherever the
  reference's top-2 logit gap is clear.
- ``save_run_results`` / ``load_run_results``: golden outputs as Polygraphy's RunResults JSON (what ``polygraphy
  run --save-outputs`` writes and ``--load-outputs`` reads), with the feeds as its input-data JSON.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OodgateError
from ..files import write_atomic
from .parity import compare_outputs

FLOAT_OUTPUTS = ("logits", "score")
Tolerance = float | Mapping[str, float]


def _polygraphy() -> Any:
    try:
        import polygraphy.comparator as comparator
    except ImportError:
        raise OodgateError("Polygraphy is not installed: pip install 'oodgate[trt-check]' (or polygraphy)") from None
    return comparator


def _tol(value: Tolerance, name: str, default: float = 1e-4) -> float:
    if isinstance(value, Mapping):
        return float(value.get(name, value.get("", default)))
    return float(value)


class _Verdict:
    """A pass/fail per output as Polygraphy's comparator reads it (truthiness), with the reason kept."""

    def __init__(self, passed: bool, detail: str) -> None:
        self.passed, self.detail = bool(passed), detail

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"{'ok' if self.passed else 'FAIL'}: {self.detail}"


def ood_compare_func(threshold: float, *, atol: Tolerance = 1e-4, rtol: Tolerance = 1e-4,
                     margin: float | None = None) -> Callable[[Any, Any], OrderedDict]:
    """A Polygraphy compare function (reference iteration result, runtime's) -> {output: truthy verdict}.

    ``atol``/``rtol``: one value or per output name ({'logits': 1e-3, 'score': 1e-4}; '' is the default), as
    Polygraphy takes them. ``margin``: |score - tau| within which an is_ood flip is allowed (default 10 x the score
    tolerance at tau, as ``oodgate parity``)."""
    comparator = _polygraphy()
    float_atol = {n: _tol(atol, n) for n in FLOAT_OUTPUTS}
    float_rtol = {n: _tol(rtol, n) for n in FLOAT_OUTPUTS}
    simple = comparator.SimpleCompareFunc(atol=float_atol, rtol=float_rtol, check_shapes=True)
    if margin is None:
        margin = max(float_atol["score"], float_rtol["score"] * abs(threshold)) * 10

    def compare(reference: Any, runtime: Any) -> OrderedDict:
        from polygraphy.logger import G_LOGGER

        missing = [n for n in ("logits", "score", "is_ood", "label") if n not in reference or n not in runtime]
        if missing:
            raise OodgateError(f"outputs {missing} are missing from a run: compare oodgate graphs (4 outputs)")
        ref = {n: np.asarray(reference[n]) for n in reference}
        got = {n: np.asarray(runtime[n]) for n in runtime}
        floats_ref = type(reference)({n: ref[n] for n in FLOAT_OUTPUTS}, runner_name=reference.runner_name)
        floats_got = type(runtime)({n: got[n] for n in FLOAT_OUTPUTS}, runner_name=runtime.runner_name)
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
            elementwise = simple(floats_ref, floats_got)
        rules = compare_outputs(runtime.runner_name, ref, got, threshold=threshold, atol=float_atol["logits"],
                                rtol=float_rtol["logits"], margin=margin)
        out: OrderedDict = OrderedDict((n, elementwise[n]) for n in FLOAT_OUTPUTS)
        for n in FLOAT_OUTPUTS:  # NaN/inf on either side is a mismatch in every comparison (issue 13)
            bad = int((~np.isfinite(ref[n].astype(np.float64))).sum() + (~np.isfinite(got[n].astype(np.float64))).sum())
            if bad:
                out[n] = _Verdict(False, f"{bad} non-finite (NaN/inf) values in {n}")
        out["is_ood"] = _Verdict(rules.decision_flips == 0,
                                 f"{rules.decision_flips} flips further than {margin:g} from tau "
                                 f"({rules.decision_flips_near_threshold} near it)")
        out["label"] = _Verdict(rules.label_mismatches == 0, f"{rules.label_mismatches} label mismatches where the "
                                                             "reference's top-2 gap is clear")
        return out

    return compare


def save_run_results(path: str | Path, outputs: Mapping[str, np.ndarray], *, runner: str = "pytorch-reference",
                     inputs: np.ndarray | None = None, input_name: str = "input", overwrite: bool = False) -> Path:
    """Reference outputs as Polygraphy's RunResults JSON (one iteration, runner ``runner``); with ``inputs``, the
    feeds beside it as ``<name>.inputs.json`` (Polygraphy's ``--load-inputs`` format). Written atomically."""
    comparator = _polygraphy()
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import to_json

    path = Path(path)
    feeds_path = path.with_name(path.stem + ".inputs.json")
    for target in (path, feeds_path) if inputs is not None else (path,):
        if target.exists() and not overwrite:  # checked for both before writing either: nothing written half
            raise OodgateError(f"{target} exists: choose another path or overwrite it (--force / overwrite=True)")
    results = comparator.RunResults()
    results.append((runner, [IterationResult({k: np.asarray(v) for k, v in outputs.items()}, runner_name=runner)]))
    written = write_atomic(path, to_json(results).encode(), overwrite=overwrite)
    if inputs is not None:
        feeds = [OrderedDict([(input_name, np.ascontiguousarray(inputs, dtype=np.float32))])]
        write_atomic(feeds_path, to_json(feeds).encode(), overwrite=overwrite)
    return written


def load_run_results(path: str | Path) -> Any:
    """Polygraphy RunResults from a JSON file (``save_run_results`` or ``polygraphy run --save-outputs``)."""
    comparator = _polygraphy()
    path = Path(path)
    if not path.is_file():
        raise OodgateError(f"no such run-results file: {path}")
    try:
        return comparator.RunResults.load(str(path))
    except Exception as exc:  # noqa: BLE001 - Polygraphy raises its own exception types on bad JSON
        raise OodgateError(f"{path} is not a Polygraphy run-results JSON file ({type(exc).__name__})") from None
