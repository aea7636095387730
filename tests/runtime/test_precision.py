"""The FP32-head precision plan (on every exported method, on graphs with squeeze-excitation and two backbone passes,
on a stand-in TensorRT network) and the FP16 drift metrics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from oodgate.detectors import available_detectors
from oodgate.errors import OodgateError
from oodgate.evaluation.drift import metric_drift
from oodgate.runtime.precision import PrecisionPlan, fp32_head_plan
from oodgate.runtime.tensorrt import apply_precision_plan

#: operators that overflow or lose the score in half precision: every one of them must stay FP32
FRAGILE_OPS = {"Exp", "ReduceLogSumExp", "Softmax", "TopK", "ReduceSum", "Div", "Gemm", "Less"}
BACKBONE_OPS = {"Conv", "Relu", "MaxPool", "BatchNormalization"}
#: one backbone pass + a feature head
ONE_PASS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line", "mos")


@pytest.mark.parametrize("method", available_detectors())
def test_plan_covers_the_head_and_none_of_the_backbone(digits_graph, method):
    path = digits_graph(method)
    plan = fp32_head_plan(path)
    model = onnx.load(str(path))
    by_op: dict[str, set[str]] = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, set()).add(node.name)
    covered = set(plan.nodes)
    made_by = {o: n.name for n in model.graph.node for o in n.output}
    if method not in ONE_PASS:  # e.g. AdaSCALE: its second pass and gradient are not head, whatever their ops
        assert made_by["score"] in covered and not by_op.get("Conv", set()) & covered
        return
    for op in FRAGILE_OPS & by_op.keys():
        assert by_op[op] <= covered, f"{method}: {op} nodes {sorted(by_op[op] - covered)} would run in FP16"
    for op in BACKBONE_OPS & by_op.keys():
        assert not by_op[op] & covered, f"{method}: backbone {op} pinned to FP32"
    for out in ("logits", "score", "is_ood", "label"):
        assert made_by[out] in covered, f"{method}: the node computing '{out}' is not in the head"
    # one pooled tensor: the flattened output of the digits CNN's global average pool (names depend on the exporter)
    assert len(plan.pooled) == 1 and plan.rule.startswith("global pooling")
    producer = {n.name: n for n in model.graph.node}
    chain = [producer[n].op_type for n in plan.pooling_nodes]
    assert chain[0] in ("GlobalAveragePool", "ReduceMean") and set(chain[1:]) <= {"Flatten", "Reshape", "Squeeze"}
    assert made_by[plan.pooled[0]] == plan.pooling_nodes[-1]
    assert set(plan.tensors) >= {"logits", "score"} and "is_ood" not in plan.tensors and "label" not in plan.tensors
    assert plan.covers(made_by["score"]) and "FP32 head" in plan.summary()


def test_without_pooling_nodes_option(digits_graph):
    with_pool = fp32_head_plan(digits_graph("energy"))
    without = fp32_head_plan(digits_graph("energy"), include_pooling=False)
    assert set(with_pool.nodes) - set(without.nodes) == set(with_pool.pooling_nodes) and not without.pooling_nodes


# -- synthetic graphs ------------------------------------------------------------------------------------------------

def _w(name, *shape, seed=0):
    return numpy_helper.from_array(np.random.default_rng(seed).normal(size=shape).astype(np.float32), name)


def _model(nodes, inits, outputs=("logits", "score")):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", None][: 2 if o == "logits" else 1])
            for o in outputs]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def _scale_head(h, prefix=""):
    """SCALE on the pooled features h: score = logsumexp(W (h exp(sum h / sum topk h)) + b)."""
    return [
        helper.make_node("Gemm", [h, "W", "b"], ["logits"], transB=1, name="classifier"),
        helper.make_node("TopK", [h, "k"], ["tv", "ti"], axis=1, name="topk"),
        helper.make_node("ReduceSum", ["tv", "ax1"], ["s2"], name="sum_top"),
        helper.make_node("ReduceSum", [h, "ax1"], ["s1"], name="sum_all"),
        helper.make_node("Div", ["s1", "s2"], ["ratio_v"], name="ratio"),
        helper.make_node("Exp", ["ratio_v"], ["er"], name="exp"),
        helper.make_node("Mul", [h, "er"], ["hs"], name="scaled"),
        helper.make_node("Gemm", ["hs", "W", "b"], ["z"], transB=1, name="classifier_scaled"),
        helper.make_node("ReduceLogSumExp", ["z", "ax1"], [f"{prefix}score"], keepdims=0, name="energy"),
    ]


HEAD_INITS = [_w("W", 10, 4), _w("b", 10), numpy_helper.from_array(np.array([2], np.int64), "k"),
              numpy_helper.from_array(np.array([1], np.int64), "ax1")]


def test_squeeze_excitation_pools_stay_in_the_backbone():
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["se_p"], name="se_pool"),
        helper.make_node("Conv", ["se_p", "sew"], ["se_c"], name="se_conv"),
        helper.make_node("Sigmoid", ["se_c"], ["se_s"], name="se_gate"),
        helper.make_node("Mul", ["r", "se_s"], ["m"], name="se_mul"),
        helper.make_node("GlobalAveragePool", ["m"], ["gp"], name="final_pool"),
        helper.make_node("Flatten", ["gp"], ["h"], name="flatten"),
        *_scale_head("h"),
    ]
    plan = fp32_head_plan(_model(nodes, [_w("cw", 4, 3, 3, 3), _w("sew", 4, 4, 1, 1), *HEAD_INITS]))
    assert plan.pooled == ("h",) and plan.pooling_nodes == ("final_pool", "flatten")
    assert set(plan.nodes) == {"final_pool", "flatten", "classifier", "topk", "sum_top", "sum_all", "ratio", "exp",
                               "scaled", "classifier_scaled", "energy"}


def test_a_second_backbone_pass_stays_out_of_the_head():
    """AdaSCALE's shape: the first pass's prediction perturbs the input of a second pass; both pooled features feed
    the score. The second pass (and the perturbation) must not be pinned to FP32; the first classifier is."""
    nodes = [
        helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r", "hw"], ["p"], keepdims=1, name="pool"),
        helper.make_node("Reshape", ["p", "flat"], ["h"], name="reshape"),
        helper.make_node("Gemm", ["h", "W", "b"], ["logits"], transB=1, name="classifier"),
        helper.make_node("ArgMax", ["logits"], ["pred"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["pred"], ["predf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Reshape", ["predf", "n111"], ["pert"], name="pert_shape"),
        helper.make_node("Add", ["x", "pert"], ["x2"], name="perturb"),
        helper.make_node("Conv", ["x2", "cw"], ["c2"], pads=[1, 1, 1, 1], name="conv_2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu_2"),
        helper.make_node("ReduceMean", ["r2", "hw"], ["p2"], keepdims=1, name="pool_2"),
        helper.make_node("Reshape", ["p2", "flat"], ["h2"], name="reshape_2"),
        helper.make_node("Sub", ["h", "h2"], ["d"], name="diff"),
        helper.make_node("Abs", ["d"], ["ad"], name="abs"),
        helper.make_node("ReduceSum", ["ad", "ax1"], ["q"], name="q"),
        helper.make_node("Exp", ["q"], ["eq"], name="exp_q"),
        helper.make_node("Mul", ["h", "eq"], ["hq"], name="scale_q"),
        helper.make_node("Gemm", ["hq", "W", "b"], ["z"], transB=1, name="classifier_q"),
        helper.make_node("ReduceLogSumExp", ["z", "ax1"], ["score"], keepdims=0, name="energy"),
    ]
    inits = [_w("cw", 4, 3, 3, 3), _w("W", 10, 4), _w("b", 10),
             numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
             numpy_helper.from_array(np.array([-1, 4], np.int64), "flat"),
             numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "n111"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    plan = fp32_head_plan(_model(nodes, inits))
    assert plan.pooled == ("h", "h2")
    assert {"classifier", "diff", "abs", "q", "exp_q", "scale_q", "classifier_q", "energy"} <= set(plan.nodes)
    assert not {"conv", "relu", "conv_2", "relu_2", "perturb", "argmax", "cast"} & set(plan.nodes)


@pytest.mark.parametrize("with_bias_add", [False, True])
def test_without_pooling_the_classifier_input_is_the_boundary(with_bias_add):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["a"], transB=1, name="fc1"),
             helper.make_node("Relu", ["a"], ["h"], name="relu")]
    if with_bias_add:
        nodes += [helper.make_node("MatMul", ["h", "Wt"], ["mm"], name="fc2"),
                  helper.make_node("Add", ["mm", "b"], ["logits"], name="bias")]
    else:
        nodes += [helper.make_node("Gemm", ["h", "Wt", "b"], ["logits"], name="fc2")]
    nodes.append(helper.make_node("ReduceLogSumExp", ["logits", "ax1"], ["score"], keepdims=0, name="energy"))
    inits = [_w("W1", 8, 16), _w("Wt", 8, 10), _w("b", 10), numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    plan = fp32_head_plan(model)
    assert plan.pooled == ("h",) and "logits" in plan.rule
    assert "fc1" not in plan.nodes and "relu" not in plan.nodes and {"fc2", "energy"} <= set(plan.nodes)


def test_no_classifier_found_is_a_clear_error():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 16])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g", [x], [out]),
                              opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(OodgateError, match="pooled features"):
        fp32_head_plan(model)


# -- applying the plan to a TensorRT network (a stand-in with TensorRT's Python surface) -----------------------------

class FakeTensor(SimpleNamespace):
    pass


class FakeLayer:
    def __init__(self, name, kind, inputs, outputs):
        self.name, self.type = name, f"LayerType.{kind}"
        self._in, self._out = inputs, outputs
        self.precision, self.output_types = None, {}

    num_inputs = property(lambda self: len(self._in))
    num_outputs = property(lambda self: len(self._out))

    def get_input(self, i):
        return self._in[i]

    def get_output(self, i):
        return self._out[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class FakeNetwork:
    def __init__(self, layers):
        self.layers = layers

    num_layers = property(lambda self: len(self.layers))

    def get_layer(self, i):
        return self.layers[i]


FAKE_TRT = SimpleNamespace(float32="float32", float16="float16", bfloat16="bfloat16",
                           LayerType=SimpleNamespace(SHAPE="LayerType.SHAPE", CONSTANT="LayerType.CONSTANT",
                                                     CAST="LayerType.CAST"))


def energy_network():
    """What TensorRT's parser makes of the digits energy graph, helper layers included."""
    t = {n: FakeTensor(name=n, dtype=d) for n, d in [
        ("input", "float32"), ("cw", "float32"), ("c", "float32"), ("r", "float32"), ("mean", "float32"),
        ("view", "float32"), ("W", "float32"), ("mm", "float32"), ("b", "float32"), ("logits", "float32"),
        ("e", "float32"), ("s", "float32"), ("score", "float32"), ("vals", "float32"), ("idx", "int32"),
        ("shp", "int64"), ("tau", "float32"), ("is_ood", "bool")]}
    spec = [("cw_const", "CONSTANT", [], ["cw"]), ("node_Conv_69", "CONVOLUTION", ["input", "cw"], ["c"]),
            ("node_relu", "ACTIVATION", ["c"], ["r"]), ("node_mean", "REDUCE", ["r"], ["mean"]),
            ("node_Reshape_78", "SHUFFLE", ["mean"], ["view"]), ("W_const", "CONSTANT", [], ["W"]),
            ("node_linear", "MATRIX_MULTIPLY", ["view", "W"], ["mm"]), ("b_const", "CONSTANT", [], ["b"]),
            ("node_linear_1", "ELEMENTWISE", ["mm", "b"], ["logits"]),
            ("(Unnamed Layer* 9) [Unary]", "UNARY", ["logits"], ["e"]), ("node_logsumexp", "REDUCE", ["e"], ["s"]),
            ("node_logsumexp_2", "UNARY", ["s"], ["score"]), ("node_argmax", "TOPK", ["logits"], ["vals", "idx"]),
            ("node_Shape", "SHAPE", ["view"], ["shp"]), ("tau_const", "CONSTANT", [], ["tau"]),
            ("node_lt", "ELEMENTWISE", ["score", "tau"], ["is_ood"])]
    return FakeNetwork([FakeLayer(n, k, [t[i] for i in ins], [t[o] for o in outs]) for n, k, ins, outs in spec])


