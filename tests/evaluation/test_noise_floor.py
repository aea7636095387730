"""The noise-floor criterion (oodgate.evaluation.parity, torch-free) on constructed outputs with known errors."""

from __future__ import annotations

import numpy as np

from oodgate.evaluation.parity import FLOOR_FACTOR, compare_to_floor, floor_atol, floor_report, near_tie

RNG = np.random.default_rng(0)


def _outputs(n: int = 20, k: int = 5, noise: float = 1e-3) -> tuple[dict, dict]:
    """A float64 reference and a 'PyTorch float32' copy off by known noise of size `noise`."""
    logits = RNG.normal(0.0, 10.0, size=(n, k))
    score = RNG.normal(0.0, 5.0, size=n)
    ref64 = {"logits": logits, "score": score, "label": logits.argmax(1), "is_ood": score < 0.0}
    z32 = logits + RNG.uniform(-noise, noise, size=logits.shape)
    s32 = score + RNG.uniform(-noise, noise, size=n)
    ref32 = {"logits": z32, "score": s32, "label": z32.argmax(1), "is_ood": s32 < 0.0}
    return ref32, ref64


def test_bound_is_factor_times_torch_error_plus_atol() -> None:
    ref32, ref64 = _outputs()
    cmp = compare_to_floor("score", ref64["score"] + 1e-4, ref32["score"], ref64["score"])
    torch_error = np.abs(ref32["score"] - ref64["score"]).max()
    assert cmp.torch_error == torch_error
    assert np.isclose(cmp.bound, FLOOR_FACTOR * torch_error + floor_atol(ref64["score"]))
    assert np.isclose(cmp.graph_error, 1e-4) and cmp.passed


def test_a_graph_within_the_noise_passes_and_ten_floors_off_fails() -> None:
    ref32, ref64 = _outputs()
    floor = np.abs(ref32["logits"] - ref64["logits"]).max()
    close = ref64["logits"] + 2.0 * floor * np.sign(RNG.normal(size=ref64["logits"].shape))
    far = ref64["logits"].copy()
    far[3, 1] += 10.0 * floor
    assert compare_to_floor("logits", close, ref32["logits"], ref64["logits"]).passed
    failed = compare_to_floor("logits", far, ref32["logits"], ref64["logits"])
    assert not failed.passed and np.isclose(failed.ratio, 10.0 * floor / failed.torch_error)


def test_exact_pytorch_leaves_only_the_tiny_atol() -> None:
    ref = np.array([1.0, -300.0, 2.5])
    assert compare_to_floor("score", ref + 1e-2, ref, ref).passed  # 1024 ulp of 300 = 0.037
    assert not compare_to_floor("score", ref + 0.1, ref, ref).passed


def test_nan_where_float64_is_finite_fails() -> None:
    ref32, ref64 = _outputs()
    got = ref64["score"].copy()
    got[0] = np.nan
    assert not compare_to_floor("score", got, ref32["score"], ref64["score"]).passed


def test_labels_and_decisions_may_differ_only_within_noise() -> None:
    ref32, ref64 = _outputs(n=4, k=3)
    ref64["logits"][0] = [1.0, 1.0 + 1e-5, -3.0]  # a tie within noise
    ref64["label"] = ref64["logits"].argmax(1)
    ref64["score"][1] = 1e-5  # within noise of tau = 0
    ref64["is_ood"] = ref64["score"] < 0.0
    ref32 = {k: np.array(v, copy=True) for k, v in ref64.items()}
    ref32["logits"] = ref32["logits"] + 1e-4  # PyTorch float32's noise: 1e-4
    ref32["score"] = ref32["score"] + 1e-4
    got = {k: np.array(v, copy=True) for k, v in ref64.items()}
    got["label"][0] = 0
    got["is_ood"][1] = True
    report = floor_report(got, ref32, ref64, threshold=0.0)
    assert report.passed and report.labels_near_tie == 1 and report.decisions_near_threshold == 1
    got["label"][2] = (ref64["label"][2] + 1) % 3  # a clear label flip
    report = floor_report(got, ref32, ref64, threshold=0.0)
    assert not report.passed and report.label_mismatches == 1
    assert "label" in report.failures()[0]


def test_discontinuous_scores_are_reported_not_judged() -> None:
    ref32, ref64 = _outputs()
    got = {k: np.array(v, copy=True) for k, v in ref64.items()}
    got["score"] = got["score"] + 1e-2 * np.sign(got["score"])  # same decisions, far beyond the floor
    assert not floor_report(got, ref32, ref64, threshold=0.0).passed
    lenient = floor_report(got, ref32, ref64, threshold=0.0, judge_outputs=False)
    assert lenient.passed and not lenient.outputs[1].passed


def test_near_tie() -> None:
    assert list(near_tie(np.array([[0.0, 1.0], [0.0, 1e-6]]), 1e-3)) == [False, True]


