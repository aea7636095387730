"""export(): one ONNX graph = backbone + detector head (+ threshold), with oodgate metadata, checked."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..calibration.artifact import Calibration
from ..errors import ExportError, OodgateError
from ..evaluation.parity import DISCONTINUOUS_METHODS, FLOOR_FACTOR, floor_report
from ..files import atomic_output, companion_temp
from ..models.split import split_classifier
from ..progress import show_progress
from ..runtime.metadata import GRAPH_FORMAT, GRAPH_FORMAT_VERSION, INPUT_NAME, OUTPUT_NAMES, seal_graph
from .graph import OodgateGraph, build_graph_module
from .onnx_export import PROTOBUF_LIMIT_BYTES, export_onnx, weight_bytes

#: the ONNX opsets oodgate exports (and tests): 18 (the first with the reductions' axes as inputs) up to 25
MIN_OPSET, MAX_OPSET = 18, 25
#: how far the share of re-check ID data accepted at tau may be from the calibrated TPR (at least; see recheck)
RECHECK_TOLERANCE = 0.02

#: protobuf's 2 GB limit: larger models keep their weights in an external data file next to the graph
EXTERNAL_DATA_BYTES = PROTOBUF_LIMIT_BYTES


@dataclass
class ExportResult:
    """Where the graph went, what it contains and how well ONNX Runtime matched PyTorch at export time."""

    path: Path
    method: str
    threshold: float
    input_shape: tuple[int, int, int]
    seconds: float
    max_score_diff: float | None = None
    ops: dict[str, int] = field(default_factory=dict)
    #: the external data file (weights) beside the graph, for models above EXTERNAL_DATA_BYTES
    external_data: Path | None = None
    #: how changed weights were re-checked on ID data (export(..., recheck_data=...)), else None
    recheck: dict[str, Any] | None = None
    #: which torch.onnx exporter wrote the graph: "torchscript" (the fast route) or "dynamo" (oodgate.export_onnx)
    engine: str = ""


def graph_metadata(calibration: Calibration, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The JSON stored under the graph's 'oodgate' metadata key."""
    return {
        "format": GRAPH_FORMAT, "format_version": GRAPH_FORMAT_VERSION, "oodgate_version": __version__,
        "method": calibration.method, "params": calibration.params, "info": calibration.info,
        "threshold": calibration.threshold, "tpr": calibration.tpr, "preprocess": calibration.preprocess.to_dict(),
        "class_names": calibration.class_names, "input_name": INPUT_NAME, "input_shape": list(input_shape),
        "outputs": list(OUTPUT_NAMES), "calibration_hash": calibration.checksum(),
        "data_fingerprint": calibration.data_fingerprint, "model_ref": calibration.model_ref,
        "score_orientation": "higher = in-distribution; is_ood = NOT(threshold <= score < inf)",
        "model_sha256": calibration.model_sha256,
    }


def check_opset(opset: Any) -> int:
    """The opset as an int within the supported range (a silent fallback to 18 would hide a typo)."""
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise OodgateError(f"opset {opset!r} is outside the supported range {MIN_OPSET}..{MAX_OPSET}: pass "
                           f"--opset {MIN_OPSET} (the default) or another opset in that range")
    return int(opset)


@torch.no_grad()
def recheck_threshold(calibration: Calibration, split: Any, data: Any, *, batch_size: int = 128) -> dict[str, Any]:
    """Score ID ``data`` with changed weights and the calibrated threshold; refuse if the share accepted moved away
    from the calibrated TPR by more than RECHECK_TOLERANCE (or 3 binomial standard errors, if larger)."""
    from ..calibration.calibrate import model_classes, resolve_images

    images = model_classes(resolve_images(data, "re-check ID data"), calibration.class_names, None, False)
    module = build_graph_module(calibration, split)
    scores = []
    for x, _ in images.batches(calibration.preprocess, batch_size):
        scores.append(module(torch.from_numpy(x))[1].numpy())
    score = np.concatenate(scores)
    accepted = float(np.mean(np.isfinite(score) & (score >= np.float32(calibration.threshold))))
    tpr = calibration.tpr
    tol = max(RECHECK_TOLERANCE, 3 * float(np.sqrt(tpr * (1 - tpr) / len(score))))
    if abs(accepted - tpr) > tol:
        raise ExportError(f"with the new weights the threshold accepts {100 * accepted:.1f} % of {len(score)} ID "
                          f"images of {images.name!r}, not the calibrated {100 * tpr:g} % (tolerance "
                          f"{100 * tol:.1f} points): re-run calibrate for these weights")
    from ..calibration.artifact import model_state_hash

    return {"data": images.name, "n": int(len(score)), "accepted": accepted, "tolerance": tol,
            "model_sha256": model_state_hash(split)}


