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


def line_weight_cuts(weight: np.ndarray, contribution: np.ndarray, neuron_mask: np.ndarray,
                     thresholds: np.ndarray) -> np.ndarray:
    """cut (C, D) float32 such that W32[c, d] > cut[l, d]  <=>  M(l)[c, d] and m_l[d] (LINe's two masks of class l).

    For a fixed (l, d) the kept weights of column d are those with |S_ld| W_cd > t_l (a float64 product that is
    monotone in W_cd), so they are the column's largest ones: cut[l, d] = the largest dropped weight of column d
    (in float32), found per column by a binary search on the sorted column and made exact on the product at the
    boundary. A neuron outside m_l drops its whole column (cut = +max); a column with nothing dropped has -max.
    Same decisions as the float64 product, O(C D log C) work, and the graph compares W with one gathered row.
    """
    w = np.asarray(weight, np.float64)
    a = np.abs(np.asarray(contribution, np.float64))
    t = np.asarray(thresholds, np.float64)
    c_n, d_n = w.shape
    big = np.finfo(np.float32).max
    order = np.argsort(w, axis=0, kind="stable")
    ws = np.take_along_axis(w, order, axis=0)  # (C, D), each column ascending
    ws32 = ws.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        guess = t[:, None] / a  # (C classes, D): kept <=> W > t_l / |S_ld| up to rounding
    k = np.empty((c_n, d_n), np.int64)  # k[l, d] = number of dropped weights of column d for class l
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
    cut = np.where(k > 0, np.take_along_axis(ws32, np.maximum(k - 1, 0), axis=0), -big).astype(np.float32)
    cut[~np.asarray(neuron_mask, bool)] = big
    return cut


class LINeHead(DetectorHead):
    """h' = min(h, c); l = argmax(W h' + b); score = E((W * M(l)) (h' * m_l) + b).

    Both masks of class l are one gathered row of cuts: W * M(l) * m_l = W * 1[W > cut_l] (``line_weight_cuts``).
    The (N, C, D) comparison is done in blocks of classes so that a large batch never holds it whole.
    """

    #: entries (classes x features) of one comparison block; bounds the head's memory at ~5 bytes x N x this
    BLOCK = 1 << 18

    def __init__(self, weight: np.ndarray, bias: np.ndarray, cuts: np.ndarray, clip: float) -> None:
        super().__init__(weight, bias)
        self.register_buffer("weight_cuts", torch.as_tensor(cuts, dtype=torch.float32))
        self.register_buffer("clip", torch.tensor(float(clip), dtype=torch.float32))

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        hc = torch.minimum(h, self.clip)
        cut = self.weight_cuts.index_select(0, torch.argmax(self.logits(hc), dim=1))[:, None, :]  # (N, 1, D)
        rows = max(1, self.BLOCK // self.weight.shape[1])
        x = hc[:, :, None]
        parts = []
        for start in range(0, self.weight.shape[0], rows):
            w = self.weight[start:start + rows]
            # Cast + Mul rather than Where: ONNX Runtime's broadcasting Where is far slower on these tensors
            parts.append(torch.matmul((w > cut).to(h.dtype) * w, x)[:, :, 0])  # (N, rows)
        return energy(torch.cat(parts, dim=1) + self.bias)


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
        cuts = line_weight_cuts(self.weight_, self.contribution_, self.neuron_mask_, self.thresholds_)
        return LINeHead(self.weight_, self.bias_, cuts, self.clip_)