def test_plan_applied_to_a_network_pins_the_head_layers_only():
    net = energy_network()
    plan = PrecisionPlan(("view",), ("node_mean", "node_Reshape_78", "node_linear", "node_logsumexp", "node_argmax",
                                     "node_lt"), (), ("node_mean", "node_Reshape_78"), "test")
    done = apply_precision_plan(net, plan, FAKE_TRT)
    layers = {l.name: l for l in net.layers}
    head = {"node_mean", "node_Reshape_78", "W_const", "node_linear", "b_const", "node_linear_1",
            "(Unnamed Layer* 9) [Unary]", "node_logsumexp", "node_logsumexp_2", "node_argmax", "node_Shape",
            "tau_const", "node_lt"}
    assert done["matched_by"] == "walk from the pooled tensor" and done["layers"] == len(head)
    for name, layer in layers.items():
        if name not in head:  # backbone: untouched
            assert layer.precision is None and not layer.output_types, name
    for name in head - {"W_const", "b_const", "tau_const", "node_Shape"}:
        assert layers[name].precision == "float32", name
    assert layers["node_Shape"].precision is None and not layers["node_Shape"].output_types
    assert layers["W_const"].precision is None and layers["W_const"].output_types == {0: "float32"}
    assert layers["node_argmax"].output_types == {0: "float32"}  # indices (int32) keep their type
    assert layers["node_lt"].output_types == {} and layers["node_lt"].precision == "float32"  # bool out, FP32 compare


