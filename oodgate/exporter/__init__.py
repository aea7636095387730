"""Exporter: one ONNX graph = backbone + detector head (+ threshold), with oodgate metadata, checked."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..calibration.artifact import Calibration
from ..errors import OodgateError
from ..runtime.metadata import GRAPH_FORMAT, GRAPH_FORMAT_VERSION, METADATA_KEY
from .graph import INPUT_NAME, OUTPUT_NAMES, OodgateGraph, build_graph_module

#: protobuf's 2 GB limit: larger models keep their weights in an external data file next to the graph
EXTERNAL_DATA_BYTES = 1_800_000_000


class ExportError(OodgateError):
    """The export failed or the exported graph did not match the PyTorch reference."""


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


def graph_metadata(calibration: Calibration, input_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The JSON stored under the graph's 'oodgate' metadata key."""
    return {
        "format": GRAPH_FORMAT, "format_version": GRAPH_FORMAT_VERSION, "oodgate_version": __version__,
        "method": calibration.method, "params": calibration.params, "info": calibration.info,
        "threshold": calibration.threshold, "tpr": calibration.tpr, "preprocess": calibration.preprocess.to_dict(),
        "class_names": calibration.class_names, "input_name": INPUT_NAME, "input_shape": list(input_shape),
        "outputs": list(OUTPUT_NAMES), "calibration_hash": calibration.checksum(),
        "data_fingerprint": calibration.data_fingerprint, "model_ref": calibration.model_ref,
        "score_orientation": "higher = in-distribution; is_ood = score < threshold",
    }


def _quiet_export(module: torch.nn.Module, example: torch.Tensor, opset: int) -> Any:
    """torch.onnx.export (dynamo, dynamic batch) with the exporter's chatter silenced."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                verbose=False, optimize=True,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; name the cause in one line
        raise ExportError(f"torch.onnx.export failed for this model: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export(calibration: Calibration, path: str | Path, *, model: Any = None, opset: int = 18,
           overwrite: bool = False, check: bool = True, check_inputs: np.ndarray | None = None,
           atol: float = 1e-4, rtol: float = 1e-4) -> ExportResult:
    """Export ``calibration`` (backbone + detector head + threshold) to one ONNX graph at ``path``.

    The graph is checked with onnx.checker (full_check) and, with ``check``, run by ONNX Runtime against the
    PyTorch reference on inputs other than the export example; only then is it moved into place.
    """
    import onnx

    from ..models import split_classifier

    path = Path(path)
    if path.exists() and not overwrite:
        raise OodgateError(f"{path} exists: choose another path or overwrite it (--force / overwrite=True)")
    if not path.parent.is_dir():
        raise OodgateError(f"cannot write {path}: folder {path.parent} does not exist")
    if opset < 18:
        raise OodgateError(f"opset {opset} is too old: oodgate exports with opset >= 18")
    t0 = time.perf_counter()
    split = split_classifier(model, head=calibration.model_head) if model is not None else calibration.model()
    module = build_graph_module(calibration, split)
    input_shape = calibration.preprocess.input_shape
    gen = torch.Generator().manual_seed(1234)
    example = torch.randn((2, *input_shape), generator=gen)
    program = _quiet_export(module, example, opset)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        n_bytes = sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
            b.numel() * b.element_size() for b in module.buffers())
        external = n_bytes > EXTERNAL_DATA_BYTES
        program.save(str(tmp), external_data=external)
        proto = onnx.load(str(tmp), load_external_data=False)
        meta = graph_metadata(calibration, input_shape)
        del proto.metadata_props[:]
        proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=True))
        proto.metadata_props.add(key="oodgate.method", value=calibration.method)
        proto.metadata_props.add(key="oodgate.threshold", value=repr(calibration.threshold))
        proto.producer_name, proto.producer_version = "oodgate", __version__
        proto.doc_string = (f"oodgate {calibration.method} OOD gate: outputs logits, score (higher = ID), "
                            f"is_ood (score < {calibration.threshold:.6g}), label")
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        ops: dict[str, int] = {}
        for node in proto.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        result = ExportResult(path, calibration.method, calibration.threshold, input_shape, 0.0, ops=ops)
        if check:
            if check_inputs is None:
                check_inputs = torch.randn((3, *input_shape), generator=gen).numpy()
            result.max_score_diff = check_against_reference(tmp, module, check_inputs, atol=atol, rtol=rtol)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    result.seconds = time.perf_counter() - t0
    return result


@torch.no_grad()
def check_against_reference(graph_path: str | Path, module: OodgateGraph, inputs: np.ndarray, *, atol: float,
                            rtol: float) -> float:
    """Run the graph with ONNX Runtime (CPU) and the module with PyTorch; raise ExportError on a mismatch.

    Returns the largest absolute score difference.
    """
    from ..runtime.session import ort_session

    sess = ort_session(str(graph_path), ["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)})
    ref = [t.numpy() for t in module(torch.from_numpy(np.asarray(inputs, dtype=np.float32)))]
    diff = np.abs(got[1].astype(np.float64) - ref[1])
    bad = diff > atol + rtol * np.abs(ref[1])
    if np.any(bad):
        raise ExportError(f"ONNX Runtime disagrees with PyTorch on the score: max |diff| {diff.max():.3g} "
                          f"(atol {atol}, rtol {rtol}) on {int(bad.sum())} of {len(diff)} samples")
    margin = np.abs(ref[1] - float(module.threshold)) > atol + rtol * np.abs(ref[1])
    if np.any((got[2] != ref[2]) & margin):
        raise ExportError("ONNX Runtime and PyTorch disagree on is_ood away from the threshold")
    return float(diff.max()) if diff.size else 0.0


__all__ = ["ExportError", "ExportResult", "OodgateGraph", "build_graph_module", "export", "graph_metadata"]
