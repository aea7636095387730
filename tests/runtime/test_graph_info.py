"""Reading a graph's oodgate metadata and describing it (what `oodgate inspect` shows)."""

from __future__ import annotations

import json

import pytest


def _with_metadata(src, dst, edit) -> None:
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    edit(props)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))


def test_other_format_version_is_refused(energy_graph, tmp_path):
    from oodgate import ArtifactError
    from oodgate.runtime import read_graph_info

    def bump(props):
        meta = json.loads(props["oodgate"])
        meta["format_version"] = 99
        props["oodgate"] = json.dumps(meta)

    _with_metadata(energy_graph, tmp_path / "v99.onnx", bump)
    with pytest.raises(ArtifactError, match="graph format version 99.*re-export"):
        read_graph_info(tmp_path / "v99.onnx")


def test_broken_or_foreign_metadata_is_refused(energy_graph, foreign_graph, tmp_path):
    from oodgate import ArtifactError
    from oodgate.runtime import read_graph_info

    _with_metadata(energy_graph, tmp_path / "bad.onnx", lambda p: p.update(oodgate="{not json"))
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_graph_info(tmp_path / "bad.onnx")
    _with_metadata(energy_graph, tmp_path / "other.onnx", lambda p: p.update(oodgate='{"format": "other"}'))
    with pytest.raises(ArtifactError, match="not made by oodgate"):
        read_graph_info(tmp_path / "other.onnx")
    with pytest.raises(ArtifactError, match="no 'oodgate' metadata"):
        read_graph_info(foreign_graph)


def test_describe_graph(energy_graph, digits_calibration):
    from oodgate.runtime.inspect import describe_graph, format_description

    cal = digits_calibration("energy")
    desc = describe_graph(energy_graph)
    assert desc["method"] == "energy" and desc["threshold"] == cal.threshold
    assert desc["calibration_hash"] == cal.checksum() and desc["num_classes"] == 10
    assert [o["name"] for o in desc["outputs"]] == ["logits", "score", "is_ood", "label"]
    assert [o["dtype"] for o in desc["outputs"]] == ["float32", "float32", "bool", "int64"]
    assert desc["inputs"][0]["shape"][1:] == [1, 16, 16] and isinstance(desc["inputs"][0]["shape"][0], str)
    assert desc["ops"] and desc["opsets"]["ai.onnx"] >= 18
    json.dumps(desc)
    text = format_description(desc)
    assert "method     energy" in text and f"{cal.threshold:.6g}" in text and "ops        " in text
