"""Models above protobuf's limit keep their weights in '<graph>.data' beside the graph: published with it (under
the published name), never over an existing file, and the graph runs from where it was published."""

from __future__ import annotations

import importlib
import os

import numpy as np
import onnx
import pytest

from oodgate.errors import OodgateError


def test_external_data_is_published_with_the_graph(digits_calibration, energy_graph, digits_test, tmp_path,
                                                   monkeypatch):
    from oodgate.runtime import Session

    export_module = importlib.import_module("oodgate.exporter.export")
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)  # every model counts as large
    cal = digits_calibration("energy")
    path = tmp_path / "big.onnx"
    result = export_module.export(cal, path)
    assert result.external_data == tmp_path / "big.onnx.data"
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    locations = {e.value for t in onnx.load(str(path), load_external_data=False).graph.initializer
                 for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"}
    x = cal.preprocess(digits_test.images[:16])
    with Session(path, "cpu") as big, Session(energy_graph, "cpu") as small:
        np.testing.assert_allclose(big.run_array(x)["score"], small.run_array(x)["score"], rtol=1e-6, atol=1e-6)
    path.unlink()
    with pytest.raises(OodgateError, match=r"big\.onnx\.data exists"):
        export_module.export(cal, path)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx.data"]
