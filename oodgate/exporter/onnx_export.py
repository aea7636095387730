"""The one ONNX export call of oodgate, with a dynamic batch axis and the exporters' chatter silenced. Used by
export(), bench/ and the tests.

Two exporters of torch.onnx are used, the fast one first:

- ``"torchscript"``: torch.jit.trace + the TorchScript exporter (``dynamo=False``). Faster than dynamo (it records
  the ops once instead of capturing, re-tracing for the decompositions and optimising; bench/export_time.py
  measures both routes). It is taken only where its trace is exact: no
  ``TracerWarning`` (a Python branch on a tensor, a shape read into a Python number: the trace would be
  specialised), opset <= 20 (its newest), weights under protobuf's 2 GB limit, and no torch.fx graph inside the
  module (AdaSCALE's traced gradient branch, whose ATen calls the tracer cannot record).
- ``"dynamo"``: torch.export + torch.onnx's translation and optimiser, for everything else (and on request). A
  module holding a torch.fx graph (AdaSCALE's gradient branch) is optimised without onnxscript's pattern rewriter
  (``optimise_without_rewrites``): most of the optimiser's time on those graphs (bench/export_time.py), with the same
  outputs and ONNX Runtime time (bench/optimiser_route.py).

Either way the result is checked by the caller against the PyTorch reference (export() runs ONNX Runtime at a batch
size other than the example's, so a batch size baked into the graph is caught).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ExportError

#: loggers of the exporter stack, set to ERROR while exporting
_CHATTY = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
#: the newest opset torch.onnx's TorchScript exporter writes
TORCHSCRIPT_MAX_OPSET = 20
#: protobuf's 2 GB limit on one serialised model, with a margin: larger weights go to an external data file
#: (export()) and never through the in-memory routes here
PROTOBUF_LIMIT_BYTES = 1_800_000_000
ENGINES = ("auto", "torchscript", "dynamo")


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class TracedProgram:
    """An ONNX model exported in memory (the TorchScript route, and the static-batch dynamo route once its batch
    axis is made dynamic), with the two members of torch.onnx's ONNXProgram that oodgate uses (``model_proto``,
    ``save``)."""

    engine = "torchscript"
    #: how the batch axis was made: "traced" (TorchScript's dynamic_axes), "generalised" (a static dynamo export made
    #: dynamic afterwards: oodgate.exporter.batch_axis), "symbolic" (dynamo with a symbolic batch), "static"
    batch_axis = "traced"

    def __init__(self, model_proto: Any) -> None:
        self.model_proto = model_proto

    def save(self, path: str, external_data: bool = False) -> None:
        import onnx

        # external data beside the file as <name>.data, where torch.onnx's ONNXProgram.save puts it
        onnx.save(self.model_proto, path, save_as_external_data=external_data,
                  location=f"{os.path.basename(path)}.data" if external_data else None)


def _torchscript_blocker(module: torch.nn.Module, opset: int) -> str | None:
    """Why the TorchScript route is not taken for ``module`` (None: it is tried)."""
    if opset > TORCHSCRIPT_MAX_OPSET:
        return f"opset {opset} > {TORCHSCRIPT_MAX_OPSET}"
    if _holds_fx_graph(module):
        return "the module holds a torch.fx graph"
    if weight_bytes(module) > PROTOBUF_LIMIT_BYTES:
        return "weights above protobuf's 2 GB limit"
    return None


def _torchscript(module: torch.nn.Module, args: tuple[torch.Tensor, ...], opset: int,
                 input_names: list[str], output_names: list[str] | None, dynamic_batch: bool) -> TracedProgram | None:
    """The TorchScript route; None where its trace is not exact (a TracerWarning) or it fails."""
    import onnx

    names = input_names or [f"input_{i}" for i in range(len(args))]
    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        axes = {n: {0: "batch"} for n in names}
        axes.update({n: {0: "batch"} for n in output_names or ()})
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset, input_names=names,
                              output_names=output_names, dynamic_axes=axes or None, do_constant_folding=True)
        except Exception:  # noqa: BLE001 - any failure of the fast route: the dynamo route decides
            return None
    if any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
        return None
    model = onnx.load_model_from_string(buffer.getvalue())
    try:  # the TorchScript exporter writes no value_info; with shapes ONNX Runtime can run elementwise ops in place
        model = onnx.shape_inference.infer_shapes(model)  # (e.g. LINe's ThresholdedRelu)
    except Exception:  # noqa: BLE001 - shapes are an optimisation: the graph is valid without them
        pass
    return TracedProgram(model)


def _holds_fx_graph(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a torch.fx graph (AdaSCALE's traced gradient branch)."""
    return any(isinstance(m, torch.fx.GraphModule) for m in module.modules())


