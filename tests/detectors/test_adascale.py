"""AdaSCALE-A/L eager reference: an independent NumPy implementation of METHODS.md steps 1-8, the reduction to
SCALE at p_min = p_max, the seeded ECDF fit, the selection masks and parameter errors (no export here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import oodgate
from oodgate.detectors.adascale import smallest_n_mask_bisection, smallest_n_mask_sorted, top_mask
from oodgate.errors import OodgateError
from oodgate.models import split_classifier

# ---------------------------------------------------------------------------------------------------------
# A tiny model (3x8x8 input, D = 128 >= 100 features so that floor(D*k/100) >= 1 for k1 = 1 %)
# ---------------------------------------------------------------------------------------------------------

D_TINY = 128


class TinyNet(nn.Module):
    """conv-SiLU (smooth: no exactly-zero input gradients), strided conv-ReLU (h >= 0), global average pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, D_TINY, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(D_TINY, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@pytest.fixture(scope="module")
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def _tiny_inputs(n: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen) * scale + shift


@pytest.fixture(scope="module")
def tiny_fit() -> torch.Tensor:
    """40 'ID' inputs for the ECDF."""
    return _tiny_inputs(40, seed=1)


@pytest.fixture(scope="module")
def tiny_test() -> torch.Tensor:
    """New inputs, some far from the fit inputs so that F(Q') spans 0..1 and k(x) takes several values."""
    return torch.cat([_tiny_inputs(6, seed=2), _tiny_inputs(3, seed=3, scale=0.3), _tiny_inputs(3, seed=4, scale=2.5),
                      _tiny_inputs(2, seed=5, scale=1.0, shift=1.5)])


# ---------------------------------------------------------------------------------------------------------
# The independent implementation (written from METHODS.md; float64 NumPy after the forward/backward passes)
# ---------------------------------------------------------------------------------------------------------


def _gradient_of_predicted_logit(model: TinyNet, x: torch.Tensor) -> np.ndarray:
    """Step 2, one sample at a time: d z_yhat / d x with torch.autograd (yhat = argmax z)."""
    xi = x[None].clone().requires_grad_(True)
    z = model(xi)[0]
    (g,) = torch.autograd.grad(z[int(z.argmax())], xi)
    return g[0].numpy()


def _features(model: TinyNet, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.features(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None])[0].double().numpy()


def _top_indices(h: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries; asserts there is no tie at the k-th value (so no tie rule is needed)."""
    order = np.argsort(-h, kind="stable")
    assert h[order[k - 1]] > h[order[k]], "tie at the top-k boundary: choose another input"
    return order[:k]


def numpy_q_prime(model: TinyNet, x: torch.Tensor, *, o: float = 0.05, eps: float = 0.5, k1: float = 1.0,
                  k2: float = 5.0, lam: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-5 per sample: (Q' (N,), clean h (N, D))."""
    qs, hs = [], []
    for xi in x:
        g = _gradient_of_predicted_logit(model, xi)
        a = np.abs(g).ravel().astype(np.float64)
        n = math.floor(o * a.size)
        order = np.argsort(a, kind="stable")
        assert a[order[n - 1]] < a[order[n]], "tie at the n-th smallest |g|: choose another input"
        x2 = xi.numpy().ravel().astype(np.float64)
        x2[order[:n]] += eps * np.sign(g.ravel()[order[:n]])
        h = _features(model, xi.numpy())
        h2 = _features(model, x2.reshape(xi.shape))
        d = h.size
        t1 = _top_indices(h, math.floor(d * k1 / 100))
        t2 = _top_indices(h, math.floor(d * k2 / 100))
        q = np.abs(h[t1] - h2[t1]).sum()
        c_o = np.maximum(h2[t2], 0).sum()
        qs.append(lam * q + c_o)
        hs.append(h)
    return np.array(qs), np.array(hs)


def numpy_adascale(model: TinyNet, x: torch.Tensor, ecdf: np.ndarray, *, variant: str, p_min: float,
                   p_max: float) -> dict[str, np.ndarray]:
    """Steps 6-8 on top of numpy_q_prime: z*, score = logsumexp(z*), label, and the kept count k(x)."""
    q, h = numpy_q_prime(model, x)
    ecdf = np.sort(np.asarray(ecdf, np.float64))
    f = np.searchsorted(ecdf, q, side="right") / ecdf.size
    p = p_min + (1.0 - f) * (p_max - p_min)
    d = h.shape[1]
    k = (d - np.round(d * p / 100.0)).astype(int)  # np.round: half to even
    w = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    positive = np.maximum(h, 0.0)
    top_sums = np.array([np.sort(row)[::-1][:ki].sum() for row, ki in zip(positive, k)])
    r = positive.sum(axis=1) / top_sums
    z = (h * np.exp(r)[:, None]) @ w.T + b if variant == "a" else (r**2)[:, None] * (h @ w.T + b)
    m = z.max(axis=1, keepdims=True)
    score = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return {"z": z, "score": score, "label": z.argmax(axis=1), "k": k, "q": q, "f": f}


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)))