def test_plan_falls_back_to_layer_names_when_the_pooled_tensor_is_renamed():
    net = energy_network()
    plan = PrecisionPlan(("renamed",), ("node_linear", "node_logsumexp"), (), (), "test")
    done = apply_precision_plan(net, plan, FAKE_TRT)
    pinned = {l.name for l in net.layers if l.precision == "float32"}
    assert done["matched_by"] == "layer names"
    assert pinned == {"node_linear", "node_linear_1", "node_logsumexp", "node_logsumexp_2"}  # parser's '_N' repeats


# -- FP16 drift in detection metrics ---------------------------------------------------------------------------------

def test_metric_drift_against_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    ref_id, ref_ood = rng.normal(1.0, 1.0, 400), rng.normal(-1.0, 1.0, 300)
    got_id, got_ood = ref_id + rng.normal(0, 0.3, 400), ref_ood + rng.normal(0, 0.3, 300)
    d = metric_drift(ref_id, ref_ood, got_id, got_ood, threshold=0.0)
    y = np.r_[np.ones(400), np.zeros(300)]
    assert d.reference["auroc"] == pytest.approx(roc_auc_score(y, np.r_[ref_id, ref_ood]), abs=1e-12)
    assert d.runtime["auroc"] == pytest.approx(roc_auc_score(y, np.r_[got_id, got_ood]), abs=1e-12)
    assert d.delta["auroc"] == pytest.approx(d.runtime["auroc"] - d.reference["auroc"])
    assert d.max_abs_score_diff == pytest.approx(np.abs(np.r_[got_id - ref_id, got_ood - ref_ood]).max())
    flips = int(np.sum((np.r_[ref_id, ref_ood] < 0) != (np.r_[got_id, got_ood] < 0)))
    assert d.decision_flips == flips > 0
    # classic FPR95: share of OOD accepted at the threshold keeping 95 % of ID
    tau = np.sort(ref_id)[int(np.floor(0.05 * 400))]
    assert d.reference["fpr95_id_positive"] == pytest.approx(np.mean(ref_ood >= tau), abs=1 / 300)
    assert "auroc" in d.line() and d.worst() == max(abs(v) for v in d.delta.values())


def test_metric_drift_of_identical_scores_is_zero():
    s_id, s_ood = np.linspace(0, 1, 50), np.linspace(-1, 0.5, 40)
    d = metric_drift(s_id, s_ood, s_id.astype(np.float32), s_ood.astype(np.float32), threshold=0.25)
    assert d.worst() < 1e-12 and d.decision_flips == 0


def test_metric_drift_reports_an_overflow_instead_of_raising():
    s_id, s_ood = np.linspace(0, 1, 50), np.linspace(-1, 0.5, 40)
    got = s_id.copy()
    got[3] = np.inf  # what an FP16 logsumexp gives for a logit > 11
    d = metric_drift(s_id, s_ood, got, s_ood)
    assert d.nonfinite_scores == 1 and d.worst() == float("inf") and np.isnan(d.runtime["auroc"])
    assert "NaN/inf" in d.line()


def test_metric_drift_needs_the_same_inputs():
    with pytest.raises(OodgateError, match="same inputs"):
        metric_drift(np.ones(5), np.zeros(5), np.ones(4), np.zeros(5))
