"""MOS end to end: calibrate on the digits CNN -> save -> load -> export -> ONNX Runtime equals the PyTorch MOS
module (<= 1e-4) at batch 1 and 7 on real digits images; Session runs it; the head alone exports for the ImageNet
taxonomy's uneven groups."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

import oodgate
from oodgate.data import digits, ood_set
from oodgate.detectors.mos import MOS, MOSHead
from oodgate.detectors.mos_groups import imagenet_taxonomy
from oodgate.exporter import build_graph_module
from oodgate.exporter.graph import INPUT_NAME, OUTPUT_NAMES

ATOL = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A MOS calibration of the digits CNN (fit on its training split, threshold on 'calib'), saved, reloaded and
    exported."""
    folder = tmp_path_factory.mktemp("mos")
    cal = oodgate.calibrate("digits-cnn", digits("train"), method="mos", holdout=digits("calib"), progress=False)
    cal.save(folder / "mos.oodcal")
    loaded = oodgate.load_calibration(folder / "mos.oodcal")
    result = oodgate.export(loaded, folder / "mos.onnx")
    return cal, loaded, result, folder / "mos.onnx"


def test_calibration_round_trip(exported):
    cal, loaded, _, _ = exported
    assert loaded.method == "mos" and loaded.params["groups"] is None
    assert loaded.info == cal.info
    assert loaded.info["group_source"] == "kmeans(on=class_means, k=4, seed=0)"
    assert sorted(c for g in loaded.info["groups"] for c in g) == list(range(10))
    h = np.abs(np.random.default_rng(0).standard_normal((50, 64))).astype(np.float32)
    np.testing.assert_array_equal(loaded.detector.score(h), cal.detector.score(h))
    np.testing.assert_array_equal(loaded.detector.predict(h), cal.detector.predict(h))


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_matches_pytorch_mos_module(exported, batch):
    from oodgate.runtime.session import ort_session

    _, loaded, result, path = exported
    assert result.max_score_diff is not None and result.max_score_diff <= ATOL
    module = build_graph_module(loaded, loaded.model())
    sess = ort_session(str(path), ["CPUExecutionProvider"])
    test = digits("test")
    for x, _ in test.subset(np.arange(5 * batch)).batches(loaded.preprocess, batch):
        got = dict(zip(OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x})))
        with torch.no_grad():
            ref = dict(zip(OUTPUT_NAMES, (t.numpy() for t in module(torch.from_numpy(x)))))
        assert got["logits"].shape == (batch, 10 + len(loaded.info["groups"]))
        np.testing.assert_allclose(got["logits"], ref["logits"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(got["score"], ref["score"], atol=ATOL, rtol=0)
        np.testing.assert_array_equal(got["label"], ref["label"])
        np.testing.assert_array_equal(got["is_ood"], ref["is_ood"])


def test_session_keeps_accuracy_and_rejects_ood(exported):
    cal, _, _, path = exported
    test = digits("test")
    sess = oodgate.Session(path, providers="cpu")
    assert sess.info.method == "mos"
    pred = sess.run(test.images)
    split = cal.model()
    with torch.no_grad():
        x = np.concatenate([b for b, _ in test.batches(cal.preprocess, 400)])
        original = np.mean(split(torch.from_numpy(x)).argmax(1).numpy() == test.labels)
    assert np.mean(pred.labels == test.labels) >= original - 0.01
    assert set(pred.labels) <= set(range(10))
    assert pred.is_ood.mean() < 0.15  # ~5 % of ID rejected at TPR 95 %
    textures = sess.run(ood_set("textures", n=100, size=(8, 8)).images)
    assert textures.is_ood.mean() > 0.8


def test_head_export_with_imagenet_taxonomy_groups(tmp_path):
    """The MOS head alone with 8 uneven groups (398 ... 2 classes, padded to 522 slots) through the dynamo exporter."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    groups = imagenet_taxonomy()
    d = 16
    head = MOSHead(0.5 * rng.standard_normal((1008, d)), rng.standard_normal(1008), groups).eval()
    example = torch.from_numpy(rng.standard_normal((2, d)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "torch.export", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
        program = torch.onnx.export(head, (example,), dynamo=True, opset_version=18, input_names=["h"],
                                    output_names=["logits", "score", "label"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
    program.save(str(tmp_path / "head.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        h = (3 * rng.standard_normal((n, d))).astype(np.float32)
        got = sess.run(None, {"h": h})
        with torch.no_grad():
            ref = [t.numpy() for t in head(torch.from_numpy(h))]
        np.testing.assert_allclose(got[1], ref[1], atol=ATOL, rtol=0)
        np.testing.assert_array_equal(got[2], ref[2])


def test_detector_from_calibration_params_needs_no_group_file(exported, tmp_path):
    """A calibration whose params name a group file that no longer exists still loads (groups are in the info)."""
    cal, _, _, _ = exported
    path = tmp_path / "groups.csv"
    path.write_text("".join(f"{c},{g}\n" for g, members in enumerate(cal.info["groups"]) for c in members))
    params = {**cal.params, "groups": str(path)}
    state, info = cal.state, cal.info
    path.unlink()
    det = MOS.from_state(params, state, info)
    h = np.abs(np.random.default_rng(1).standard_normal((20, 64))).astype(np.float32)
    np.testing.assert_array_equal(det.score(h), cal.detector.score(h))
