"""LINe (Ahn et al.): important-neuron and weight masks of the predicted class, with clipping, then energy.

Closed form of the Shapley approximation for a linear head: S_c = W_c * mu_c (mu_c: class mean of unclipped h),
so no backward pass is needed. Masks of the predicted class are built on the fly from S (C x D) and the
per-class thresholds t (C), never as C x C x D weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .base import Detector, DetectorHead
from .clip import parse_clip
from .ops import energy


def fit_line_state(class_means: np.ndarray, weight: np.ndarray, p_w: float, p_a: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, neuron_mask, t): S_c = W_c*mu_c; m_c = 1[S_c > perc(S_c, p_a)]; t_c = perc(|S_c|[None,:]*W, p_w)."""
    s = weight * class_means
    neuron_mask = s > np.percentile(s, p_a, axis=1, keepdims=True)
    abs_s = np.abs(s)

    def threshold(c: int) -> float:
        return float(np.percentile(abs_s[c][None, :] * weight, p_w))

    # C percentiles over C*D products each (O(C^2 D): about half a minute at 1000 x 2048 on one core); NumPy's
    # multiply and partition release the GIL, so a thread per core divides that time with identical results
    workers = min(os.cpu_count() or 1, 8, weight.shape[0])
    if workers > 1 and weight.size >= 1 << 16:
        with ThreadPoolExecutor(workers) as pool:
            thresholds = np.array(list(pool.map(threshold, range(weight.shape[0]))))
    else:
        thresholds = np.array([threshold(c) for c in range(weight.shape[0])])
    return s, neuron_mask, thresholds


