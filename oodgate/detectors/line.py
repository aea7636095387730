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


class LINeHead(DetectorHead):
    """h' = min(h, c); l = argmax(W h' + b); score = E((W * M(l)) (h' * m_l) + b)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, contribution: np.ndarray, neuron_mask: np.ndarray,
                 thresholds: np.ndarray, clip: float) -> None:
        super().__init__(weight, bias)
        self.register_buffer("abs_contribution", torch.as_tensor(np.abs(contribution), dtype=torch.float32))
        self.register_buffer("neuron_mask", torch.as_tensor(neuron_mask, dtype=torch.float32))
        self.register_buffer("thresholds", torch.as_tensor(thresholds, dtype=torch.float32))
        self.register_buffer("clip", torch.tensor(float(clip), dtype=torch.float32))

    def score_from(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        hc = torch.minimum(h, self.clip)
        predicted = torch.argmax(self.logits(hc), dim=1)
        s_l = self.abs_contribution.index_select(0, predicted)  # (N, D)
        t_l = self.thresholds.index_select(0, predicted)  # (N,)
        x = hc * self.neuron_mask.index_select(0, predicted)  # (N, D)
        keep = (s_l[:, None, :] * self.weight[None, :, :]) > t_l[:, None, None]  # (N, C, D)
        # Cast + Mul and one batched MatMul rather than Where + Mul + ReduceSum: ONNX Runtime's broadcasting Where
        # is its slowest kernel on (N, C, D) tensors. Same scores (W * 0 = 0 where a weight is masked); bench/scaling.py
        # times both forms (`line` vs `line_where`; docs/BENCHMARKS.md)
        masked = keep.to(h.dtype) * self.weight
        z_line = torch.matmul(masked, x[:, :, None])[:, :, 0] + self.bias
        return energy(z_line)


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
        return LINeHead(self.weight_, self.bias_, self.contribution_, np.asarray(self.neuron_mask_, bool),
                        self.thresholds_, self.clip_)
