"""oodgate.export_onnx's two routes: the TorchScript exporter where its trace is exact, dynamo otherwise.

Each route's graph is run by ONNX Runtime at batch sizes other than the example's and compared with PyTorch, so a
batch size baked into a graph (the TorchScript tracer's failure mode) fails here.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from oodgate.errors import ExportError, OodgateError
from oodgate.exporter import export_onnx
from oodgate.exporter.onnx_export import TORCHSCRIPT_MAX_OPSET


class Plain(nn.Module):
    """Conv, BN, pool, flatten, Linear, top-k: the shape of a backbone + head; no Python-level shape reads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        z = self.fc(h)
        return z, torch.topk(h, 3, dim=1).values.sum(dim=1)


class BranchesOnTheBatch(Plain):
    """A Python branch on the batch size: TorchScript would bake its outcome into the graph (a TracerWarning)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, s = super().forward(x)
        if x.shape[0] > 0:  # always true; dynamo keeps it symbolic (batch >= 1)
            return z, s
        return z, -s


class HoldsAnFxGraph(Plain):
    """A module with a torch.fx graph inside (as AdaSCALE's traced gradient branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.fx.symbolic_trace(nn.Sequential(nn.Flatten(1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, s = super().forward(x)
        return self.inner(z), s


def _run(program, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _assert_matches_torch(module: nn.Module, program) -> None:
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 5):  # the example had batch 2
        x = torch.randn((batch, 3, 6, 6), generator=gen)
        with torch.no_grad():
            ref = [t.numpy() for t in module(x)]
        got = _run(program, x.numpy())
        assert [g.shape for g in got] == [r.shape for r in ref]
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


EXAMPLE = torch.randn((2, 3, 6, 6), generator=torch.Generator().manual_seed(1))


def test_a_plain_module_takes_the_torchscript_route_and_keeps_a_dynamic_batch():
    module = Plain().eval()
    program = export_onnx(module, EXAMPLE, input_names=["x"], output_names=["z", "s"])
    assert program.engine == "torchscript"
    dims = [d.dim_param or d.dim_value for d in program.model_proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[1:] == [3, 6, 6]
    _assert_matches_torch(module, program)


@pytest.mark.parametrize("module_type, why", [(BranchesOnTheBatch, "TracerWarning"), (HoldsAnFxGraph, "fx graph")])
def test_what_torchscript_cannot_trace_exactly_goes_through_dynamo(module_type, why):
    module = module_type().eval()
    program = export_onnx(module, EXAMPLE, input_names=["x"], output_names=["z", "s"])
    assert program.engine == "dynamo", why
    _assert_matches_torch(module, program)


def test_torchscript_is_not_used_above_its_newest_opset():
    module = Plain().eval()
    program = export_onnx(module, EXAMPLE, opset=TORCHSCRIPT_MAX_OPSET + 1, input_names=["x"])
    assert program.engine == "dynamo"
    assert max(o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")) \
        == TORCHSCRIPT_MAX_OPSET + 1
    _assert_matches_torch(module, program)


def test_engine_choice_and_one_line_refusals():
    module = BranchesOnTheBatch().eval()
    assert export_onnx(module, EXAMPLE, engine="dynamo").engine == "dynamo"
    assert export_onnx(Plain().eval(), EXAMPLE, engine="dynamo").engine == "dynamo"
    with pytest.raises(ExportError, match="TorchScript exporter cannot export this model exactly") as err:
        export_onnx(module, EXAMPLE, engine="torchscript")
    assert "\n" not in str(err.value) and isinstance(err.value, OodgateError)
    with pytest.raises(ExportError, match="unknown export engine"):
        export_onnx(module, EXAMPLE, engine="jit")


def test_saved_program_loads_back(tmp_path):
    import onnx

    program = export_onnx(Plain().eval(), EXAMPLE, input_names=["x"])
    program.save(str(tmp_path / "g.onnx"))
    assert onnx.load(str(tmp_path / "g.onnx")) == program.model_proto


def test_export_takes_the_fast_route_for_every_single_pass_detector(digits_export):
    from oodgate.detectors import available_detectors

    engines = {m: digits_export(m)[1].engine for m in available_detectors()}
    assert {m for m, e in engines.items() if e != "torchscript"} == {"adascale_a", "adascale_l"}, engines


@pytest.fixture
def rewriter_calls(monkeypatch):
    """How many times onnxscript's pattern rewriter ran (a spy on its pass)."""
    import onnxscript.rewriter

    calls = []
    plain = onnxscript.rewriter.RewritePass.call

    def spy(self, model):  # noqa: ANN001, ANN202
        calls.append(1)
        return plain(self, model)

    monkeypatch.setattr(onnxscript.rewriter.RewritePass, "call", spy)
    return calls


def _ops(program) -> list[str]:
    return [n.op_type for n in program.model_proto.graph.node]


def test_a_module_holding_an_fx_graph_is_optimised_without_the_pattern_rewriter(rewriter_calls):
    """The gradient branch's route: constants folded and dead code removed as torch.onnx's optimiser does, onnxscript's
    pattern rewriter skipped (most of the optimiser's time on an AdaSCALE graph); the same outputs as with it."""
    module = HoldsAnFxGraph().eval()
    fast = export_onnx(module, EXAMPLE, input_names=["x"], output_names=["z", "s"])
    assert rewriter_calls == [] and fast.engine == "dynamo"
    _assert_matches_torch(module, fast)
    raw = export_onnx(module, EXAMPLE, input_names=["x"], output_names=["z", "s"], optimize=False)
    assert len(_ops(fast)) < len(_ops(raw))  # the optimiser did run: folded and pruned
    full = export_onnx(module, EXAMPLE, input_names=["x"], output_names=["z", "s"], rewrite=True)
    assert rewriter_calls  # asked for: the whole optimiser
    x = torch.randn((4, 3, 6, 6), generator=torch.Generator().manual_seed(5)).numpy()
    for a, b in zip(_run(fast, x), _run(full, x)):
        np.testing.assert_array_equal(a, b)


def test_other_dynamo_exports_keep_the_whole_optimiser(rewriter_calls, monkeypatch):
    """Single-pass graphs on the dynamo route keep the rewriter; where this onnxscript lacks a pass the no-rewriter
    optimiser needs, a graph with an fx module gets torch.onnx's whole optimiser rather than none."""
    export_onnx(BranchesOnTheBatch().eval(), EXAMPLE, input_names=["x"])
    assert rewriter_calls
    rewriter_calls.clear()
    export_onnx(BranchesOnTheBatch().eval(), EXAMPLE, input_names=["x"], rewrite=False)  # on request: skipped
    assert rewriter_calls == []
    from oodgate.exporter import onnx_export

    monkeypatch.setattr(onnx_export, "_optimiser_passes", lambda: None)
    module = HoldsAnFxGraph().eval()
    program = export_onnx(module, EXAMPLE, input_names=["x"], output_names=["z", "s"])
    assert rewriter_calls
    _assert_matches_torch(module, program)
