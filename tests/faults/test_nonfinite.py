"""Defect 1 of issue 13: NaN fails open. A non-finite input, score or threshold must never be accepted as ID."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oodgate.errors import OodgateError

from faultkit import expect_error, graph_meta, read_calibration_zip, set_graph_meta, write_calibration_zip

PIXELS = [(0, 0, 0), (0, 8, 8), (0, 15, 15), (0, 3, 12)]
BAD_VALUES = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("value", BAD_VALUES, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("pixel", PIXELS, ids=[f"px{p[1]}-{p[2]}" for p in PIXELS])
def test_d1_one_nonfinite_pixel_is_ood_in_the_graph(energy_graph, test_inputs, pixel, value):
    """The graph itself (raw outputs, no Session post-processing) rejects an input with one bad pixel."""
    from oodgate import Session

    x = test_inputs[:4].copy()
    x[1][pixel] = value
    with Session(energy_graph, "cpu") as sess:
        out = sess.run_array(x)
        clean = sess.run_array(test_inputs[:4])
    assert bool(out["is_ood"][1]) is True
    assert not np.isfinite(out["score"][1])
    keep = [0, 2, 3]  # the other samples of the batch are untouched
    np.testing.assert_array_equal(out["is_ood"][keep], clean["is_ood"][keep])
    np.testing.assert_allclose(out["score"][keep], clean["score"][keep], rtol=1e-6)


@pytest.mark.parametrize("fill", ["all-nan", "all-inf", "half-nan"])
def test_d1_nonfinite_images_are_flagged_and_rejected_by_session_run(energy_graph, test_inputs, fill):
    from oodgate import Session

    x = test_inputs[:3].copy()
    if fill == "all-nan":
        x[0] = np.nan
    elif fill == "all-inf":
        x[0] = np.inf
    else:
        x[0, :, :8] = np.nan
    with Session(energy_graph, "cpu") as sess:
        pred = sess.run(x)
    assert pred.is_ood[0] and pred.nonfinite_input.tolist() == [True, False, False]
    records = pred.records()
    assert records[0]["nonfinite_input"] is True and records[0]["is_ood"] is True
    assert "nonfinite_input" not in records[1]


@pytest.mark.parametrize("tau", [float("nan"), float("inf"), float("-inf"), "nan", "abc", None, True])
def test_d1_session_refuses_a_nonfinite_threshold_override(energy_graph, test_inputs, tau):
    from oodgate import Session

    if tau is None:  # None means "the calibrated threshold": fine
        with Session(energy_graph, "cpu") as sess:
            assert sess.run(test_inputs[:2], threshold=tau).threshold == sess.threshold
        return
    with Session(energy_graph, "cpu") as sess, pytest.raises(OodgateError, match="threshold"):
        sess.run(test_inputs[:2], threshold=tau)


def test_d1_threshold_override_rejects_nan_scores_and_keeps_finite_decisions(energy_graph, test_inputs):
    from oodgate import Session

    x = test_inputs[:8].copy()
    x[2, 0, 4, 4] = np.nan
    with Session(energy_graph, "cpu") as sess:
        tau = float(np.median(sess.run(test_inputs[:8]).scores))
        pred = sess.run(x, threshold=tau)
    finite = np.isfinite(pred.scores)
    assert not finite[2] and pred.is_ood[2]
    np.testing.assert_array_equal(pred.is_ood[finite], pred.scores[finite] < np.float32(tau))


@pytest.mark.parametrize("tau", ["nan", "inf", "-inf", "NaN"])
def test_d1_cli_run_refuses_a_nonfinite_threshold(cli, energy_graph, digit_pngs, tau):
    expect_error(cli("run", energy_graph, digit_pngs[0], "--provider", "cpu", "--threshold", tau), "threshold")


def test_cli_run_refuses_a_nan_float_tiff_in_one_line(cli, energy_graph, digit_pngs, tmp_path):
    """A float32 TIFF holding NaN pixels (a real file format that can carry them): refused, one line, exit 2."""
    from PIL import Image

    image = np.full((8, 8), 0.5, np.float32)
    image[2, 3] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(image, mode="F").save(path)
    expect_error(cli("run", energy_graph, path, digit_pngs[0], "--provider", "cpu"), "nan")


@pytest.mark.parametrize("tau", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_d1_calibration_with_nonfinite_threshold_is_refused(energy_calibration_file, tmp_path, tau):
    from oodgate.calibration import load_calibration

    manifest, entries = read_calibration_zip(energy_calibration_file)
    manifest["threshold"] = tau
    path = write_calibration_zip(tmp_path / "nan.oodcal", manifest, entries)
    with pytest.raises(OodgateError, match="threshold"):
        load_calibration(path)


@pytest.mark.parametrize("tau", [float("nan"), float("inf"), "4.2", None], ids=["nan", "inf", "str", "null"])
def test_d1_graph_metadata_with_nonfinite_threshold_is_refused(edit_graph, tau):
    from oodgate import Session

    def edit(model):
        meta = graph_meta(model)
        meta["threshold"] = tau
        set_graph_meta(model, meta)

    path = edit_graph(edit)
    with pytest.raises(OodgateError, match="threshold"):
        Session(path, "cpu")


def test_d1_export_refuses_a_nan_check_result(energy_cal, tmp_path):
    """export's ORT-vs-PyTorch check on inputs that give NaN scores must not report success ('max diff nan')."""
    from oodgate import export

    bad = np.full((3, 1, 16, 16), np.nan, np.float32)
    target = tmp_path / "g.onnx"
    with pytest.raises(OodgateError, match="(?i)nan|non-finite"):
        export(energy_cal, target, check_inputs=bad)
    assert not target.exists()