def _dropped_counts(weight: np.ndarray, contribution: np.ndarray, thresholds: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(ws, k): each column of W sorted ascending (float64, (C, D)) and k[l, d] = the number of weights of column d
    that M(l) drops (|S_ld| W_cd <= t_l), exactly as the float64 product decides.

    For a fixed (l, d) the kept weights of column d are those with |S_ld| W_cd > t_l, a product monotone in W_cd,
    so the dropped ones are the column's k[l, d] smallest: a binary search on the sorted column, made exact on the
    product at the boundary. O(C D log C) work.
    """
    w = np.asarray(weight, np.float64)
    a = np.abs(np.asarray(contribution, np.float64))
    t = np.asarray(thresholds, np.float64)
    c_n, d_n = w.shape
    ws = np.sort(w, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = t[:, None] / a  # (C classes, D): kept <=> W > t_l / |S_ld| up to rounding
    k = np.empty((c_n, d_n), np.int64)
    for d in range(d_n):
        k[:, d] = np.searchsorted(ws[:, d], guess[:, d], side="right")
    zero = a == 0  # product 0: all kept if t_l < 0, all dropped otherwise
    k[zero] = np.where(t[:, None] >= 0, c_n, 0).repeat(d_n, axis=1)[zero]
    for _ in range(c_n):  # the division is off by an ulp at most: a step or two moves k onto the product's edge
        at = np.take_along_axis(ws, np.minimum(k, c_n - 1), axis=0)
        below = np.take_along_axis(ws, np.maximum(k - 1, 0), axis=0)
        up = ~zero & (k < c_n) & (a * at <= t[:, None])
        down = ~zero & (k > 0) & (a * below > t[:, None])
        if not (up.any() or down.any()):
            break
        k += up.astype(np.int64) - down.astype(np.int64)
    return ws, k


def line_weight_cuts(weight: np.ndarray, contribution: np.ndarray, neuron_mask: np.ndarray,
                     thresholds: np.ndarray) -> np.ndarray:
    """cut (C, D) float32 such that W32[c, d] > cut[l, d]  <=>  M(l)[c, d] and m_l[d] (LINe's two masks of class l).

    cut[l, d] = the largest weight of column d that M(l) drops (in float32, ``_dropped_counts``). A neuron outside
    m_l drops its whole column (cut = +max); a column with nothing dropped has -max.
    """
    ws, k = _dropped_counts(weight, contribution, thresholds)
    big = np.finfo(np.float32).max
    ws32 = ws.astype(np.float32)
    cut = np.where(k > 0, np.take_along_axis(ws32, np.maximum(k - 1, 0), axis=0), -big).astype(np.float32)
    cut[~np.asarray(neuron_mask, bool)] = big
    return cut


def line_weight_scales(weight: np.ndarray, contribution: np.ndarray, neuron_mask: np.ndarray,
                       thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(scale, factor, alpha): LINe's two masks of class l as one fixed threshold on a per-column rescaling of W,

        M(l)[c, d] and m_l[d]  <=>  W32[c, d] * scale[l, d] > alpha  (float32 product)  and  factor[l, d] != 0,

    so that (W * M(l)) (h' * m_l) = ThresholdedRelu(W * scale_l, alpha) (h' * factor_l) with factor = 1 / scale
    where m_l keeps the neuron and 0 where it drops it. scale > 0, alpha = -1 when every dropped weight of a kept
    neuron is negative (so no weight >= 0 is ever dropped: LINe's usual case, p_w small), +1 when every kept one is
    positive (p_w large). Every decision is checked on the float32 products; None when one cannot be represented
    (then ``line_weight_cuts``' general form is used).
    """
    ws, k = _dropped_counts(weight, contribution, thresholds)
    c_n = ws.shape[0]
    ws32 = ws.astype(np.float32)
    active = np.asarray(neuron_mask, bool) & (k < c_n)  # k == C: the whole column dropped, as by the neuron mask
    some = active & (k > 0)
    low = np.take_along_axis(ws32, np.maximum(k - 1, 0), axis=0).astype(np.float64)  # largest dropped weight
    high = np.take_along_axis(ws32, np.minimum(k, c_n - 1), axis=0).astype(np.float64)  # smallest kept weight
    first = np.broadcast_to(ws32[0].astype(np.float64), k.shape)  # the column's smallest weight
    last = np.broadcast_to(ws32[-1].astype(np.float64), k.shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if np.all(low[some] < 0) and np.all(low[some] < high[some]):
            alpha = -1.0  # a cut between the largest dropped weight and min(smallest kept, 0): kept <=> W * s > -1
            cut = np.where(k > 0, 0.5 * (low + np.minimum(high, 0.0)), np.where(first < 0, 2.0 * first, -1.0))
        elif np.all(high[active] > 0) and np.all(low[some] < high[some]) and np.all(first[active & (k == 0)] > 0):
            alpha = 1.0  # a cut between max(largest dropped, 0) and the smallest kept weight
            cut = np.where(k > 0, 0.5 * (np.maximum(low, 0.0) + high), 0.5 * first)
        else:
            return None
        scale = np.where(active, alpha / cut, 1.0).astype(np.float32)
    a32 = np.float32(alpha)
    for _ in range(8):  # the midpoint's float32 rounding can land a product on the wrong side: nudge by an ulp
        with np.errstate(over="ignore", invalid="ignore"):
            drop_bad = some & ~(low.astype(np.float32) * scale <= a32)
            keep_bad = active & ~(high.astype(np.float32) * scale > a32) & (k < c_n)
        if not (drop_bad.any() or keep_bad.any()):
            break
        # alpha -1: a dropped product must fall (a larger scale), a kept one rise (a smaller scale); +1 the reverse
        up, down = (drop_bad, keep_bad) if alpha < 0 else (keep_bad, drop_bad)
        scale = np.where(up & ~down, np.nextafter(scale, np.float32(np.inf)), scale)
        scale = np.where(down & ~up, np.nextafter(scale, np.float32(0)), scale)
    else:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(scale) & (scale > 0) & np.isfinite(first.astype(np.float32) * scale) & np.isfinite(
            last.astype(np.float32) * scale)
    if not finite.all():
        return None
    factor = np.where(active, 1.0 / scale.astype(np.float64), 0.0).astype(np.float32)
    return scale, factor, alpha


def _one_node(op: str, function: type[torch.autograd.Function], inputs: tuple[torch.Tensor, ...],
              attrs: dict[str, float]) -> torch.Tensor:
    """``function``'s result (its forward: plain torch ops), exported as the one ONNX node ``op`` by either exporter:
    TorchScript through ``function.symbolic``, dynamo through torch.onnx.ops.symbolic (output of inputs[0]'s shape)."""
    if torch.jit.is_tracing():  # the TorchScript exporter
        return function.apply(*inputs, *attrs.values())
    if torch.onnx.is_in_onnx_export():  # the dynamo exporter
        return torch.onnx.ops.symbolic(op, inputs, attrs, dtype=inputs[0].dtype, shape=inputs[0].shape)
    return function.forward(None, *inputs, *attrs.values())


class _ThresholdedRelu(torch.autograd.Function):
    """x where x > alpha, else 0, with its ONNX translation for the TorchScript exporter."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # noqa: ANN001
        return torch.where(x > alpha, x, torch.zeros((), dtype=x.dtype))

    @staticmethod
    def symbolic(g, x, alpha: float):  # noqa: ANN001, ANN205
        return g.op("ThresholdedRelu", x, alpha_f=float(alpha))


def thresholded_relu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """x where x > alpha, else 0. Exported as ONNX ThresholdedRelu (by either exporter): one kernel, where torch.where
    would become Greater + Where (ONNX Runtime's broadcasting Where is an order of magnitude slower than a Mul)."""
    return _one_node("ThresholdedRelu", _ThresholdedRelu, (x,), {"alpha": float(alpha)})


class _Sum(torch.autograd.Function):
    """The elementwise sum of tensors of one shape, with its ONNX translation (one Sum node) for the TorchScript
    exporter."""

    @staticmethod
    def forward(ctx, *parts: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return sum(parts[1:], parts[0])

    @staticmethod
    def symbolic(g, *parts):  # noqa: ANN001, ANN205
        return g.op("Sum", *parts)


def sum_of(parts: list[torch.Tensor]) -> torch.Tensor:
    """The elementwise sum of same-shaped tensors. Exported as one ONNX Sum (by either exporter), where a chain of Adds
    would cost one node each (~5 us apiece under ONNX Runtime's profiler at LINe's (N, 1, C) partial products)."""
    return parts[0] if len(parts) == 1 else _one_node("Sum", _Sum, tuple(parts), {})


class LINeHead(DetectorHead):
    """h' = min(h, c); l = argmax(W h' + b); score = E((W * M(l)) (h' * m_l) + b).

    The logits of h and h' come from one matrix product (W read once). Both masks of class l are a fixed threshold
    on W rescaled per column (``line_weight_scales``): one Mul, one ThresholdedRelu and one batched MatMul with
    h' * factor_l per block, so the (N, C, D) masked weights are never held whole and no comparison, cast or Where is
    spent on them. Where that form cannot represent the masks, the general one: W * 1[W > cut_l]
    (``line_weight_cuts``).

    Where W spans more than one block, the blocks are ranges of features of W transposed (D x C): the per-column
    scale of each sample is then one number per row of the block, and the blocks' products (N, 1, C) are added by one
    Sum. Measured during development against blocks of classes (heads of ``bench/heads.py``'s shapes, C = 1000,
    D = 1280 and 2048, ONNX Runtime, 1 thread): the whole head 0.88-0.91x the time at batch 1 and 32; with a chain
    of Adds instead of the Sum, slower than blocks of classes at batch 1.
    """

    #: entries (classes x features) per sample of one block. Measured during development on the masked pass alone (ONNX
    #: Runtime, 1 thread, C = 1000, D = 1280 and 2048, blocks of 2^15 to 2^17): a batch of 1 wants few, large blocks
    #: (per-node overhead; 2^17 took 0.92x the time of 2^16 at D = 1280, 0.69x at D = 2048), a batch of 32 small ones
    #: (its blocks stay in cache; 2^16 the fastest, 2^17 1.4x its time). It also bounds the head's memory: ~8 bytes x
    #: N x this at a time. A head of at most this many entries is one block of all classes (at C = 10, D = 64
    #: measured faster than the transposed form)
    BLOCK = 1 << 16

    def __init__(self, weight: np.ndarray, bias: np.ndarray, clip: float, *,
                 scales: tuple[np.ndarray, np.ndarray, float] | None = None, cuts: np.ndarray | None = None) -> None:
        super().__init__(weight, bias)
        self.shape = (int(weight.shape[0]), int(weight.shape[1]))  # Python ints: nothing for a tracer to record
        if (scales is None) == (cuts is None):
            raise ValueError("LINeHead needs either scales or cuts")
        self.alpha = None if scales is None else float(scales[2])
        if scales is not None:
            self.register_buffer("weight_scales", torch.as_tensor(scales[0], dtype=torch.float32))
            self.register_buffer("input_factors", torch.as_tensor(scales[1], dtype=torch.float32))
        else:
            self.register_buffer("weight_cuts", torch.as_tensor(cuts, dtype=torch.float32))
        self.register_buffer("clip", torch.tensor(float(clip), dtype=torch.float32))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hc = torch.minimum(h, self.clip)
        both = torch.nn.functional.linear(torch.cat([h, hc]), self.weight, self.bias)
        z, zc = both[:h.shape[0]], both[h.shape[0]:]
        return z, self.masked_energy(hc, torch.argmax(zc, dim=1)), torch.argmax(z, dim=1)

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        hc = torch.minimum(h, self.clip)
        return self.masked_energy(hc, torch.argmax(self.logits(hc), dim=1))

    def masked_energy(self, hc: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """E((W * M(l)) (h' * m_l) + b) for clipped features h' and their classes l."""
        c, d = self.shape
        if self.alpha is not None:  # the class's per-column scale, or its per-column cut
            per_column, x = self.weight_scales.index_select(0, lab), hc * self.input_factors.index_select(0, lab)
        else:
            per_column, x = self.weight_cuts.index_select(0, lab), hc

        def masked(w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            if self.alpha is not None:
                return thresholded_relu(w * p, self.alpha)
            # Cast + Mul rather than Where: ONNX Runtime's broadcasting Where is far slower on these tensors
            return (w > p).to(hc.dtype) * w

        if c * d <= self.BLOCK:  # one block of all classes: (N, C, D) @ (N, D, 1)
            z = torch.matmul(masked(self.weight, per_column[:, None, :]), x[:, :, None])[:, :, 0]
        else:  # blocks of features of W^T: sum over blocks of (N, 1, f) @ (N, f, C)
            wt, p, x = self.weight.t(), per_column[:, :, None], x[:, None, :]
            cols = max(1, self.BLOCK // c)
            z = sum_of([torch.matmul(x[:, :, i:i + cols], masked(wt[i:i + cols], p[:, i:i + cols]))
                        for i in range(0, d, cols)])[:, 0, :]
        return energy(z + self.bias)


class LINe(Detector):
    """LINe with p_w = p_a = 10 (ImageNet defaults) and clip 'p90' (90th percentile of ID activations).

    ``clip``: a number (absolute, e.g. 0.8 as tuned for ImageNet ResNet-50) or 'pNN'. Fitting uses the labels
    (the ground-truth classes); without labels the classifier's predictions are used. A class with no fit
    sample uses the mean over all samples (counted in ``fit_info()['empty_classes']``).
    """
    assumes_nonnegative_features = True

    name = "line"
    defaults = {"p_w": 10.0, "p_a": 10.0, "clip": "p90"}
    fitted = ("weight_", "bias_", "class_means_", "contribution_", "neuron_mask_", "thresholds_")
    fitted_info = ("clip_", "empty_classes_", "label_source_")

    def validate_params(self) -> None:
        super().validate_params()
        parse_clip(self.params["clip"], allow_none=False)

    @property
    def score_batch_size(self) -> int:
        c, d = self.weight_.shape
        return max(1, (1 << 25) // (c * d))

    def _fit(self, batches: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> None:
        clip = parse_clip(self.params["clip"], allow_none=False)
        c, d = self.weight_.shape
        sums, counts, total, values = np.zeros((c, d)), np.zeros(c), np.zeros(d), []
        self.label_source_ = "labels"
        for f, lab in batches:
            if lab is None:
                lab = np.argmax(f @ self.weight_.T + self.bias_, axis=1)
                self.label_source_ = "predictions"
            np.add.at(sums, lab, f)
            counts += np.bincount(lab, minlength=c)
            total += f.sum(axis=0)
            if clip[0] == "percentile":
                values.append(f.astype(np.float32).ravel())
        means = sums / np.maximum(counts, 1)[:, None]
        empty = counts == 0
        means[empty] = total / counts.sum()
        self.empty_classes_ = int(empty.sum())
        self.class_means_ = means
        self.contribution_, self.neuron_mask_, self.thresholds_ = fit_line_state(
            means, self.weight_, self.params["p_w"], self.params["p_a"])
        self.clip_ = clip[1] if clip[0] == "absolute" else float(
            np.percentile(np.concatenate(values).astype(np.float64), clip[1]))

    def _build_head(self) -> DetectorHead:
        state = (self.weight_, self.contribution_, self.neuron_mask_, self.thresholds_)
        scales = line_weight_scales(*state)
        if scales is not None:
            return LINeHead(self.weight_, self.bias_, self.clip_, scales=scales)
        return LINeHead(self.weight_, self.bias_, self.clip_, cuts=line_weight_cuts(*state))