def _optimiser_passes() -> tuple[Any, Any] | None:
    """(fold_constants_ir, onnx_ir.passes.common) for ``optimise_without_rewrites``; None where this onnxscript /
    onnx_ir lacks one of them (then torch.onnx's own optimiser is used)."""
    try:
        import onnx_ir.passes.common as common
        from onnxscript.optimizer import fold_constants_ir
    except ImportError:
        return None
    names = ("InlinePass", "RemoveUnusedNodesPass", "RemoveUnusedFunctionsPass", "RemoveUnusedOpsetsPass",
             "LiftConstantsToInitializersPass", "LiftSubgraphInitializersToMainGraphPass",
             "DeduplicateInitializersPass", "CommonSubexpressionEliminationPass", "OutputFixPass", "NameFixPass")
    return (fold_constants_ir, common) if all(hasattr(common, n) for n in names) else None


def optimise_without_rewrites(model: Any, passes: tuple[Any, Any]) -> None:
    """onnxscript's optimiser (``optimize_ir``: inline, constant folding and dead-code removal twice, constants lifted
    to initialisers, duplicates and common subexpressions removed, names fixed) on an onnx_ir model in place, without
    its pattern rewriter (which fuses Min + Max into Clip, Reshape + Reshape, Conv + BatchNorm, ...)."""
    fold_constants_ir, common = passes
    common.InlinePass()(model)
    for _ in range(2):  # optimize_ir's num_iterations, stopping early when nothing changed
        modified = fold_constants_ir(model, onnx_shape_inference=True).modified
        for cleanup in (common.RemoveUnusedNodesPass, common.RemoveUnusedFunctionsPass, common.RemoveUnusedOpsetsPass):
            modified = cleanup()(model).modified or modified
        if not modified:
            break
    for final in (common.RemoveUnusedNodesPass(), common.LiftConstantsToInitializersPass(lift_all_constants=True,
                                                                                          size_limit=0),
                  common.LiftSubgraphInitializersToMainGraphPass(), common.DeduplicateInitializersPass(),
                  common.CommonSubexpressionEliminationPass(), common.OutputFixPass(), common.NameFixPass()):
        final(model)


