"""The one ONNX export call of oodgate: torch.onnx (dynamo) with a dynamic batch axis, the exporter's chatter
silenced. Used by export(), bench/ and the tests."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ExportError

#: loggers of the exporter stack, set to ERROR while exporting
_CHATTY = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")


def export_onnx(module: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], *, opset: int = 18,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                dynamic_batch: bool = True, optimize: bool = True) -> Any:
    """torch.onnx.export(dynamo=True) of ``module`` on ``example`` (a tensor or a tuple of them): the ONNXProgram.

    With ``dynamic_batch`` axis 0 of every input is dynamic (export with a batch of at least 2, as timm's ONNX
    helper does, so that it is not specialised). A failure is an ExportError naming the cause in one line.
    """
    args = example if isinstance(example, tuple) else (example,)
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic = tuple({0: batch} for _ in args)
    loggers = [logging.getLogger(n) for n in _CHATTY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                module, args, dynamo=True, opset_version=opset,
                input_names=None if input_names is None else list(input_names),
                output_names=None if output_names is None else list(output_names),
                dynamic_shapes=dynamic, verbose=False, optimize=optimize,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; name the cause in one line
        raise ExportError(f"torch.onnx.export failed for this model: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


__all__ = ["export_onnx"]
