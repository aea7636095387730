"""The static TensorRT compatibility audit: every exported method passes; known TensorRT limits are caught."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from oodgate.runtime.onnx_graph import constant_values
from oodgate.detectors import available_detectors
from oodgate.runtime.trt_audit import (TOPK_MAX_K, TRT_SUPPORTED_OPS, Finding, audit_graph, format_findings,
                                       has_errors)


@pytest.mark.parametrize("method", available_detectors())
def test_every_exported_method_passes_the_audit(digits_graph, method):
    path = digits_graph(method)
    findings = audit_graph(path)
    assert all(isinstance(f, Finding) and f.severity in ("error", "warning", "info") for f in findings)
    report = format_findings(findings, path.name)
    assert not has_errors(findings), report
    assert not [f for f in findings if f.severity == "warning"], report
    model = onnx.load(str(path))
    assert {n.op_type for n in model.graph.node} <= TRT_SUPPORTED_OPS
    for node in model.graph.node:
        if node.op_type == "TopK":  # ASH and SCALE: k is a constant within TensorRT's limit
            k = constant_values(model.graph)[node.input[1]]  # an initializer or a Constant node's output
            assert 1 <= int(k.ravel()[0]) <= TOPK_MAX_K
    assert report.splitlines()[-1].startswith("PASS")


# -- synthetic graphs with known problems ---------------------------------------------------------------------------

def make(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feat(name="h", dim=2048, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, ["N", dim])


def topk_model(k=None, dim=2048, k_input=None):
    inits = [] if k is None else [numpy_helper.from_array(np.array([k], np.int64), "k")]
    inputs = [feat(dim=dim)] + ([helper.make_tensor_value_info("k", TensorProto.INT64, [1])] if k_input else [])
    node = helper.make_node("TopK", ["h", "k"], ["v", "i"], axis=1, name="topk")
    return make([node], inputs, [feat("v", None), helper.make_tensor_value_info("i", TensorProto.INT64, ["N", None])],
                inits)


def errors_of(model, op=None):
    return [f for f in audit_graph(model) if f.severity == "error" and (op is None or f.op == op)]


def test_topk_within_the_limit_passes():
    assert not has_errors(audit_graph(topk_model(k=819)))


def test_topk_above_3840_is_an_error_with_a_way_out():
    # AdaSCALE's step 3 on 3x224x224 inputs: the 7526 smallest |gradient| entries
    found = errors_of(topk_model(k=7526, dim=150528), "TopK")
    assert len(found) == 1 and "3840" in found[0].message and "bisection" in found[0].message


def test_topk_larger_than_its_axis_is_an_error():
    assert errors_of(topk_model(k=100, dim=64), "TopK")


def test_dynamic_k_is_accepted_and_bounded_at_run_time():
    # a real parser (TensorRT-RTX 1.7.1) parses and builds both: the table used to call the large one an error
    small = [f for f in audit_graph(topk_model(dim=2048, k_input=True)) if f.op == "TopK"]
    assert [f.severity for f in small] == ["info"] and "run time" in small[0].message
    big = [f for f in audit_graph(topk_model(dim=150528, k_input=True)) if f.op == "TopK"]
    assert [f.severity for f in big] == ["warning"] and "3840" in big[0].message


def test_unsorted_topk_is_only_noted():
    model = topk_model(k=10)
    model.graph.node[0].attribute.append(helper.make_attribute("sorted", 0))
    found = [f for f in audit_graph(model) if f.op == "TopK"]
    assert [f.severity for f in found] == ["info"]


@pytest.mark.parametrize("op,severity", [("Unique", "error"), ("NonZero", "warning"), ("Hardmax", None),
                                         ("StringNormalizer", "error"), ("MadeUpOp", "error")])
def test_operator_support(op, severity):
    model = make([helper.make_node(op, ["h"], ["y"], name="n")], [feat()], [feat("y", None)])
    got = [f.severity for f in audit_graph(model) if f.node == "n" and f.severity != "info"]
    assert got == ([severity] if severity else [])


def test_custom_domain_op_needs_a_plugin():
    model = make([helper.make_node("Fancy", ["h"], ["y"], domain="com.example", name="n")], [feat()], [feat("y")])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert "plugin" in errors_of(model)[0].message


@pytest.mark.parametrize("dtype,severity", [(TensorProto.DOUBLE, "warning"), (TensorProto.STRING, "error"),
                                            (TensorProto.FLOAT16, None), (TensorProto.INT64, None),
                                            (TensorProto.INT8, "warning"), (TensorProto.UINT8, None)])
def test_graph_input_types(dtype, severity):
    model = make([helper.make_node("Identity", ["h"], ["y"])], [feat(dtype=dtype)], [feat("y", dtype=dtype)])
    got = {f.severity for f in audit_graph(model) if f.op.startswith("graph")}
    assert got == ({severity} if severity else set())
    if dtype == TensorProto.UINT8:  # a UINT8 graph output made by a node is fine, too
        assert not audit_graph(model)


@pytest.mark.parametrize("to,severity", [(TensorProto.DOUBLE, "warning"), (TensorProto.COMPLEX64, "error"),
                                         (TensorProto.UINT64, "error"), (TensorProto.BOOL, None),
                                         (TensorProto.UINT8, "error")])
def test_cast_targets(to, severity):
    model = make([helper.make_node("Cast", ["h"], ["c"], to=to, name="cast"),
                  helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT)], [feat()], [feat("y")])
    got = {f.severity for f in audit_graph(model) if f.node == "cast"}
    assert got == ({severity} if severity else set())


def test_maxpool_indices_are_an_error():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 8, 8, 8])
    pool = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2], name="pool")
    assert "Indices" in errors_of(make([pool], [x], [y, idx]), "MaxPool")[0].message
    plain = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    assert not has_errors(audit_graph(make([plain], [x], [y])))


def test_scatter_reductions():
    data, upd = feat("d", 64), feat("u", 8)
    idx = helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 8])
    add = helper.make_node("ScatterElements", ["d", "i", "u"], ["y"], axis=1, reduction="add", name="sc")
    found = [f for f in audit_graph(make([add], [data, idx, upd], [feat("y", 64)])) if f.node == "sc"]
    assert [f.severity for f in found] == ["warning"] and "plugin" in found[0].message
    nd = helper.make_node("ScatterND", ["d", "i2", "u2"], ["y"], reduction="add", name="nd")
    i2 = helper.make_tensor_value_info("i2", TensorProto.INT64, ["N", 1])
    u2 = helper.make_tensor_value_info("u2", TensorProto.FLOAT, ["N"])
    assert errors_of(make([nd], [data, i2, u2], [feat("y", 64)]), "ScatterND")


def test_reduce_axes_computed_at_run_time_are_an_error():
    axes_in = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    node = helper.make_node("ReduceSum", ["h", "axes"], ["y"], keepdims=0, name="rs")
    assert errors_of(make([node], [feat(), axes_in], [helper.make_tensor_value_info("y", 1, ["N"])]), "ReduceSum")
    const = numpy_helper.from_array(np.array([1], np.int64), "axes")
    ok = make([node], [feat()], [helper.make_tensor_value_info("y", 1, ["N"])], [const])
    assert not has_errors(audit_graph(ok))


@pytest.mark.parametrize("opset,severity", [(7, "warning"), (18, None), (22, "warning"), (25, "warning"),
                                            (26, "warning")])
def test_opset_range(opset, severity):
    model = make([helper.make_node("Relu", ["h"], ["y"])], [feat()], [feat("y")], opset=opset)
    got = {f.severity for f in audit_graph(model) if f.op == "opset"}
    assert got == ({severity} if severity else set())


def test_dynamic_non_batch_axes_need_a_profile():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
    found = [f for f in audit_graph(make([helper.make_node("Relu", ["x"], ["y"])], [x], [y])) if f.node == "x"]
    assert [f.severity for f in found] == ["warning"] and "[2, 3]" in found[0].message


# -- the CLI ----------------------------------------------------------------------------------------------------------

def test_inspect_trt_check_falls_back_to_the_static_table_and_says_so(energy_graph, monkeypatch):
    from oodgate.cli import app
    from oodgate.runtime import trt_audit
    from oodgate.errors import ProviderError

    def no_parser():
        raise ProviderError("the TensorRT-RTX check needs the tensorrt_rtx package, which is not installed: ...")

    monkeypatch.setattr(trt_audit, "real_parser", no_parser)
    res = CliRunner().invoke(app, ["inspect", str(energy_graph), "--trt-check"])
    assert res.exit_code == 0, res.output
    assert ("TensorRT check of digits-energy.onnx with the static operator table (TensorRT 10.15 support matrix); "
            "no TensorRT parser here") in res.output
    assert "pip install 'oodgate[trt-check]'" in res.output and res.output.rstrip().endswith("(static table)")


def test_inspect_trt_check_exits_1_on_errors(energy_graph, tmp_path):
    import json

    from oodgate.cli import app

    model = onnx.load(str(energy_graph))
    model.graph.node.append(helper.make_node("Unique", ["score"], ["uniq"], name="unsupported_unique"))
    from oodgate.runtime.metadata import reseal_graph

    reseal_graph(model)  # a deliberate edit, re-sealed: the audit, not the seal, must find it
    bad = tmp_path / "with-unique.onnx"
    onnx.save(model, str(bad))
    res = CliRunner().invoke(app, ["inspect", str(bad), "--trt-check"])
    assert res.exit_code == 1
    assert "ERROR   unsupported_unique (Unique)" in res.output and "FAIL" in res.output
    res = CliRunner().invoke(app, ["inspect", str(bad), "--trt-check", "--json"])
    assert res.exit_code == 1
    checks = json.loads(res.output)["trt_check"]
    assert checks["passed"] is False
    assert {"severity": "error", "node": "unsupported_unique", "op": "Unique"}.items() <= checks["findings"][0].items()
