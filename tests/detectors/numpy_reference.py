"""An independent float64 NumPy implementation of the detectors, written from /work/shared/METHODS.md only.

Deliberately naive (loops, full intermediate arrays, LINe's official C x C x D layout): it is the yardstick the
torch heads are compared against, so it shares no code with ``oodgate``.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

# -- notation ------------------------------------------------------------------------------------------------


def logsumexp(z: np.ndarray) -> np.ndarray:
    """E(z) = log sum_c exp(z_c) per row, computed stably."""
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def perc(a: np.ndarray, p: float) -> float:
    """numpy.percentile over all entries, linear interpolation."""
    return float(np.percentile(np.asarray(a, np.float64).ravel(), p))


def keep(d: int, p: float) -> int:
    """keep(p) = D - round(D p / 100), round half to even."""
    return int(d - np.round(d * p / 100.0))


def logits(h: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(h, np.float64) @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)


def topk_mask(h: np.ndarray, k: int) -> np.ndarray:
    """0/1 mask of the k largest entries of each row (ties broken by index; see ``topk_ambiguous``)."""
    h = np.asarray(h, np.float64)
    mask = np.zeros_like(h)
    for i, row in enumerate(h):
        order = np.argsort(-row, kind="stable")
        mask[i, order[:k]] = 1.0
    return mask


def topk_ambiguous(h: np.ndarray, k: int) -> np.ndarray:
    """Rows whose top-k set is not unique (the k-th and (k+1)-th largest entries are equal)."""
    s = -np.sort(-np.asarray(h, np.float64), axis=1)
    if k >= s.shape[1]:
        return np.zeros(s.shape[0], bool)
    return s[:, k - 1] == s[:, k]


# -- baselines -----------------------------------------------------------------------------------------------


def msp(h, w, b):
    z = logits(h, w, b)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


def energy(h, w, b):
    return logsumexp(logits(h, w, b))


def react_fit(h_id, p=90.0) -> float:
    """c = perc(all ID pooled activations, p)."""
    return perc(h_id, p)


def react(h, w, b, c):
    return logsumexp(logits(np.minimum(h, c), w, b))


def ash_p(h, w, b, p=90.0):
    h = np.asarray(h, np.float64)
    hp = h * topk_mask(h, keep(h.shape[1], p))
    return logsumexp(logits(hp, w, b))


def ash_s(h, w, b, p=90.0):
    h = np.asarray(h, np.float64)
    hp = h * topk_mask(h, keep(h.shape[1], p))
    s1 = h.sum(axis=1, keepdims=True)
    s2 = hp.sum(axis=1, keepdims=True)
    return logsumexp(logits(hp * np.exp(s1 / s2), w, b))


def ash_b(h, w, b, p=90.0):
    h = np.asarray(h, np.float64)
    k = keep(h.shape[1], p)
    s1 = h.sum(axis=1, keepdims=True)
    return logsumexp(logits(topk_mask(h, k) * (s1 / k), w, b))


def scale(h, w, b, p=85.0):
    h = np.asarray(h, np.float64)
    k = keep(h.shape[1], p)
    s1 = h.sum(axis=1, keepdims=True)
    s2 = np.sort(h, axis=1)[:, ::-1][:, :k].sum(axis=1, keepdims=True)
    return logsumexp(logits(h * np.exp(s1 / s2), w, b))


# -- DICE ----------------------------------------------------------------------------------------------------


def dice_fit(h_id, w, p=70.0):
    """(mu, V, tau, M): mu = mean of h; V = mu[None, :] * W; tau = perc(V, p) over all C*D; M = 1[V > tau]."""
    mu = np.asarray(h_id, np.float64).mean(axis=0)
    v = mu[None, :] * np.asarray(w, np.float64)
    tau = perc(v, p)
    return mu, v, tau, v > tau


def dice(h, w, b, mask, clip=None):
    h = np.asarray(h, np.float64)
    if clip is not None:
        h = np.minimum(h, clip)
    return logsumexp(logits(h, np.asarray(w, np.float64) * mask, b))


# -- LINe (naive, official C x C x D layout) -----------------------------------------------------------------


def line_fit_naive(h_id, labels, w, p_w=10.0, p_a=10.0):
    """Per class c: S_c = W_c * mu_c, m_c = 1[S_c > perc(S_c, p_a)], U(c) = |S_c| * W, M(c) = 1[U(c) > perc(U(c), p_w)].

    Returns dict with S (C, D), neuron_mask (C, D), thresholds (C,), weight_mask (C, C, D), masked_weight (C, C, D).
    """
    h_id = np.asarray(h_id, np.float64)
    w = np.asarray(w, np.float64)
    c_n, d = w.shape
    s = np.zeros((c_n, d))
    neuron_mask = np.zeros((c_n, d), bool)
    thresholds = np.zeros(c_n)
    weight_mask = np.zeros((c_n, c_n, d), bool)
    for c in range(c_n):
        mu_c = h_id[labels == c].mean(axis=0)
        s[c] = w[c] * mu_c
        neuron_mask[c] = s[c] > perc(s[c], p_a)
        u = np.abs(s[c])[None, :] * w
        thresholds[c] = perc(u, p_w)
        weight_mask[c] = u > thresholds[c]
    return {
        "S": s,
        "neuron_mask": neuron_mask,
        "thresholds": thresholds,
        "weight_mask": weight_mask,
        "masked_weight": w[None, :, :] * weight_mask,
    }


def line_naive(h, w, b, state, clip):
    """h_bar = min(h, c); l = argmax(W h_bar + b); z = (W * M(l)) (h_bar * m_l) + b; score E(z). One row at a time."""
    h = np.minimum(np.asarray(h, np.float64), clip)
    b = np.asarray(b, np.float64)
    out = np.zeros(h.shape[0])
    for i, row in enumerate(h):
        lab = int(np.argmax(np.asarray(w, np.float64) @ row + b))
        z = state["masked_weight"][lab] @ (row * state["neuron_mask"][lab]) + b
        out[i] = logsumexp(z[None, :])[0]
    return out


# -- data ----------------------------------------------------------------------------------------------------


def random_problem(c: int, d: int, n: int, seed: int, kind: str = "abs"):
    """Non-negative random features (|N(0,1)| or ReLU(N(0,1))), a random head W ~ N(0, 1/D), b ~ N(0, 0.1), labels."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((n, d))
    h = np.abs(raw) if kind == "abs" else np.maximum(raw, 0.0)
    w = rng.standard_normal((c, d)) / np.sqrt(d)
    b = 0.1 * rng.standard_normal(c)
    labels = rng.integers(0, c, n)
    labels[:c] = np.arange(c)  # every class present
    return h.astype(np.float32), w, b, labels


@functools.cache
def digits_problem():
    """Real features: hidden ReLU activations (64) of a small MLP trained on scikit-learn digits, and its output layer.

    Returns (h_fit, y_fit, h_test, y_test, W (10, 64), b (10,)); the MLP is trained on the fit part.
    """
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    n_fit = 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", random_state=0, max_iter=300)
        mlp.fit(x[:n_fit], y[:n_fit])
    h = np.maximum(x @ mlp.coefs_[0] + mlp.intercepts_[0], 0.0).astype(np.float32)  # what a backbone hands over
    w = mlp.coefs_[1].T.copy()
    b = mlp.intercepts_[1].copy()
    # sanity: our logits are the MLP's
    assert np.mean(np.argmax(logits(h, w, b), axis=1) == mlp.predict(x)) > 0.99
    return h[:n_fit], y[:n_fit], h[n_fit:], y[n_fit:], w, b
