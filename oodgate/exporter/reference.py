"""The PyTorch reference of a calibration: the exported module itself, run eagerly (float32, and float64 for the
noise-floor criterion), on preprocessed inputs; and
parity of a graph against it (the comparison itself is torch-free: oodgate.evaluation.parity)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..calibration.artifact import Calibration
from ..errors import OodgateError
from ..evaluation.parity import ParityReport
from ..evaluation.parity import parity as compare_with_reference
from ..models.split import split_classifier
from ..runtime.metadata import OUTPUT_NAMES
from .graph import build_graph_module


def reference_outputs(calibration: Calibration, inputs: np.ndarray, *, model: Any = None, device: str = "cpu",
                      batch_size: int = 32, float64: bool = False) -> dict[str, np.ndarray]:
    """The PyTorch reference (the exported module itself, eager) on preprocessed inputs.

    With ``float64``, the same module computed in float64 (weights, buffers and inputs converted; AdaSCALE's
    traced gradient graph runs retyped): the reference of the noise-floor criterion.
    """
    if model is not None:
        split = split_classifier(model, head=calibration.model_head)
        calibration.check_model(split)
    else:
        split = calibration.model()
    return module_outputs(build_graph_module(calibration, split), inputs, device=device, batch_size=batch_size,
                          float64=float64)


def module_outputs(module: torch.nn.Module, inputs: np.ndarray, *, device: str = "cpu", batch_size: int = 32,
                   float64: bool = False) -> dict[str, np.ndarray]:
    """The four outputs of an exported module (OodgateGraph) run eagerly, in float32 or float64; for a head whose
    label is not the argmax of its logits (MOS) also ``label_values``, what the label is the argmax of."""
    dtype = torch.float64 if float64 else torch.float32
    module = (copy.deepcopy(module).double() if float64 else module).to(device).eval()
    outs = []
    for i in range(0, len(inputs), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch_size])).to(device=device, dtype=dtype)
        with torch.no_grad():
            o = module(x)
        outs.append([t.detach().cpu().numpy() for t in o])
    result = {name: np.concatenate([o[k] for o in outs]) for k, name in enumerate(OUTPUT_NAMES)}
    head = getattr(getattr(module, "scorer", None), "head", None)
    if callable(getattr(head, "label_values", None)):  # a label that is not the argmax of the logits (MOS)
        with torch.no_grad():
            z = torch.from_numpy(result["logits"]).to(device=device, dtype=dtype)
            result["label_values"] = head.label_values(z).cpu().numpy()
    return result


def default_reference_device() -> str:
    """'cuda' when PyTorch sees a GPU (TF32 off, so the reference stays FP32), else 'cpu'."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return "cuda"
    return "cpu"


def parity(graph: str | Path, inputs: np.ndarray | None, *, calibration: Calibration | None = None,
           golden: str | Path | None = None, providers: list[str] | None = None, atol: float = 1e-4,
           rtol: float = 1e-4, margin: float | None = None, batch_size: int = 32, model: Any = None,
           ood_inputs: np.ndarray | None = None, metric_tol: float = 0.005,
           reference_device: str | None = None, allow_skip: bool = False, float64: bool = True) -> ParityReport:
    """Compare each runtime's outputs of ``graph`` with the PyTorch reference (``calibration``) or a golden file.

    See ``oodgate.evaluation.parity.parity`` for the criteria; this computes the reference outputs first: PyTorch
    float32 and, with ``float64`` (default), float64, so that runtimes are judged by the noise-floor criterion.
    """
    common = dict(providers=providers, atol=atol, rtol=rtol, margin=margin, batch_size=batch_size,
                  metric_tol=metric_tol, allow_skip=allow_skip)
    if golden is not None:
        return compare_with_reference(graph, golden=golden, **common)
    if calibration is None:
        raise OodgateError("parity needs the calibration (PyTorch reference) or a golden file (--golden)")
    from ..runtime.metadata import read_graph_info

    if calibration.checksum() != read_graph_info(graph).calibration_hash:
        raise OodgateError(f"{graph} was exported from another calibration than the one given: "
                           "pass the calibration file it was exported from")
    if inputs is None or len(inputs) == 0:
        raise OodgateError("parity needs real inputs: pass --data (a data spec) with at least one image")
    everything = inputs if ood_inputs is None or not len(ood_inputs) else np.concatenate([inputs, ood_inputs])
    device = reference_device or default_reference_device()
    ref = reference_outputs(calibration, everything, model=model, batch_size=batch_size, device=device)
    ref64 = reference_outputs(calibration, everything, model=model, batch_size=batch_size, device=device,
                              float64=True) if float64 else None
    return compare_with_reference(graph, inputs, reference=ref, reference_name=f"pytorch-{device}",
                                  reference_hash=calibration.checksum(), ood_inputs=ood_inputs, reference64=ref64,
                                  **common)


__all__ = ["default_reference_device", "module_outputs", "parity", "reference_outputs"]
