"""AdaSCALE-A / AdaSCALE-L (Regmi et al.): adaptive SCALE driven by a gradient-based input perturbation.

Per sample (METHODS.md): g = d z_yhat / d x; perturb the n = floor(o*C*H*W) input elements with the smallest
|g| by eps*sign(g); forward again -> h'; Q' = lam * sum_{top 1% of h} |h - h'| + sum_{top 5% of h} relu(h');
p(x) = p_min + (1 - F(Q')) (p_max - p_min) with F the ID empirical CDF of Q'; r = sum relu(h) / sum of the
top keep(p(x)) entries of relu(h). AdaSCALE-A: z* = W (h e^r) + b; AdaSCALE-L: z* = r^2 (W h + b); score E(z*).

Two implementations of steps 1-4 share steps 5-8 (``AdaSCALEHead``):
- the eager reference: torch.autograd for g, a stable sort for the n smallest |g| (ties: lowest index first);
- the exported graph: the input gradient traced into plain operators (oodgate.detectors.gradient), and the n
  smallest |g| selected by bisection on counts (TensorRT's TopK is limited to k <= 3840), ties again by index.
Index sets on h (top 1 % / 5 %) are masks from TopK values with ties broken by lowest index (``top_mask``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import OodgateError
from ..progress import progress_bar
from .registry import register
from .base import Detector, keep_count
from .ops import energy

#: bisection steps for the n-th smallest |g| (float32: enough to isolate one value in all but degenerate cases)
BISECTION_STEPS = 64


def top_mask(h: torch.Tensor, k: int) -> torch.Tensor:
    """0/1 mask of the k largest entries per row, ties by lowest index.

    Built from TopK's values only (which do not depend on tie order) plus a cumulative count of the tied
    entries, so PyTorch and ONNX Runtime select the same entries.
    """
    kth = torch.topk(h, k, dim=1, largest=True, sorted=True).values[:, k - 1:k]
    above = (h > kth).to(h.dtype)
    tied = (h == kth).to(h.dtype)
    room = float(k) - above.sum(dim=1, keepdim=True)
    return above + tied * (torch.cumsum(tied, dim=1) <= room).to(h.dtype)


def smallest_n_mask_sorted(a: torch.Tensor, n: int) -> torch.Tensor:
    """0/1 mask (same shape, float) of the n smallest entries per row of (N, M) ``a``; ties by lowest index."""
    idx = torch.sort(a, dim=1, stable=True).indices[:, :n]
    return torch.zeros_like(a).scatter(1, idx, torch.ones_like(idx, dtype=a.dtype))


def smallest_n_mask_bisection(a: torch.Tensor, n: int, steps: int = BISECTION_STEPS) -> torch.Tensor:
    """The same mask without sorting or large TopK: bisection on counts, then ties by lowest index.

    After the search count(a <= lo) < n <= count(a <= hi); all of a <= lo is selected, plus the first
    (by index) entries of (lo, hi] until exactly n are selected.
    """
    target = float(n)
    # exact zeros (dead units) are common: settle "the boundary is 0" before bisecting, so that zeros are never
    # confused with tiny positive values that 64 halvings of [0, max] cannot separate from them
    zeros_enough = (a <= 0).to(a.dtype).sum(dim=1, keepdim=True) >= target
    lo = torch.where(zeros_enough, torch.full_like(a[:, :1], -1.0), torch.zeros_like(a[:, :1]))
    hi = torch.where(zeros_enough, torch.zeros_like(a[:, :1]), a.max(dim=1, keepdim=True).values)
    for _ in range(steps):
        mid = (lo + hi) * 0.5
        enough = (a <= mid).to(a.dtype).sum(dim=1, keepdim=True) >= target
        hi = torch.where(enough, mid, hi)
        lo = torch.where(enough, lo, mid)
    below = (a <= lo).to(a.dtype)
    band = ((a > lo) & (a <= hi)).to(a.dtype)
    rank = torch.cumsum(band, dim=1)
    room = target - below.sum(dim=1, keepdim=True)
    return below + band * (rank <= room).to(a.dtype)


class AdaSCALEHead(nn.Module):
    """Steps 5-8: (h, h', ...) -> (z*, score, label); buffers: W, b and the sorted ID values of Q'."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, ecdf: np.ndarray, *, variant: str, p_min: float,
                 p_max: float, k1: float, k2: float, lam: float) -> None:
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))
        self.register_buffer("ecdf", torch.as_tensor(np.sort(ecdf), dtype=torch.float32))
        d = int(weight.shape[1])
        self.variant, self.p_min, self.p_max, self.lam = variant, float(p_min), float(p_max), float(lam)
        self.d = d
        self.k1 = max(1, math.floor(d * k1 / 100))
        self.k2 = max(1, math.floor(d * k2 / 100))
        self.k_max = keep_count(d, p_min)
        if self.k_max < 1:
            raise OodgateError(f"p_min={p_min} keeps no entry of {d} features: lower p_min")

    def q_prime(self, h: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        """Q' = lam * sum_{T1} |h - h'| + sum_{T2} relu(h'), T1/T2 the top k1/k2 indices of the clean h."""
        t1, t2 = top_mask(h, self.k1), top_mask(h, self.k2)
        q = (t1 * (h - h2).abs()).sum(dim=1)
        c_o = (t2 * torch.relu(h2)).sum(dim=1)
        return self.lam * q + c_o

    def forward(self, h: torch.Tensor, h2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.q_prime(h, h2)
        cdf = (self.ecdf[None, :] <= q[:, None]).to(h.dtype).sum(dim=1) / float(self.ecdf.shape[0])
        p = self.p_min + (1.0 - cdf) * (self.p_max - self.p_min)
        k = self.d - torch.round(self.d * p / 100.0)  # keep(p(x)), round half to even
        positive = torch.relu(h)
        top = torch.topk(positive, self.k_max, dim=1, largest=True, sorted=True).values
        ranks = torch.arange(self.k_max, device=h.device, dtype=h.dtype)
        top_sum = (top * (ranks[None, :] < k[:, None]).to(h.dtype)).sum(dim=1)
        r = positive.sum(dim=1) / torch.clamp(top_sum, min=1e-12)
        if self.variant == "a":
            z = torch.nn.functional.linear(h * torch.exp(r)[:, None], self.weight, self.bias)
        else:
            z = (r * r)[:, None] * torch.nn.functional.linear(h, self.weight, self.bias)
        return z, energy(z), torch.argmax(z, dim=1)


def _n_selected(input_shape: tuple[int, ...], o: float) -> int:
    return int(math.floor(o * math.prod(input_shape)))


class AdaSCALEScorer(nn.Module):
    """The exported x -> (z*, score, label): traced gradient branch, bisection selection, second forward, head."""

    def __init__(self, gradient: nn.Module, head: AdaSCALEHead, n_select: int, eps: float) -> None:
        super().__init__()
        self.gradient = gradient
        self.head = head
        self.n_select = int(n_select)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, h, g = self.gradient(x)
        flat = g.flatten(1)
        mask = smallest_n_mask_bisection(flat.abs(), self.n_select).reshape(g.shape)
        x2 = x + self.eps * torch.sign(g) * mask
        h2 = self.gradient.model.backbone(x2)
        return self.head(h, h2)


class _LogitsAndFeatures(nn.Module):
    """A SplitModel as x -> (logits, h), so the traced gradient branch also returns the clean features."""

    def __init__(self, split: nn.Module) -> None:
        super().__init__()
        self.backbone = split.backbone
        self.head = split.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return self.head(h), h


class _AdaSCALE(Detector):
    assumes_nonnegative_features = True
    variant = "a"
    defaults = {"p_min": 80.0, "p_max": 85.0, "o": 0.05, "eps": 0.5, "k1": 1.0, "k2": 5.0, "lam": 10.0,
                "n_fit": 5000, "seed": 0}
    input_kind = "images"
    fitted = ("weight_", "bias_", "ecdf_")
    fitted_info = ("input_shape_",)

    def validate_params(self) -> None:
        super().validate_params()
        prm = self.params
        if prm["p_min"] > prm["p_max"]:
            raise OodgateError(f"p_min={prm['p_min']} > p_max={prm['p_max']}: need p_min <= p_max")
        if not 0 < prm["o"] < 1:
            raise OodgateError(f"o={prm['o']!r}: the perturbed share of input elements must be in (0, 1)")
        for key in ("k1", "k2"):
            if not 0 < prm[key] <= 100:
                raise OodgateError(f"{key}={prm[key]!r} must be a percentage in (0, 100]")
        if int(prm["n_fit"]) < 1:
            raise OodgateError(f"n_fit={prm['n_fit']!r} must be at least 1")

    def head(self) -> nn.Module:
        if not self.is_fitted:
            from ..errors import NotFittedError

            raise NotFittedError(f"detector '{self.name}' is not fitted: use oodgate.calibrate(model, id_data, "
                                 f"method='{self.name}') or .fit_model(split_model, batches)")
        return self.head_

    def _build_head(self) -> AdaSCALEHead:
        prm = self.params
        return AdaSCALEHead(self.weight_, self.bias_, self.ecdf_, variant=self.variant, p_min=prm["p_min"],
                            p_max=prm["p_max"], k1=prm["k1"], k2=prm["k2"], lam=prm["lam"])

    # -- eager reference ------------------------------------------------------------------------------------
    def perturb(self, split: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean h, perturbed input x') with torch.autograd and a stable sort (the reference)."""
        n = _n_selected(tuple(x.shape[1:]), self.params["o"])
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            h = split.backbone(x)
            z = split.head(h)
            picked = z.gather(1, z.detach().argmax(dim=1, keepdim=True)).sum()
            (g,) = torch.autograd.grad(picked, x)
        mask = smallest_n_mask_sorted(g.flatten(1).abs(), n).reshape(g.shape)
        return h.detach(), (x + self.params["eps"] * torch.sign(g) * mask).detach()

    def _reference_parts(self, split: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        split.eval()
        h, x2 = self.perturb(split, x)
        with torch.no_grad():
            h2 = split.backbone(x2)
        return h, h2

    def q_prime(self, split: nn.Module, x: torch.Tensor) -> np.ndarray:
        """Q' per sample (eager)."""
        h, h2 = self._reference_parts(split, x)
        with torch.no_grad():
            return self._probe_head(split).q_prime(h, h2).numpy()

    def _probe_head(self, split: nn.Module) -> AdaSCALEHead:
        w = split.head.weight.detach().numpy()
        b = split.head.bias.detach().numpy()
        prm = self.params
        return AdaSCALEHead(w, b, np.zeros(1), variant=self.variant, p_min=prm["p_min"], p_max=prm["p_max"],
                            k1=prm["k1"], k2=prm["k2"], lam=prm["lam"])

    def fit_model(self, split: nn.Module, batches: Iterable[tuple[np.ndarray, Any]], *, progress: bool | None = None,
                  n: int | None = None, class_names: Any = None) -> "_AdaSCALE":
        """Fit the ID empirical CDF of Q' (up to n_fit samples, seeded subsample) from image batches."""
        values, shape = [], None
        bar = progress_bar(n, f"fit {self.name}", progress)
        for x, _ in batches:
            xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
            shape = tuple(xt.shape[1:])
            values.append(self.q_prime(split, xt))
            bar.update(len(xt))
        bar.close()
        if not values:
            raise OodgateError(f"no ID images given to fit '{self.name}'")
        q = np.concatenate(values).astype(np.float64)
        if not np.all(np.isfinite(q)):
            raise OodgateError(f"'{self.name}': Q' is NaN/inf on some ID images; check the model and inputs")
        limit = int(self.params["n_fit"])
        if q.size > limit:
            rng = np.random.default_rng(int(self.params["seed"]))
            q = q[rng.choice(q.size, size=limit, replace=False)]
        self.weight_ = split.head.weight.detach().numpy().astype(np.float64)
        self.bias_ = split.head.bias.detach().numpy().astype(np.float64)
        self.ecdf_ = np.sort(q.astype(np.float32))
        self.input_shape_ = list(shape)
        self.head_ = self._build_head().eval()
        return self

    def reference(self, split: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eager (z*, score, label) for preprocessed inputs x — the PyTorch reference of the exported graph."""
        h, h2 = self._reference_parts(split, x)
        with torch.no_grad():
            return self.head()(h, h2)

    def score_model(self, split: nn.Module, batches: Iterable[tuple[np.ndarray, Any]], *,
                    progress: bool | None = None, n: int | None = None) -> np.ndarray:
        """Eager scores (higher = ID) for image batches."""
        out = []
        bar = progress_bar(n, f"score {self.name}", progress)
        for x, _ in batches:
            out.append(self.reference(split, torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)))[1].numpy())
            bar.update(len(x))
        bar.close()
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    # -- export ---------------------------------------------------------------------------------------------
    def graph_scorer(self, split: nn.Module) -> AdaSCALEScorer:
        """The exportable x -> (z*, score, label) module (gradient branch traced into plain operators)."""
        from .gradient import trace_logits_and_input_gradient

        head = self.head()
        shape = tuple(int(s) for s in self.input_shape_)
        example = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0))
        gradient = trace_logits_and_input_gradient(_LogitsAndFeatures(split).eval(), example)
        return AdaSCALEScorer(gradient, head, _n_selected(shape, self.params["o"]),
                              self.params["eps"]).eval()


@register
class AdaSCALEA(_AdaSCALE):
    """AdaSCALE-A: z* = W (h e^r) + b with the adaptive percentile in [p_min, p_max]."""

    name = "adascale_a"
    variant = "a"


@register
class AdaSCALEL(_AdaSCALE):
    """AdaSCALE-L: z* = r^2 (W h + b) with the adaptive percentile in [p_min, p_max]."""

    name = "adascale_l"
    variant = "l"