def _dynamo(module: torch.nn.Module, args: tuple[torch.Tensor, ...], opset: int, input_names: Sequence[str] | None,
            output_names: Sequence[str] | None, optimize: bool, dynamic_batch: bool,
            rewrite: bool | None = None) -> Any:
    """torch.onnx.export(dynamo=True): the ONNXProgram; an ExportError naming the cause in one line."""
    skip = (not rewrite) if rewrite is not None else _holds_fx_graph(module)
    passes = _optimiser_passes() if optimize and skip else None
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic = tuple({0: batch} for _ in args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, dynamo=True, opset_version=opset,
                input_names=None if input_names is None else list(input_names),
                output_names=None if output_names is None else list(output_names),
                dynamic_shapes=dynamic, verbose=False, optimize=optimize and passes is None,
            )
            if passes is not None:
                optimise_without_rewrites(program.model, passes)
            return program
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; name the cause in one line
        raise ExportError(f"torch.onnx.export failed for this model: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc


def _dynamo_static_then_dynamic(module: torch.nn.Module, args: tuple[torch.Tensor, ...], opset: int,
                                input_names: Sequence[str] | None, output_names: Sequence[str] | None,
                                optimize: bool, rewrite: bool | None = None) -> TracedProgram | None:
    """dynamo at batch STATIC_BATCH, then a dynamic batch axis (batch_axis.generalise_batch), checked by running it
    at two other batch sizes; None where any step does not fit."""
    import onnx

    from .batch_axis import STATIC_BATCH, generalise_batch, runs_at_other_batches

    if weight_bytes(module) > PROTOBUF_LIMIT_BYTES:
        return None
    rows = torch.arange(STATIC_BATCH)
    static_args = tuple(a[rows % a.shape[0]] for a in args)
    try:
        program = _dynamo(module, static_args, opset, input_names, output_names, optimize, False, rewrite)
        model = generalise_batch(program.model_proto, STATIC_BATCH)
    except Exception:  # noqa: BLE001 - the symbolic-batch export decides (and names the cause if it fails too)
        return None
    if model is None or not runs_at_other_batches(model, tuple(a.detach().cpu().numpy() for a in args)):
        return None
    try:  # shapes for ONNX Runtime's in-place elementwise ops (those of the static export were dropped)
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are an optimisation: the graph is valid without them
        pass
    out = TracedProgram(model)
    out.engine, out.batch_axis = "dynamo", "generalised"
    return out


def export_onnx(module: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], *, opset: int = 18,
                input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
                dynamic_batch: bool = True, optimize: bool = True, engine: str = "auto",
                static_first: bool = True, rewrite: bool | None = None) -> Any:
    """Export ``module`` on ``example`` (a tensor or a tuple of them) to ONNX: a program with ``model_proto`` and
    ``save(path, external_data=...)`` (torch.onnx's ONNXProgram, or TracedProgram), its route in ``engine``.

    ``engine``: "auto" (TorchScript where its trace is exact, else dynamo: see the module's doc), "torchscript" or
    "dynamo". With ``dynamic_batch`` axis 0 of every input (and output) is dynamic (export with a batch of at least
    2, as timm's ONNX helper does, so that it is not specialised). A failure is an ExportError naming the cause in
    one line. ``static_first``: on the dynamo route, export at a static batch and make the axis dynamic afterwards
    (oodgate.exporter.batch_axis: ~1.6x faster), falling back to a symbolic batch where that does not fit.
    ``rewrite``: onnxscript's pattern rewriter in the dynamo route's optimiser; None (default) runs it except for a
    module holding a torch.fx graph (``optimise_without_rewrites``).
    """
    if engine not in ENGINES:
        raise ExportError(f"unknown export engine {engine!r}: one of {', '.join(ENGINES)}")
    args = example if isinstance(example, tuple) else (example,)
    loggers = [logging.getLogger(n) for n in _CHATTY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        if engine != "dynamo":
            blocker = _torchscript_blocker(module, opset)
            traced = None if blocker else _torchscript(module, args, opset, list(input_names or ()),
                                                         None if output_names is None else list(output_names),
                                                         dynamic_batch)
            if traced is not None:
                return traced
            if engine == "torchscript":
                raise ExportError(f"the TorchScript exporter cannot export this model exactly "
                                  f"({blocker or 'its trace failed or is specialised'}): use engine='dynamo'")
        if dynamic_batch and static_first:
            static = _dynamo_static_then_dynamic(module, args, opset, input_names, output_names, optimize, rewrite)
            if static is not None:
                return static
        program = _dynamo(module, args, opset, input_names, output_names, optimize, dynamic_batch, rewrite)
        program.engine, program.batch_axis = "dynamo", "symbolic" if dynamic_batch else "static"
        return program
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


__all__ = ["ENGINES", "PROTOBUF_LIMIT_BYTES", "TORCHSCRIPT_MAX_OPSET", "TracedProgram", "export_onnx",
           "optimise_without_rewrites", "weight_bytes"]
