"""oodgate.exporter.batch_axis: a graph exported at a static batch made dynamic, checked at other batch sizes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from oodgate.exporter import export_onnx
from oodgate.exporter.batch_axis import STATIC_BATCH, generalise_batch, runs_at_other_batches

B = STATIC_BATCH


def _graph(nodes, inits, out_shape=(B, 12)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_shapes_and_uniform_batch_constants_follow_the_input():
    # y = reshape(x, [B, 12]) + ones(B, 12) * 2, the ones as a batch-sized initializer (as a backward pass bakes)
    inits = [numpy_helper.from_array(np.array([B, 12], np.int64), "shape"),
             numpy_helper.from_array(np.full((B, 12), 2.0, np.float32), "twos")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Add", ["r", "twos"], ["y"])]
    model = generalise_batch(_graph(nodes, inits))
    assert model is not None
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for n in (1, 5):
        x = np.random.default_rng(n).normal(size=(n, 3, 4)).astype(np.float32)
        np.testing.assert_allclose(_run(model, x), x.reshape(n, 12) + 2.0)
    assert runs_at_other_batches(model, (np.zeros((2, 3, 4), np.float32),))


def test_multiples_of_the_batch_become_multiples_of_n():
    # reshape to (B * 3, 4) and back to (B, 12), as attention does with batch x heads
    inits = [numpy_helper.from_array(np.array([3 * B, 4], np.int64), "s1"),
             numpy_helper.from_array(np.array([B, 12], np.int64), "s2")]
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"]), helper.make_node("Reshape", ["a", "s2"], ["y"])]
    model = generalise_batch(_graph(nodes, inits))
    x = np.arange(2 * 12, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(_run(model, x), x.reshape(2, 12))


@pytest.mark.parametrize("case", ["attribute", "non-uniform constant", "index constant at a shape input and not"])
def test_what_cannot_be_decided_is_refused(case):
    if case == "attribute":  # the batch size inside an attribute (here Flatten's axis would never be; use Split)
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"]),
                 helper.make_node("Constant", [], ["unused"], value_ints=[B, 1])]
        inits = [numpy_helper.from_array(np.array([B, 12], np.int64), "shape")]
    elif case == "non-uniform constant":
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Add", ["r", "noise"], ["y"])]
        inits = [numpy_helper.from_array(np.array([B, 12], np.int64), "shape"),
                 numpy_helper.from_array(np.random.default_rng(0).normal(size=(B, 12)).astype(np.float32), "noise")]
    else:  # one int constant read both as a shape and as data: which entries are the batch is undecidable
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
                 helper.make_node("Cast", ["shape"], ["sf"], to=TensorProto.FLOAT),
                 helper.make_node("ReduceSum", ["sf"], ["s"], keepdims=0), helper.make_node("Add", ["r", "s"], ["y"])]
        inits = [numpy_helper.from_array(np.array([B, 12], np.int64), "shape")]
    assert generalise_batch(_graph(nodes, inits)) is None


class WithFxGraph(torch.nn.Module):
    """Conv + an fx-traced part: the dynamo route (as AdaSCALE's gradient branch)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.inner = torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(16, 5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.inner(h) * torch.ones_like(h[:, :1, 0, 0])


def test_export_onnx_takes_the_static_route_and_matches_torch_at_other_batch_sizes():
    module = WithFxGraph().eval()
    example = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(1))
    fast = export_onnx(module, example, input_names=["x"])
    slow = export_onnx(module, example, input_names=["x"], static_first=False)
    assert (fast.engine, fast.batch_axis) == ("dynamo", "generalised")
    assert (slow.engine, slow.batch_axis) == ("dynamo", "symbolic")
    for n in (1, 7):
        x = torch.randn((n, 3, 4, 4), generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            ref = module(x).numpy()
        for program in (fast, slow):
            sess = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
            np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], ref, rtol=1e-5, atol=1e-5)


def test_flat_indices_over_the_batch_grow_with_n():
    # y = gather(flatten(x), idx), idx[n, c] = 12 n + c: the per-sample flat indices a backward pass bakes
    idx = (np.arange(B)[:, None] * 12 + np.arange(12)[None, :]).astype(np.int64)
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "flat"), numpy_helper.from_array(idx, "idx")]
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]), helper.make_node("Gather", ["f", "idx"], ["y"], axis=0)]
    model = generalise_batch(_graph(nodes, inits))
    assert model is not None
    for n in (1, 4):
        x = np.random.default_rng(n).normal(size=(n, 3, 4)).astype(np.float32)
        np.testing.assert_array_equal(_run(model, x), x.reshape(n, 12))


def test_a_batch_axis_that_neither_repeats_nor_grows_is_refused():
    idx = np.random.default_rng(0).integers(0, 12, size=(B, 12)).astype(np.int64)
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "flat"), numpy_helper.from_array(idx, "idx")]
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]), helper.make_node("Gather", ["f", "idx"], ["y"], axis=0)]
    assert generalise_batch(_graph(nodes, inits)) is None