# ---------------------------------------------------------------------------------------------------------
# Steps 1-8 against the independent implementation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["adascale_a", "adascale_l"])
def test_reference_matches_independent_implementation(tiny: TinyNet, tiny_fit: torch.Tensor,
                                                      tiny_test: torch.Tensor, method: str) -> None:
    """ECDF, z*, score and label of det.reference equal the NumPy implementation to 1e-5 relative."""
    p_min, p_max = 60.0, 90.0  # a wide range: keep(p) goes from 51 to 13 of D = 128
    split = split_classifier(tiny)
    det = oodgate.detector(method, p_min=p_min, p_max=p_max).fit_model(split, [(tiny_fit.numpy(), None)],
                                                                           progress=False)
    q_fit, _ = numpy_q_prime(tiny, tiny_fit)
    assert det.ecdf_.shape == (40,)
    assert _rel_err(det.ecdf_, np.sort(q_fit)) <= 1e-5

    ref = numpy_adascale(tiny, tiny_test, np.sort(q_fit), variant=method[-1], p_min=p_min, p_max=p_max)
    # no test Q' within 1e-5 of an ECDF entry: the float32 and float64 counts cannot differ
    gaps = np.abs(ref["q"][:, None] - q_fit[None, :]) / np.abs(q_fit[None, :])
    assert gaps.min() > 1e-5
    # the adaptive part is exercised: F spans both ends and k(x) takes several values
    assert ref["f"].min() == 0.0 and ref["f"].max() == 1.0
    assert len(set(ref["k"].tolist())) >= 3

    z, score, label = (t.numpy() for t in det.reference(split, tiny_test))
    assert _rel_err(score, ref["score"]) <= 1e-5
    assert np.max(np.abs(z - ref["z"])) <= 1e-5 * np.abs(ref["z"]).max()
    np.testing.assert_array_equal(label, ref["label"])
    assert _rel_err(det.q_prime(split, tiny_test), ref["q"]) <= 1e-5
    np.testing.assert_allclose(det.score_model(split, [(tiny_test.numpy(), None)], progress=False), score, rtol=0,
                               atol=0)


def test_variants_differ(tiny: TinyNet, tiny_fit: torch.Tensor, tiny_test: torch.Tensor) -> None:
    """A and L are different formulas on the same Q' (and neither is the plain energy)."""
    split = split_classifier(tiny)
    scores = {}
    for method in ("adascale_a", "adascale_l"):
        det = oodgate.detector(method).fit_model(split, [(tiny_fit.numpy(), None)], progress=False)
        scores[method] = det.reference(split, tiny_test)[1].numpy()
    with torch.no_grad():
        energy = torch.logsumexp(tiny(tiny_test), dim=1).numpy()
    assert np.abs(scores["adascale_a"] - scores["adascale_l"]).min() > 1e-3
    assert np.abs(scores["adascale_l"] - energy).min() > 1e-3 and np.abs(scores["adascale_a"] - energy).min() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# p_min = p_max: exactly SCALE
# ---------------------------------------------------------------------------------------------------------


def _assert_reduces_to_scale(split: nn.Module, x_fit: np.ndarray, x_test: np.ndarray, p: float) -> None:
    det = oodgate.detector("adascale_a", p_min=p, p_max=p).fit_model(split, [(x_fit, None)], progress=False)
    ada = det.reference(split, torch.from_numpy(x_test))
    with torch.no_grad():
        h_test = split.features(torch.from_numpy(x_test)).numpy()
    scale = oodgate.detector("scale", p=p).fit(h_test, weight=split.head.weight.detach().numpy(),
                                                 bias=split.head.bias.detach().numpy())
    np.testing.assert_allclose(ada[1].numpy(), scale.score(h_test), rtol=1e-6, atol=0)
    # z* is SCALE's scaled logits W (h exp(s1/s2)) + b (AdaSCALE predicts argmax z*; SCALE predicts argmax W h + b)
    h64 = h_test.astype(np.float64)
    k = oodgate.detectors.keep_count(h64.shape[1], p)
    r = h64.sum(1) / np.sort(h64, axis=1)[:, ::-1][:, :k].sum(1)
    w, b = split.head.weight.detach().double().numpy(), split.head.bias.detach().double().numpy()
    z_scale = (h64 * np.exp(r)[:, None]) @ w.T + b
    assert np.abs(ada[0].numpy() - z_scale).max() <= 1e-5 * np.abs(z_scale).max()
    np.testing.assert_array_equal(ada[2].numpy(), z_scale.argmax(1))
    # and the ECDF no longer matters: a different ID set gives the same scores
    other = oodgate.detector("adascale_a", p_min=p, p_max=p).fit_model(split, [(x_test[:3], None)], progress=False)
    np.testing.assert_array_equal(other.reference(split, torch.from_numpy(x_test))[1].numpy(), ada[1].numpy())


