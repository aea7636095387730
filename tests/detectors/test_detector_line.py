"""LINe: the O(C*D) on-the-fly masks equal the official C x C x D construction; class means follow the labels."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

import oodgate
from oodgate.detectors import line as line_module
from oodgate.detectors.line import LINeHead, line_weight_cuts, line_weight_scales

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import numpy_reference as ref  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5
C, D = 5, 12


@pytest.fixture(scope="module")
def small():
    """C=5, D=12: class-structured non-negative features so that every class is predicted and labelled."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((C, D))
    b = 0.1 * rng.standard_normal(C)
    y = np.repeat(np.arange(C), 40)
    h = (2.0 * np.maximum(w[y], 0) + np.abs(rng.standard_normal((len(y), D)))).astype(np.float32)
    perm = rng.permutation(len(y))
    h, y = h[perm], y[perm]
    h_test = (np.abs(rng.standard_normal((150, D))) * rng.uniform(0.2, 3.0, (150, 1))).astype(np.float32)
    return h, y, h_test, w, b


def _on_the_fly_weight_masks(state: dict, w: np.ndarray) -> np.ndarray:
    """M(l) for every l rebuilt from the stored contribution (C x D) and thresholds (C) only: (C, C, D)."""
    s_abs = np.abs(state["contribution"])
    return np.stack([(s_abs[l][None, :] * w) > state["thresholds"][l] for l in range(w.shape[0])])