def _external_tensors(proto: Any) -> list[Any]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(proto) if uses_external_data(t)]


def _set_location(tensors: list[Any], location: str) -> None:
    for t in tensors:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location


class _Stages:
    """One line per export stage on stderr (an interactive terminal outside CI, or as asked): exports of large
    models take tens of seconds, most of it inside torch.onnx, which reports nothing."""

    def __init__(self, what: str, progress: bool | None) -> None:
        self.what, self.on, self.t0 = what, show_progress(progress), time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.on:
            import sys

            print(f"[{time.perf_counter() - self.t0:5.1f} s] export {self.what}: {stage}", file=sys.stderr, flush=True)


def export(calibration: Calibration, path: str | Path, *, model: Any = None, opset: int = 18,
           overwrite: bool = False, check: bool = True, check_inputs: np.ndarray | None = None,
           floor_factor: float = FLOOR_FACTOR, trust_model: bool = False,
           recheck_data: Any = None, progress: bool | None = None) -> ExportResult:
    """Export ``calibration`` (backbone + detector head + threshold) to one ONNX graph at ``path``.

    The graph is checked with onnx.checker (full_check) and, with ``check``, run by ONNX Runtime against the
    PyTorch reference on inputs other than the export example (the noise-floor criterion: within
    ``floor_factor`` times PyTorch float32's own distance to float64, see oodgate.evaluation.parity); only then is
    it published (with its external data file ``<path>.data`` for models above 1.8 GB), never over an existing file
    unless ``overwrite``. oodgate.export_onnx chooses torch.onnx's exporter (``ExportResult.engine``).

    A model whose weights differ from the calibrated ones is refused, unless ``recheck_data`` (ID images) shows
    that the calibrated threshold still keeps the calibrated TPR with them. A ``module:attr`` model reference read
    from a calibration file is imported only with ``trust_model`` (or pass ``model=``). ``progress``: a line per
    stage on stderr (default: on an interactive terminal outside CI).
    """
    import onnx

    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    if path.exists() and not overwrite:
        raise OodgateError(f"{path} exists: choose another path or overwrite it (--force / overwrite=True)")
    if not path.parent.is_dir():
        raise OodgateError(f"cannot write {path}: folder {path.parent} does not exist")
    opset = check_opset(opset)
    t0 = time.perf_counter()
    stage = _Stages(f"{calibration.method} -> {path.name}", progress)
    if trust_model:
        calibration.trust_model = True
    if model is not None:
        split = split_classifier(model, head=calibration.model_head)
    else:
        split = calibration.model(verify_state=recheck_data is None)
    recheck = None
    if recheck_data is not None:
        recheck = recheck_threshold(calibration, split, recheck_data)
    else:
        calibration.check_model(split)
    stage("building the graph module" + (" (tracing the input gradient)" if calibration.method.startswith("adascale")
                                         else ""))
    module = build_graph_module(calibration, split)
    input_shape = calibration.preprocess.input_shape
    gen = torch.Generator().manual_seed(1234)
    example = torch.randn((2, *input_shape), generator=gen)
    external = weight_bytes(module) > EXTERNAL_DATA_BYTES
    if external and data_path.exists() and not overwrite:
        raise OodgateError(f"{data_path} exists: choose another path or overwrite it (--force / overwrite=True)")
    stage("torch.onnx.export (TorchScript trace where exact, else dynamo: capture, decompositions, translation)")
    program = export_onnx(module, example, opset=opset, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES))
    stage(f"exported by torch.onnx's {program.engine} exporter")

    with atomic_output(path, overwrite=overwrite, companions=[data_path] if external else []) as tmp:
        data_tmp = companion_temp(tmp, data_path)
        raw_data = tmp.with_name(tmp.name + ".data")  # where torch.onnx writes external data next to tmp
        if external:  # torch.onnx writes the weights beside tmp: move them to the companion's temporary name
            try:
                program.save(str(tmp), external_data=True)
                proto = onnx.load(str(tmp), load_external_data=False)
                tensors = _external_tensors(proto)
                locations = {e.value for t in tensors for e in t.external_data if e.key == "location"}
                if len(locations) > 1:
                    raise ExportError(f"torch.onnx wrote the weights into {len(locations)} external files; oodgate "
                                      "publishes one (<graph>.data)")
                if locations:
                    os.replace(tmp.parent / locations.pop(), data_tmp)
                    _set_location(tensors, data_tmp.name)
            finally:
                raw_data.unlink(missing_ok=True)
        else:  # serialised once, in memory: no save / load round trip through the file
            proto, tensors = program.model_proto, []
        meta = graph_metadata(calibration, input_shape)
        if recheck is not None:
            meta["model_sha256"] = recheck.pop("model_sha256")
            meta["recheck"] = recheck
        proto.producer_name, proto.producer_version = "oodgate", __version__
        proto.doc_string = (f"oodgate {calibration.method} OOD gate: outputs logits, score (higher = ID), "
                            f"is_ood (NOT {calibration.threshold:.6g} <= score < inf), label")
        staged = {data_tmp.name: data_tmp} if tensors else None
        seal_graph(proto, meta, tmp.parent, staged)
        stage("onnx.checker (full_check)" + ("" if not check else ", then ONNX Runtime vs PyTorch"))
        onnx.save(proto, str(tmp))
        # in memory where protobuf allows it (the checker would parse the file again); with external data by path
        onnx.checker.check_model(str(tmp) if tensors else proto, full_check=True)
        ops: dict[str, int] = {}
        for node in proto.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        result = ExportResult(path, calibration.method, calibration.threshold, input_shape, 0.0, ops=ops,
                              external_data=data_path if tensors else None, recheck=recheck, engine=program.engine)
        if check:
            if check_inputs is None:
                check_inputs = torch.randn((3, *input_shape), generator=gen).numpy()
            result.max_score_diff = check_against_reference(tmp, module, check_inputs, factor=floor_factor,
                                                            method=calibration.method)
        if tensors:  # the published graph names its data file by the published name (sealed with that name)
            _set_location(tensors, data_path.name)
            seal_graph(proto, meta, tmp.parent, {data_path.name: data_tmp})
            onnx.save(proto, str(tmp))
    result.seconds = time.perf_counter() - t0
    stage(f"done in {result.seconds:.1f} s")
    return result


