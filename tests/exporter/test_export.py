"""The exported graph: metadata, checker, signature, dynamic batch, the export-time check, safe writes."""

from __future__ import annotations

import numpy as np
import pytest


def test_metadata_records_what_serving_needs(digits_calibration, energy_graph):
    import oodgate
    from oodgate.runtime import read_graph_info

    cal = digits_calibration("energy")
    info = read_graph_info(energy_graph)
    assert info.method == "energy" and info.params == cal.params
    assert info.threshold == cal.threshold and info.tpr == pytest.approx(0.95)
    assert info.preprocess == cal.preprocess and info.input_shape == (1, 16, 16)
    assert info.class_names == [str(d) for d in range(10)]
    assert info.calibration_hash == cal.checksum()
    assert info.oodgate_version == oodgate.__version__
    assert info.outputs == ("logits", "score", "is_ood", "label") and info.input_name == "input"
    assert info.raw["model_ref"] == "digits-cnn" and info.raw["data_fingerprint"] == cal.data_fingerprint


def test_metadata_of_a_detector_with_params(digits_calibration, digits_graph):
    from oodgate.runtime import read_graph_info

    cal = digits_calibration("dice")
    info = read_graph_info(digits_graph("dice"))
    assert info.method == "dice" and info.params == cal.params and info.params  # e.g. {'p': 70}
    assert info.calibration_hash == cal.checksum() != digits_calibration("energy").checksum()


def test_graph_passes_full_checker_and_has_named_typed_outputs(energy_graph):
    import onnx

    onnx.checker.check_model(str(energy_graph), full_check=True)
    model = onnx.load(str(energy_graph))
    assert model.producer_name == "oodgate"
    assert {p.key for p in model.metadata_props} >= {"oodgate", "oodgate.method", "oodgate.threshold"}
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch axis
    assert [d.dim_value for d in dims[1:]] == [1, 16, 16]
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert list(outputs) == ["logits", "score", "is_ood", "label"]
    T = onnx.TensorProto
    assert [t.elem_type for t in outputs.values()] == [T.FLOAT, T.FLOAT, T.BOOL, T.INT64]
    assert all(t.shape.dim[0].dim_param == dims[0].dim_param for t in outputs.values())
    assert outputs["logits"].shape.dim[1].dim_value == 10 and len(outputs["score"].shape.dim) == 1


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_dynamic_batch_axis(energy_graph, digits_test, batch):
    from oodgate.runtime import Session

    with Session(energy_graph, providers="cpu") as sess:
        x = sess.preprocess(digits_test.images[:batch])
        out = sess.run_array(x)
        one_by_one = [sess.run_array(x[i:i + 1]) for i in range(batch)]
    assert out["logits"].shape == (batch, 10)
    assert out["score"].shape == out["is_ood"].shape == out["label"].shape == (batch,)
    # each row is the sample's own result (no batch coupling) and the classifier is right on real digits
    np.testing.assert_allclose(out["score"], np.concatenate([o["score"] for o in one_by_one]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["label"], np.concatenate([o["label"] for o in one_by_one]))
    assert np.mean(out["label"] == digits_test.labels[:batch]) >= (1.0 if batch < 64 else 0.95)


def test_export_checks_on_inputs_other_than_the_example_and_never_overwrites(digits_calibration, tmp_path,
                                                                            monkeypatch):
    import importlib

    from oodgate import OodgateError

    exporter = importlib.import_module("oodgate.exporter.export")
    cal = digits_calibration("msp")
    path = tmp_path / "msp.onnx"
    path.write_bytes(b"precious")
    with pytest.raises(OodgateError, match="exists.*--force"):
        exporter.export(cal, path)
    assert path.read_bytes() == b"precious"

    seen: dict[str, np.ndarray] = {}
    real_export, real_check = exporter.export_onnx, exporter.check_against_reference

    def spy_export(module, example, **kw):
        seen["example"] = example.numpy().copy()
        return real_export(module, example, **kw)

    def spy_check(graph_path, module, inputs, **kw):
        seen["check"] = np.array(inputs, copy=True)
        return real_check(graph_path, module, inputs, **kw)

    monkeypatch.setattr(exporter, "export_onnx", spy_export)
    monkeypatch.setattr(exporter, "check_against_reference", spy_check)
    result = exporter.export(cal, path, overwrite=True)
    assert path.read_bytes()[:8] != b"precious" and result.path == path
    # exported with a batch of at least 2, checked on a batch of another size and other values
    assert seen["example"].shape[0] >= 2 and seen["check"].shape[1:] == seen["example"].shape[1:] == (1, 16, 16)
    assert seen["check"].shape[0] != seen["example"].shape[0]
    assert not np.isin(seen["check"], seen["example"]).any()
    assert result.max_score_diff is not None and 0 <= result.max_score_diff <= 1e-4
    assert result.method == "msp" and result.threshold == cal.threshold and result.input_shape == (1, 16, 16)
    assert result.ops and sum(result.ops.values()) > 3 and result.seconds > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msp.onnx"]  # no temporary files left


def test_failed_check_leaves_no_file(digits_calibration, tmp_path, monkeypatch):
    import importlib

    exporter = importlib.import_module("oodgate.exporter.export")

    def failing_check(*args, **kw):
        raise exporter.ExportError("ONNX Runtime disagrees with PyTorch (simulated)")

    monkeypatch.setattr(exporter, "check_against_reference", failing_check)
    with pytest.raises(exporter.ExportError, match="simulated"):
        exporter.export(digits_calibration("msp"), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_check_against_reference_rejects_a_mismatching_graph(digits_calibration, energy_graph, digits_test):
    from oodgate.exporter import ExportError, build_graph_module, check_against_reference

    x = digits_calibration("energy").preprocess(digits_test.images[:6])
    good = build_graph_module(digits_calibration("energy"), digits_calibration("energy").model())
    assert check_against_reference(energy_graph, good, x) <= 1e-4
    other = build_graph_module(digits_calibration("line"), digits_calibration("line").model())
    with pytest.raises(ExportError, match="further from the float64 reference than PyTorch float32.*score: max"):
        check_against_reference(energy_graph, other, x)


def test_export_rejects_bad_arguments_before_exporting(digits_calibration, tmp_path):
    from oodgate import OodgateError
    from oodgate.exporter import export

    cal = digits_calibration("energy")
    with pytest.raises(OodgateError, match="does not exist"):
        export(cal, tmp_path / "no" / "such" / "folder.onnx")
    with pytest.raises(OodgateError, match="opset 17 is outside the supported range"):
        export(cal, tmp_path / "x.onnx", opset=17)
    assert list(tmp_path.iterdir()) == []


def test_graph_metadata_dict_is_json(digits_calibration):
    import json

    from oodgate.exporter import graph_metadata

    meta = graph_metadata(digits_calibration("energy"), (1, 16, 16))
    assert json.loads(json.dumps(meta)) == meta
    assert meta["format"] == "oodgate-graph" and meta["input_shape"] == [1, 16, 16]
