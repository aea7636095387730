"""MOS (Huang & Li, CVPR 2021): a group-softmax head with one "others" logit per group, trained on cached ID features.

The head has C + G outputs; group g owns a contiguous slice of n_g + 1 logits, slot 0 "others", slots 1..n_g its
classes. Score ``-min_g softmax(z[slice_g])[0]`` (higher = ID); prediction: the class with the highest
non-others probability over all groups (no renormalisation), so an "others" slot is never predicted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..errors import OodgateError
from .registry import register
from .base import Detector, DetectorHead
from .mos_groups import KMEANS_SOURCES, group_layout, resolve_groups, validate_groups
from .mos_train import train_mos_head


class MOSHead(DetectorHead):
    """z = W' h + b' (C + G logits); per-group softmax; score -min_g p_g(others); label by the group rule.

    Buffers: ``weight``/``bias`` the MOS head, ``gather`` (G*(M+1),) the logit of each (group, slot) with padding
    repeating the group's "others" logit, ``valid`` (G, M+1) 1 at real slots, ``slot_class`` (G*M,) the class index
    of each non-others slot. The group count G and largest group size M are fixed by the buffers' shapes.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray, groups: list[list[int]]) -> None:
        super().__init__(weight, bias)
        gather, valid, slot_class = group_layout(groups)
        self.shape = gather.shape
        self.register_buffer("gather", torch.from_numpy(gather.ravel()))
        self.register_buffer("valid", torch.from_numpy(valid))
        self.register_buffer("slot_class", torch.from_numpy(slot_class.ravel()))

    def group_probs(self, z: torch.Tensor) -> torch.Tensor:
        """(N, G, M+1) softmax of each group's slice (0 at padding slots)."""
        zg = z.index_select(1, self.gather).reshape(-1, *self.shape)
        e = torch.exp(zg - zg.amax(dim=2, keepdim=True)) * self.valid
        return e / e.sum(dim=2, keepdim=True)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.logits(h)
        p = self.group_probs(z)
        score = -p[:, :, 0].amin(dim=1)
        best = torch.argmax(self._slot_values(p), dim=1)
        return z, score, self.slot_class.index_select(0, best)

    def _slot_values(self, p: torch.Tensor) -> torch.Tensor:
        """(N, G*M): each class slot's within-group probability; padding slots get -1 so that a real class
        (probability >= 0) always wins."""
        cls = torch.where(self.valid[:, 1:] > 0, p[:, :, 1:], -torch.ones((), dtype=p.dtype))
        return cls.reshape(cls.shape[0], -1)

    def label_values(self, z: torch.Tensor) -> torch.Tensor:
        """What the label is the argmax of (the slots' within-group probabilities), from the MOS logits ``z``: the
        parity check judges label ties on these, not on the logits (oodgate.evaluation.parity.floor_report)."""
        return self._slot_values(self.group_probs(z))


def _check_groups_param(groups: Any) -> None:
    if groups is None or isinstance(groups, str):
        if isinstance(groups, str) and not groups.strip():
            raise OodgateError("groups='': give None (k-means), 'imagenet-taxonomy', a group file or lists of classes")
        return
    if isinstance(groups, (list, tuple)) and groups and all(isinstance(g, (list, tuple)) for g in groups):
        return
    raise OodgateError(f"groups={groups!r:.60} of 'mos': give None (k-means groups), 'imagenet-taxonomy', the path of "
                       "a .csv/.tsv/.json group file, or a list of lists of class indices")