# ---------------------------------------------------------------------------------------------------------
# AdaSCALE-like discontinuous scores: AUROC/FPR95 drift judged against float64 (drift_floor)
# ---------------------------------------------------------------------------------------------------------
def _scores(n: int = 48) -> dict:
    """Overlapping ID / OOD scores (float64 reference), n each: ID first."""
    return {"score": np.concatenate([RNG.normal(1.0, 1.0, n), RNG.normal(0.0, 1.0, n)])}


def _auroc(scores: np.ndarray, n_id: int) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(n_id), np.zeros(len(scores) - n_id)], scores))


def _swap_pairs(ref64: dict, n_id: int, k: int) -> dict:
    """A copy whose k ID/OOD pairs closest in score (ID just above OOD) are exchanged: AUROC drops by ~k/n^2."""
    s = ref64["score"].copy()
    order = np.argsort(s)
    swapped = 0
    for a, b in zip(order[:-1], order[1:]):
        if swapped == k:
            break
        if b < n_id <= a:  # OOD a just below ID b: exchange their scores
            s[a], s[b] = s[b], s[a]
            swapped += 1
    return {"score": s}


def test_drift_floor_without_float32_noise_is_half_a_point_plus_one_sample() -> None:
    from oodgate.evaluation.parity import drift_floor

    n = 400
    ref64 = _scores(n)
    exact32 = {"score": ref64["score"].copy()}
    ok = drift_floor(exact32, ref64, {"score": ref64["score"] + 1e-9}, n)
    assert ok["passed"] and ok["noise"] == 0.0 and np.isclose(ok["bound"], 0.005 + 1 / n)

    def lifted(k: int) -> dict:  # the k lowest OOD scores raised above every ID score: AUROC drops by ~k / n
        s = ref64["score"].copy()
        low = n + np.argsort(s[n:])[:k]
        s[low] = s.max() + 1.0
        return {"score": s}

    one = drift_floor(exact32, ref64, _swap_pairs(ref64, n, 1), n)  # one neighbouring pair: within the resolution
    assert one["passed"], one
    six = lifted(6)
    drop = _auroc(ref64["score"], n) - _auroc(six["score"], n)
    verdict = drift_floor(exact32, ref64, six, n)
    assert drop > 0.005 + 1 / n and verdict["worst"] >= drop - 1e-12 and not verdict["passed"]


def test_drift_floor_scales_with_pytorch_float32s_own_drift() -> None:
    from oodgate.evaluation.parity import FLOOR_FACTOR, drift_floor

    ref64, n = _scores(), 48
    noisy32 = _swap_pairs(ref64, n, 20)  # PyTorch float32 itself ~0.9 point off float64
    noise = abs(_auroc(noisy32["score"], n) - _auroc(ref64["score"], n))
    same_as_torch = drift_floor(noisy32, ref64, noisy32, n)
    assert same_as_torch["passed"] and same_as_torch["noise"] >= noise - 1e-12
    assert np.isclose(same_as_torch["bound"], 0.005 + FLOOR_FACTOR * same_as_torch["noise"] + 1 / n)
    broken = {"score": -ref64["score"]}  # a wrong graph: ranking inverted
    assert not drift_floor(noisy32, ref64, broken, n)["passed"]
    nan = {"score": np.where(np.arange(2 * n) == 3, np.nan, ref64["score"])}
    assert not drift_floor(noisy32, ref64, nan, n)["passed"]


def test_mos_label_ties_are_judged_on_its_label_values_not_the_logits() -> None:
    """MOS's label is the argmax of within-group probabilities: a tie there is noise even where the logits' top-2
    gap is large, and a flip away from such a tie still fails."""
    ref32, ref64 = _outputs(n=4, k=3)
    values64 = np.array([[0.5, 0.5 + 1e-9, 0.1], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    ref64["label_values"], ref32["label_values"] = values64, values64 + 1e-12
    ref64["label"] = values64.argmax(1)
    got = {**ref64, "label": ref64["label"].copy()}
    got["label"][0] = 0  # within noise of the tie in label_values (the logits are far from a tie there)
    assert not near_tie(ref64["logits"][:1], 1e-3).any()
    report = floor_report(got, ref32, ref64, threshold=0.0)
    assert report.label_mismatches == 0 and report.labels_near_tie == 1
    got["label"][1] = 2  # 0.9 vs 0.05: not a tie
    assert floor_report(got, ref32, ref64, threshold=0.0).label_mismatches == 1


def test_ash_is_judged_as_a_discontinuous_method() -> None:
    from oodgate.evaluation.parity import DISCONTINUOUS_METHODS

    assert {"ash_p", "ash_b", "ash_s", "adascale_a", "adascale_l"} <= DISCONTINUOUS_METHODS
    assert not {"msp", "energy", "react", "scale", "dice", "line", "mos"} & DISCONTINUOUS_METHODS