@torch.no_grad()
def check_against_reference(graph_path: str | Path, module: OodgateGraph, inputs: np.ndarray, *,
                            factor: float = FLOOR_FACTOR, method: str = "") -> float:
    """Run the graph with ONNX Runtime (CPU) and judge it by the noise-floor criterion; ExportError on a mismatch.

    The module is run by PyTorch in float32 and in float64: the graph passes when its outputs are within
    ``factor`` times PyTorch float32's own distance to float64 (plus a tiny atol), with labels and decisions
    agreeing with float64 away from ties and tau (oodgate.evaluation.parity). Returns the largest absolute score
    difference between ONNX Runtime and PyTorch float32.
    """
    from ..runtime.session import ort_session
    from .reference import module_outputs

    sess = ort_session(str(graph_path), ["CPUExecutionProvider"])
    values = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)})
    got = dict(zip(OUTPUT_NAMES, values))
    ref32 = module_outputs(module, inputs)
    nonfinite = ~np.isfinite(got["score"]) | ~np.isfinite(ref32["score"])
    if np.any(nonfinite):
        raise ExportError(f"the check gave {int(nonfinite.sum())} non-finite (NaN/inf) score(s) of {len(nonfinite)} "
                          "(ONNX Runtime or PyTorch): a graph that scores its check inputs NaN is not exported; check "
                          "the model, the preprocessing and the check inputs")
    ref64 = module_outputs(module, inputs, float64=True)
    report = floor_report(got, ref32, ref64, threshold=float(module.threshold), factor=factor,
                          judge_outputs=method not in DISCONTINUOUS_METHODS)
    if not report.passed:
        raise ExportError("ONNX Runtime's graph is further from the float64 reference than PyTorch float32 on "
                          f"{len(inputs)} check inputs: " + "; ".join(report.failures()))
    diff = np.abs(got["score"].astype(np.float64) - ref32["score"])
    return float(diff.max()) if diff.size else 0.0


__all__ = ["EXTERNAL_DATA_BYTES", "ExportResult", "check_against_reference", "export", "graph_metadata"]