def _compare_outputs():
    try:
        from oodgate.evaluation.parity import compare_outputs
    except ImportError:
        from oodgate.exporter.parity import compare_outputs
    return compare_outputs


@pytest.mark.parametrize("where", ["got-score", "ref-score", "both-score", "got-logits", "both-logits"])
def test_d1_nan_is_a_mismatch_in_every_comparison(where):
    compare_outputs = _compare_outputs()
    rng = np.random.default_rng(0)
    ref = {"logits": rng.normal(size=(4, 3)).astype(np.float32), "score": rng.normal(size=4).astype(np.float32) + 5}
    ref["is_ood"], ref["label"] = ref["score"] < 5, ref["logits"].argmax(1)
    got = {k: v.copy() for k, v in ref.items()}
    output = where.split("-")[1]
    for side in ((got, ref) if where.startswith("both") else (got,) if where.startswith("got") else (ref,)):
        side[output][1] = np.nan
    report = compare_outputs("ort-cpu", ref, got, threshold=5.0, atol=1e-4, rtol=1e-4, margin=1e-3)
    assert not report.passed
    cmp = next(o for o in report.outputs if o.output == output)
    assert not cmp.passed and cmp.mismatched >= 1


def test_parity_fails_for_a_graph_edited_to_a_nan_score(cli, edit_graph, energy_calibration_file, tmp_path):
    """An edited graph whose score is always NaN must not PASS parity (exit 1, FAIL)."""
    from onnx import helper, numpy_helper

    def nan_score(model):
        for node in model.graph.node:
            node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
        model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan_c"))
        model.graph.node.insert(0, helper.make_node("Mul", ["score_raw", "nan_c"], ["score"]))
        order = {n.output[0]: i for i, n in enumerate(model.graph.node)}
        nodes = sorted(model.graph.node, key=lambda n: 10**6 if n.output[0] == "score" else order[n.output[0]])
        # topological order: the Mul right after the node producing score_raw
        nodes = [n for n in nodes if n.output[0] != "score"]
        at = next(i for i, n in enumerate(nodes) if "score_raw" in n.output) + 1
        nodes.insert(at, helper.make_node("Mul", ["score_raw", "nan_c"], ["score"]))
        del model.graph.node[:]
        model.graph.node.extend(nodes)

    path = edit_graph(nan_score, reseal_after=True)
    result = cli("parity", path, "--calibration", energy_calibration_file, "--data", "digits:test", "--limit", 16)
    assert result.exception is None, result.exception
    assert result.code == 1 and result.out.strip().splitlines()[-1] == "FAIL", (result.out, result.err)


def test_d1_parity_against_a_golden_file_of_nan_scores_fails(cli, energy_graph, energy_cal, test_inputs, tmp_path):
    """The issue's case: every score NaN on both sides (NaN inputs in the golden file) used to PASS with exit 0."""
    try:
        from oodgate.evaluation.parity import save_golden
    except ImportError:
        from oodgate.exporter.parity import save_golden
    from oodgate import Session
    from oodgate.runtime.metadata import read_graph_info

    x = np.full((4, 1, 16, 16), np.nan, np.float32)
    with Session(energy_graph, "cpu") as sess:
        outs = sess.run_array(x)
    golden = save_golden(tmp_path / "nan.npz", x, outs, graph_hash=read_graph_info(energy_graph).calibration_hash)
    result = cli("parity", energy_graph, "--golden", golden)
    assert result.exception is None, result.exception
    assert result.code == 1 and result.out.strip().splitlines()[-1] == "FAIL", (result.out, result.err)


@pytest.mark.parametrize("side", ["reference", "runtime", "both"])
def test_d1_nan_is_a_mismatch_in_the_polygraphy_compare_func(side):
    pytest.importorskip("polygraphy")
    from polygraphy.comparator.struct import IterationResult

    from oodgate.evaluation.polygraphy_compare import ood_compare_func

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    score = rng.normal(size=6).astype(np.float32) + 5
    base = {"logits": logits, "score": score, "is_ood": score < 5, "label": logits.argmax(1)}
    ref, got = ({k: v.copy() for k, v in base.items()} for _ in range(2))
    for outs in ((ref,) if side == "reference" else (got,) if side == "runtime" else (ref, got)):
        outs["score"][2] = np.nan
    verdicts = ood_compare_func(5.0)(IterationResult(ref, runner_name="ref"), IterationResult(got, runner_name="rt"))
    assert not bool(verdicts["score"])