@register
class MOS(Detector):
    """MOS: a new (C + G)-way group-softmax head trained on ID features with labels; score -min_g p_g(others).

    Parameters (all JSON values, so they go into calibration files):

    - ``groups``: None (k-means groups), 'imagenet-taxonomy' (the official 8 ImageNet groups, torchvision order),
      the path of a group file (CSV/TSV rows ``class,group[,order]``, header optional; JSON ``[[0, 1], [2]]``,
      ``{"group": [classes]}`` or ``{"class": "group"}``; classes by index or by name), or a list of lists of
      class indices. A file is read at fit time; the resolved groups are stored in ``fit_info()['groups']``, so a
      saved calibration never needs the file again.
    - ``num_groups``: k-means group count (default min(4, C // 2), at least 1).
    - ``kmeans_on``: 'class_means' (L2-normalised class means of the fit features) or 'head_rows' (the classifier's
      FC rows); ``fit_info()['group_source']`` says which grouping was used.
    - ``steps``: SGD steps (default: BiT-HyperRule by fit-set size, see ``mos_train``); ``lr``: base learning
      rate (0.003); ``batch_size`` (512); ``mixup``: alpha (None: 0.1 from 20 000 fit samples, else off);
      ``val``: share of the fit features held out for early stopping (0 = none); ``patience``: evaluations without
      improvement before stopping; ``seed``; ``progress``: progress bar (None: on a terminal outside CI).

    ``fit(features, labels, weight=W, bias=b, class_names=None)``: features are cached in memory (N x D float32)
    to train the head; ``class_names`` resolves group files that name classes. ``W``/``b`` (the original head) are
    kept for ``kmeans_on='head_rows'`` and for comparisons; the graph uses the MOS head only. Logits are the
    C + G MOS logits in slot layout; labels are class indices 0..C-1.
    """

    name = "mos"
    needs_labels = True
    defaults = {"groups": None, "num_groups": None, "kmeans_on": "class_means", "steps": None, "lr": 0.003,
                "batch_size": 512, "mixup": None, "val": 0.1, "patience": 5, "seed": 0, "progress": None}
    fitted = ("weight_", "bias_", "mos_weight_", "mos_bias_")
    fitted_info = ("groups_", "group_source_", "training_")

    def validate_params(self) -> None:
        super().validate_params()
        p = self.params
        _check_groups_param(p["groups"])

        def positive_int(key: str, allow_none: bool = False) -> None:
            val = p[key]
            if val is None and allow_none:
                return
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise OodgateError(f"parameter {key}={val!r} of 'mos' must be a positive integer"
                                   f"{' or None' if allow_none else ''}")

        positive_int("num_groups", allow_none=True)
        positive_int("steps", allow_none=True)
        positive_int("batch_size")
        positive_int("patience")
        if p["kmeans_on"] not in KMEANS_SOURCES:
            raise OodgateError(f"parameter kmeans_on={p['kmeans_on']!r} of 'mos': use one of "
                               f"{', '.join(KMEANS_SOURCES)}")
        for key, lo, hi, val in (("lr", 0.0, math.inf, p["lr"]), ("val", 0.0, 1.0, p["val"]),
                                 ("mixup", 0.0, math.inf, 0.0 if p["mixup"] is None else p["mixup"])):
            ok = isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val)
            if not ok or not (lo < val if key == "lr" else lo <= val) or not val < hi:
                raise OodgateError(f"parameter {key}={val!r} of 'mos' must be a number in "
                                   f"{'(' if key == 'lr' else '['}{lo:g}, {hi:g})")
        if isinstance(p["seed"], bool) or not isinstance(p["seed"], (int, np.integer)):
            raise OodgateError(f"parameter seed={p['seed']!r} of 'mos' must be an integer")
        if p["progress"] not in (None, True, False):
            raise OodgateError(f"parameter progress={p['progress']!r} of 'mos' must be True, False or None")

    def _fit(self, batches: Iterable[tuple[np.ndarray, np.ndarray | None]]) -> None:
        c, d = self.weight_.shape
        feats, labs, sums = [], [], np.zeros((c, d))
        for f, lab in batches:
            if lab is None:
                raise OodgateError("'mos' trains a new head on labelled ID features: pass labels "
                                   "(fit(features, labels, ...) or (features, labels) batches)")
            feats.append(f.astype(np.float32))  # the training cache
            labs.append(lab)
            np.add.at(sums, lab, f)
        x, y = np.concatenate(feats), np.concatenate(labs)
        del feats
        counts = np.bincount(y, minlength=c)
        # class means for k-means groups; a class without fit samples gets the overall mean
        means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], sums.sum(0) / len(y))
        p = self.params
        groups, source = resolve_groups(
            p["groups"], c, class_names=self.class_names, class_means=means, head_rows=self.weight_,
            num_groups=p["num_groups"], kmeans_on=p["kmeans_on"], seed=int(p["seed"]))
        w, b, facts = train_mos_head(x, y, groups, c, steps=p["steps"], lr=float(p["lr"]),
                                     batch_size=int(p["batch_size"]), mixup=p["mixup"], val=float(p["val"]),
                                     patience=int(p["patience"]), seed=int(p["seed"]), progress=p["progress"])
        facts["empty_classes"] = int((counts == 0).sum())
        self.groups_, self.group_source_, self.training_ = groups, source, facts
        self.mos_weight_, self.mos_bias_ = w, b

    def _build_head(self) -> DetectorHead:
        c = int(np.asarray(self.weight_).shape[0])
        groups = validate_groups(self.groups_, c, "saved MOS groups")
        w = np.asarray(self.mos_weight_)
        if w.shape != (c + len(groups), np.asarray(self.weight_).shape[1]):
            raise OodgateError(f"saved MOS head has shape {w.shape}, expected ({c + len(groups)}, "
                               f"{np.asarray(self.weight_).shape[1]}) for {c} classes in {len(groups)} groups")
        return MOSHead(w, np.asarray(self.mos_bias_), groups)

    @property
    def num_groups(self) -> int:
        """G, the number of groups of the fitted head."""
        self.head()
        return len(self.groups_)

    @property
    def score_batch_size(self) -> int:
        gather = self.head().gather
        return max(1, (1 << 24) // int(gather.numel()))


__all__ = ["MOS", "MOSHead"]