@pytest.mark.parametrize(("p_w", "p_a"), [(10, 10), (90, 90), (50, 25), (0, 0)])
@pytest.mark.parametrize("clip", ["p90", 0.8, 1.5])
def test_line_matches_naive_official_layout(small, p_w, p_a, clip):
    h, y, h_test, w, b = small
    det = oodgate.detector("line", p_w=p_w, p_a=p_a, clip=clip).fit(h, labels=y, weight=w, bias=b)
    state = det.fitted_state()
    naive = ref.line_fit_naive(h, y, w, p_w, p_a)

    np.testing.assert_allclose(state["contribution"], naive["S"], rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(state["neuron_mask"].astype(bool), naive["neuron_mask"])
    np.testing.assert_allclose(state["thresholds"], naive["thresholds"], rtol=1e-12, atol=1e-15)
    fly = _on_the_fly_weight_masks(state, w)
    assert fly.shape == (C, C, D)
    np.testing.assert_array_equal(fly, naive["weight_mask"])
    # per class, the neuron mask keeps D - 1 - floor(p_a (D - 1) / 100) entries (distinct S_c values)
    kept = D - 1 - np.floor(p_a * (D - 1) / 100)
    np.testing.assert_array_equal(naive["neuron_mask"].sum(axis=1), kept)

    c = ref.perc(h, float(clip[1:])) if isinstance(clip, str) else float(clip)
    assert det.fit_info()["clip"] == pytest.approx(c, rel=1e-12)
    want = ref.line_naive(h_test, w, b, naive, c)
    np.testing.assert_allclose(det.score(h_test), want, rtol=RTOL, atol=ATOL)


def head_masks(head, lab: int) -> np.ndarray:
    """The (C, D) keep mask of class ``lab`` that the head's float32 buffers encode, as the graph computes it."""
    bufs = {k: v.numpy() for k, v in head.state_dict().items()}
    w32 = bufs["weight"]
    if head.alpha is None:
        return w32 > bufs["weight_cuts"][lab][None, :]
    return (w32 * bufs["weight_scales"][lab][None, :] > np.float32(head.alpha)) & (bufs["input_factors"][lab] != 0)


@pytest.mark.parametrize(("p_w", "p_a", "alpha"), [(10, 10, -1.0), (90, 90, 1.0), (50, 25, -1.0), (0, 0, -1.0)])
def test_line_head_buffers_build_the_same_masks(small, p_w, p_a, alpha):
    """The float32 buffers of the exported module give exactly the masks of the float64 naive construction:
    W32 * scale_l > alpha (and factor_l != 0)  <=>  M(l) and m_l; p_w = 90 drops every negative weight (alpha = +1)."""
    h, y, _, w, b = small
    det = oodgate.detector("line", p_w=p_w, p_a=p_a).fit(h, labels=y, weight=w, bias=b)
    naive = ref.line_fit_naive(h, y, w, p_w, p_a)
    head = det.head()
    assert set(head.state_dict()) == {"weight", "bias", "weight_scales", "input_factors", "clip"}
    assert head.alpha == alpha
    factors = head.state_dict()["input_factors"].numpy()
    np.testing.assert_array_equal(factors != 0, naive["neuron_mask"] & naive["weight_mask"].any(axis=1))
    fly = np.stack([head_masks(head, lab) for lab in range(C)])
    np.testing.assert_array_equal(fly, naive["weight_mask"] & naive["neuron_mask"][:, None, :])


@pytest.mark.parametrize(("c", "d", "seed", "p_w"), [(40, 96, 1, 10), (200, 64, 2, 10), (60, 48, 3, 90)])
def test_line_scales_and_cuts_match_the_product_masks_on_larger_heads(c, d, seed, p_w):
    """Many classes per column (binary search + exact fix-up on the product): both float32 forms give the naive masks."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, d)) / np.sqrt(d)
    y = np.arange(4 * c) % c
    h = np.abs(rng.standard_normal((4 * c, d)) + 2.0 * np.maximum(w[y], 0) * np.sqrt(d)).astype(np.float32)
    det = oodgate.detector("line", p_w=p_w).fit(h, labels=y, weight=w, bias=np.zeros(c))
    naive = ref.line_fit_naive(h, y, w, p_w, 10)
    state = det.fitted_state()
    args = (state["weight"], state["contribution"], state["neuron_mask"], state["thresholds"])
    scaled = LINeHead(w, np.zeros(c), 1.0, scales=line_weight_scales(*args))
    cut = LINeHead(w, np.zeros(c), 1.0, cuts=line_weight_cuts(*args))
    for lab in range(c):
        want = naive["weight_mask"][lab] & naive["neuron_mask"][lab]
        np.testing.assert_array_equal(head_masks(scaled, lab), want)
        np.testing.assert_array_equal(head_masks(cut, lab), want)


def _column_problem():
    """W (6 classes x 5 features) float32-exact, |S| = 1 everywhere, so that M(l) keeps W[c, d] > t_l exactly: ties and
    adjacent float32 values on both sides of the thresholds, a column fully dropped, one with nothing dropped."""
    v = np.float32(-0.3)
    up = np.nextafter(v, np.float32(1))  # the next float32 above v: kept when v is the threshold
    w = np.array([[v, v, -5.0, 0.5, 0.0],
                  [up, v, -5.0, 0.25, -0.1],
                  [up, up, -5.0, 0.75, 0.0],
                  [-1.0, up, -5.0, 1.0, -0.2],
                  [0.2, -1.0, -5.0, 0.125, -0.1],
                  [v, 0.0, -5.0, 2.0, 0.3]], np.float32).astype(np.float64)
    t = np.array([v, v, -1.0, -0.1, -6.0, float(up)], np.float64)  # class 5 drops v and up (a tie at t); 4 none
    return w, np.ones_like(w), t


def test_line_scales_are_exact_at_ties_and_adjacent_floats():
    w, s, t = _column_problem()
    mask = np.ones(w.shape, bool)
    mask[2, 3] = False  # class 2 drops neuron 3 whatever the weights
    scale, factor, alpha = line_weight_scales(w, s, mask, t)
    assert alpha == -1.0
    w32 = w.astype(np.float32)
    for lab in range(w.shape[0]):
        want = (w * np.abs(s[lab])[None, :] > t[lab]) & mask[lab][None, :]
        got = (w32 * scale[lab][None, :] > np.float32(alpha)) & (factor[lab] != 0)
        np.testing.assert_array_equal(got, want, err_msg=f"class {lab}")
    assert np.all(factor[t > -5.0, 2] == 0)  # column 2 (all -5) is fully dropped where t_l >= -5: no input at all
    assert factor[4, 2] != 0 and np.all(w32[:, 2] * scale[4, 2] > -1)  # class 4 (t = -6) drops nothing anywhere
    np.testing.assert_array_equal(factor[:, 3] != 0, mask[:, 3])  # column 3 is all positive: nothing dropped


def test_line_scales_refuse_what_one_threshold_cannot_hold():
    """Mixed regimes (one class drops a positive weight, another keeps a negative one) have no single alpha: None,
    and the head falls back to the cuts, with the same scores as the naive computation."""
    w, s, t = _column_problem()
    t = t.copy()
    t[0] = 0.3  # class 0 now drops positive weights too; the others still keep negative ones
    mask = np.ones(w.shape, bool)
    assert line_weight_scales(w, s, mask, t) is None
    cuts = line_weight_cuts(w, s, mask, t)
    w32 = w.astype(np.float32)
    for lab in range(w.shape[0]):
        np.testing.assert_array_equal(w32 > cuts[lab][None, :], w * np.abs(s[lab])[None, :] > t[lab])


def test_line_falls_back_to_cuts_with_the_same_scores(small, monkeypatch):
    h, y, h_test, w, b = small
    det = oodgate.detector("line").fit(h, labels=y, weight=w, bias=b)
    scaled = det.score(h_test)
    assert det.head().alpha == -1.0
    monkeypatch.setattr(line_module, "line_weight_scales", lambda *a: None)
    fallback = oodgate.detector("line").fit(h, labels=y, weight=w, bias=b)
    assert fallback.head().alpha is None and "weight_cuts" in fallback.head().state_dict()
    want = ref.line_naive(h_test, w, b, ref.line_fit_naive(h, y, w), ref.perc(h, 90))
    np.testing.assert_allclose(fallback.score(h_test), want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scaled, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("form", "engine", "blocks"), [("scales", "torchscript", 7), ("scales", "dynamo", 7),
                                                    ("cuts", "auto", 7), ("scales", "auto", 1), ("cuts", "auto", 1)])
def test_line_graph_in_blocks_matches_numpy_on_a_batch_of_distinct_classes(form, engine, blocks, monkeypatch,
                                                                           tmp_path):
    """The exported head (by either exporter), in many feature blocks of W^T (BLOCK made small) or in one block of
    all classes, on batches whose samples have distinct predicted classes: ONNX Runtime's scores equal the naive NumPy
    LINe per sample, and the scaled form is one Mul, one ThresholdedRelu and one MatMul per block (no Where, no
    comparison on the C x D weights)."""
    import onnx
    import onnxruntime as ort
    import torch

    from oodgate.exporter.onnx_export import export_onnx

    c, d = 30, 40
    rng = np.random.default_rng(11)
    w = rng.standard_normal((c, d)) / np.sqrt(d)
    b = 0.05 * rng.standard_normal(c)
    y = np.arange(6 * c) % c
    h = np.abs(rng.standard_normal((6 * c, d)) + 2.0 * np.maximum(w[y], 0) * np.sqrt(d)).astype(np.float32)
    if form == "cuts":
        monkeypatch.setattr(line_module, "line_weight_scales", lambda *a: None)
    # 6 features per block: 7 blocks, the last one short; or the whole head in one block
    monkeypatch.setattr(LINeHead, "BLOCK", 6 * c if blocks > 1 else c * d)
    det = oodgate.detector("line").fit(h, labels=y, weight=w, bias=b)
    head = det.head()
    assert (head.alpha is None) == (form == "cuts")
    path = tmp_path / "line-head.onnx"
    program = export_onnx(head, (torch.from_numpy(h[:2]),), input_names=["h"],
                          output_names=["logits", "score", "label"], engine=engine)
    assert program.engine == ("torchscript" if engine == "auto" else engine)  # the fast route where it is exact
    program.save(str(path))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    if form == "scales":
        assert ops.count("ThresholdedRelu") == blocks and "Where" not in ops and "Greater" not in ops
    else:
        assert ops.count("Greater") == blocks and "Where" not in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    naive = ref.line_fit_naive(h, y, w)
    clip = det.fit_info()["clip"]
    x = h[[c * k + k for k in range(5)] + list(range(0, 6 * c, 7))]  # rows of many classes
    lab = np.argmax(np.minimum(x.astype(np.float64), clip) @ w.T + b, axis=1)
    assert len(set(lab.tolist())) >= 12
    for batch in (x[:1], x):
        logits, score, label = sess.run(None, {"h": batch})
        np.testing.assert_allclose(score, ref.line_naive(batch, w, b, naive, clip), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(logits, batch.astype(np.float64) @ w.T + b, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(label, np.argmax(logits, axis=1))
        np.testing.assert_allclose(score, det.score(batch), rtol=1e-6, atol=1e-6)


def test_line_class_means_use_the_labels(small):
    h, y, h_test, w, b = small
    det = oodgate.detector("line").fit(h, labels=y, weight=w, bias=b)
    means = np.stack([h[y == c].astype(np.float64).mean(axis=0) for c in range(C)])
    np.testing.assert_allclose(det.fitted_state()["class_means"], means, rtol=1e-12)
    assert det.fit_info()["label_source"] == "labels"
    # other labels give other means and other scores
    y_other = (y + 1) % C
    other = oodgate.detector("line").fit(h, labels=y_other, weight=w, bias=b)
    assert not np.allclose(other.fitted_state()["class_means"], means)
    assert not np.allclose(other.score(h_test), det.score(h_test), rtol=RTOL, atol=ATOL)


def test_line_without_labels_uses_predictions():
    # fit on the MLP's held-out part: on its training part the predictions equal the labels
    h_test, _, h_fit, y_fit, w, b = ref.digits_problem()
    pred = np.argmax(ref.logits(h_fit, w, b), axis=1)
    assert set(pred.tolist()) == set(range(10)) and np.any(pred != y_fit)
    unlabelled = oodgate.detector("line").fit(h_fit, weight=w, bias=b)
    assert unlabelled.fit_info()["label_source"] == "predictions"
    means = np.stack([h_fit[pred == c].astype(np.float64).mean(axis=0) for c in range(10)])
    np.testing.assert_allclose(unlabelled.fitted_state()["class_means"], means, rtol=1e-12)
    want = ref.line_naive(h_test, w, b, ref.line_fit_naive(h_fit, pred, w), ref.perc(h_fit, 90))
    np.testing.assert_allclose(unlabelled.score(h_test), want, rtol=RTOL, atol=ATOL)
    labelled = oodgate.detector("line").fit(h_fit, labels=y_fit, weight=w, bias=b)
    assert not np.allclose(labelled.fitted_state()["class_means"], means)


def test_line_on_digits_with_labels():
    h_fit, y_fit, h_test, _, w, b = ref.digits_problem()
    det = oodgate.detector("line").fit(h_fit, labels=y_fit, weight=w, bias=b)
    naive = ref.line_fit_naive(h_fit, y_fit, w)
    np.testing.assert_array_equal(_on_the_fly_weight_masks(det.fitted_state(), w), naive["weight_mask"])
    np.testing.assert_array_equal(det.fitted_state()["neuron_mask"].astype(bool), naive["neuron_mask"])
    want = ref.line_naive(h_test, w, b, naive, ref.perc(h_fit, 90))
    np.testing.assert_allclose(det.score(h_test), want, rtol=RTOL, atol=ATOL)