@pytest.mark.parametrize("p", [70.0, 85.0])
def test_equal_percentiles_reduce_to_scale_on_digits(p: float) -> None:
    """On real digits with the built-in CNN (D = 64): AdaSCALE-A at [p, p] is SCALE(p)."""
    from oodgate.data import digits

    bundle = oodgate.load_model("digits-cnn")
    split = split_classifier(bundle.model)
    x_fit = bundle.preprocess(digits("calib").images[:48])
    x_test = bundle.preprocess(digits("test").images[:64])
    _assert_reduces_to_scale(split, x_fit, x_test, p)


def test_equal_percentiles_reduce_to_scale_on_tiny(tiny: TinyNet, tiny_fit: torch.Tensor,
                                                   tiny_test: torch.Tensor) -> None:
    _assert_reduces_to_scale(split_classifier(tiny), tiny_fit.numpy(), tiny_test.numpy(), 85.0)


# ---------------------------------------------------------------------------------------------------------
# The ECDF fit
# ---------------------------------------------------------------------------------------------------------


def _fit(split: nn.Module, x: torch.Tensor, batch: int = 16, **params: float) -> np.ndarray:
    det = oodgate.detector("adascale_a", **params)
    det.fit_model(split, [(x[i:i + batch].numpy(), None) for i in range(0, len(x), batch)], progress=False)
    return det.ecdf_


def test_ecdf_keeps_at_most_n_fit_seeded_sorted(tiny: TinyNet, tiny_fit: torch.Tensor) -> None:
    """n_fit caps the stored Q' values; the subsample is seeded, sorted and drawn from the ID values."""
    split = split_classifier(tiny)
    full = oodgate.detector("adascale_a").q_prime(split, tiny_fit).astype(np.float32)
    everything = _fit(split, tiny_fit)
    np.testing.assert_array_equal(everything, np.sort(full))  # N <= n_fit: all of them, in batches of 16
    a, a_again, b = (_fit(split, tiny_fit, n_fit=10, seed=s) for s in (0, 0, 1))
    for ecdf in (a, b):
        assert ecdf.shape == (10,) and ecdf.dtype == np.float32
        assert np.all(np.diff(ecdf) >= 0)
        assert np.isin(ecdf, full).all()
    np.testing.assert_array_equal(a, a_again)
    assert not np.array_equal(a, b)
    assert _fit(split, tiny_fit, n_fit=40, seed=0).shape == (40,)


def test_ecdf_state_roundtrip_scores_the_same(tiny: TinyNet, tiny_fit: torch.Tensor,
                                              tiny_test: torch.Tensor) -> None:
    """from_state (what load_calibration does) rebuilds the same head: identical scores."""
    split = split_classifier(tiny)
    det = oodgate.detector("adascale_l", p_min=60, p_max=90).fit_model(split, [(tiny_fit.numpy(), None)],
                                                                         progress=False)
    again = type(det).from_state(det.params, det.fitted_state(), det.fit_info())
    np.testing.assert_array_equal(again.reference(split, tiny_test)[1].numpy(),
                                  det.reference(split, tiny_test)[1].numpy())
    assert det.fit_info() == {"input_shape": [3, 8, 8]}


# ---------------------------------------------------------------------------------------------------------
# Selection masks
# ---------------------------------------------------------------------------------------------------------


def _tied_rows(seed: int) -> torch.Tensor:
    """Non-negative rows with many ties: a block of zeros, repeated values, coarse quantisation."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 3000, generator=gen).abs()
    a[:, :200] = 0.0
    a[:, 500:540] = a[:, 600:601]
    a[1] = torch.round(a[1] * 4) / 4  # ~10 distinct values
    a[2] = torch.randint(0, 3, (3000,), generator=gen).float()  # 3 distinct values
    a[3] = 0.7  # all equal
    a[4, torch.randperm(3000, generator=gen)[:700]] = 0.0  # zeros scattered
    return a[:, torch.randperm(3000, generator=gen)] if seed % 2 else a


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [1, 150, 200, 201, 539, 1000, 2999, 3000])
def test_bisection_equals_stable_sort_with_ties(seed: int, n: int) -> None:
    a = _tied_rows(seed)
    sorted_mask = smallest_n_mask_sorted(a, n)
    bisect_mask = smallest_n_mask_bisection(a, n)
    assert torch.equal(bisect_mask, sorted_mask)
    assert (bisect_mask.sum(dim=1) == n).all()
    assert set(bisect_mask.unique().tolist()) <= {0.0, 1.0}


def test_bisection_on_real_gradient_magnitudes(tiny: TinyNet, tiny_test: torch.Tensor) -> None:
    """|g| of the tiny model (3x8x8: n = 9) and of 224x224-sized rows: the same n smallest as the sort."""
    x = tiny_test.clone().requires_grad_(True)
    z = tiny(x)
    (g,) = torch.autograd.grad(z.gather(1, z.argmax(1, keepdim=True)).sum(), x)
    a = g.flatten(1).abs()
    assert torch.equal(smallest_n_mask_bisection(a, 9), smallest_n_mask_sorted(a, 9))
    big = torch.randn(2, 3 * 224 * 224, generator=torch.Generator().manual_seed(9)).abs() ** 3
    assert torch.equal(smallest_n_mask_bisection(big, 7526), smallest_n_mask_sorted(big, 7526))


def test_bisection_separates_zeros_from_tiny_values() -> None:
    a = torch.zeros(1, 1000)
    a[0, :300] = 1e-30  # tiny but non-zero: after the zeros in sorted order
    a[0, 300:600] = 0.0
    a[0, 600:] = torch.linspace(0.5, 2.0, 400)
    assert torch.equal(smallest_n_mask_bisection(a, 400), smallest_n_mask_sorted(a, 400))


def test_top_mask_breaks_ties_by_lowest_index() -> None:
    h = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.5],
                      [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
                      [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(top_mask(h, 3).numpy(), [[0, 1, 1, 1, 0, 0, 0],
                                                           [1, 1, 1, 0, 0, 0, 0],
                                                           [0, 0, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(top_mask(h, 4).numpy(), [[0, 1, 1, 1, 1, 0, 0],
                                                           [1, 1, 1, 1, 0, 0, 0],
                                                           [0, 0, 0, 1, 1, 1, 1]])
    a = _tied_rows(0)
    for k in (1, 37, 200, 2800):
        order = torch.sort(a, dim=1, descending=True, stable=True).indices[:, :k]
        expected = torch.zeros_like(a).scatter(1, order, 1.0)
        assert torch.equal(top_mask(a, k), expected)


# ---------------------------------------------------------------------------------------------------------
# Parameters and misuse
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["adascale_a", "adascale_l"])
@pytest.mark.parametrize(("params", "match"), [
    ({"p_min": 90, "p_max": 80}, r"p_min=90 > p_max=80"),
    ({"o": 0.0}, r"o=0\.0.*\(0, 1\)"),
    ({"o": 1.0}, r"o=1\.0.*\(0, 1\)"),
    ({"o": -0.1}, r"o=-0\.1.*\(0, 1\)"),
    ({"p_max": 100}, r"p_max=100.*\[0, 100\)"),
    ({"k1": 0}, r"k1=0.*\(0, 100\]"),
    ({"k2": 150}, r"k2=150.*\(0, 100\]"),
    ({"n_fit": 0}, r"n_fit=0.*at least 1"),
    ({"gamma": 1}, r"unknown parameter.*gamma"),
])
def test_bad_parameters(method: str, params: dict, match: str) -> None:
    with pytest.raises(OodgateError, match=match):
        oodgate.detector(method, **params)


def test_feature_api_points_to_the_image_api() -> None:
    """AdaSCALE perturbs inputs: fitting or scoring plain features is refused with what to call instead."""
    det = oodgate.detector("adascale_a")
    feats, w = np.ones((4, 16)), np.ones((3, 16))
    with pytest.raises(OodgateError, match=r"calibrate\(model, id_data, method=\.\.\.\).*fit_model\(split_model"):
        det.fit(feats, weight=w)
    with pytest.raises(OodgateError, match=r"scores images, not features.*score_model\(split, batches\)"):
        det.score(feats)
    with pytest.raises(OodgateError, match="no ID images"):
        det.fit_model(split_classifier(TinyNet()), [], progress=False)
    assert "adascale_a" in oodgate.available_detectors() and "adascale_l" in oodgate.available_detectors()


def test_unfitted_reference_points_to_fit_model() -> None:
    det = oodgate.detector("adascale_l")
    with pytest.raises(OodgateError) as info:
        det.reference(split_classifier(TinyNet()), torch.zeros(1, 3, 8, 8))
    assert "fit_model" in str(info.value) or "calibrate" in str(info.value), str(info.value)


def test_unfitted_graph_module_raises_not_fitted() -> None:
    with pytest.raises(OodgateError, match="not fitted"):
        oodgate.detector("adascale_a").graph_scorer(split_classifier(TinyNet()))
