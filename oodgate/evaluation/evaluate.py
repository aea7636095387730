"""Evaluating an exported graph: ID set vs OOD sets through a runtime -> metrics table. No torch needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics
from ..errors import OodgateError


@dataclass
class SetScores:
    """Scores (and, for labelled ID data, predictions) of one data set."""

    name: str
    scores: np.ndarray
    is_ood: np.ndarray
    labels: np.ndarray | None = None
    predicted: np.ndarray | None = None


@dataclass
class Evaluation:
    """ID vs each OOD set: the metrics of one method, with its threshold."""

    method: str
    threshold: float
    id_set: SetScores
    ood_sets: list[SetScores] = field(default_factory=list)

    @property
    def id_accuracy(self) -> float | None:
        s = self.id_set
        if s.labels is None or s.predicted is None:
            return None
        return metrics.accuracy(s.predicted, s.labels)

    def per_set(self) -> dict[str, dict[str, float]]:
        """Metrics per OOD set (and 'mean' over them), plus shares rejected at tau."""
        out: dict[str, dict[str, float]] = {}
        for o in self.ood_sets:
            m = metrics.ood_metrics(self.id_set.scores, o.scores)
            m["accepted_ood_at_tau"] = float(np.mean(~o.is_ood))
            out[o.name] = m
        if out:
            keys = next(iter(out.values())).keys()
            out["mean"] = {k: float(np.mean([v[k] for v in out.values()])) for k in keys}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold, "id_set": self.id_set.name,
                "id_accuracy": self.id_accuracy, "id_rejected_at_tau": float(np.mean(self.id_set.is_ood)),
                "ood": self.per_set()}


def score_set(session: Any, name: str, images: Any, labels: np.ndarray | None = None, *,
              batch_size: int = 64, progress: bool | None = None) -> SetScores:
    """Run one set of images through an oodgate Session, batch by batch, with a progress bar."""
    from ..progress import progress_bar

    if len(images) == 0:
        raise OodgateError(f"set {name!r} holds no images: give at least one")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise OodgateError(f"batch_size must be a positive integer, got {batch_size!r}")
    scores, is_ood, predicted = [], [], []
    with progress_bar(len(images), f"score {name}", progress) as bar:
        for start in range(0, len(images), batch_size):
            pred = session.run(images[start:start + batch_size], batch_size=batch_size)
            scores.append(pred.scores)
            is_ood.append(pred.is_ood)
            predicted.append(pred.labels)
            bar.update(len(pred.scores))
    return SetScores(name, np.concatenate(scores), np.concatenate(is_ood), labels, np.concatenate(predicted))


def evaluate_session(session: Any, id_data: Any, ood_data: dict[str, Any], *, batch_size: int = 64,
                     progress: bool | None = None, class_map: dict[str, Any] | None = None) -> Evaluation:
    """Score ID data (an ImageSet) and each named OOD ImageSet with ``session``.

    ID labels from class folders are matched to the graph's class names (or mapped with ``class_map``), so that
    the accuracy compares the graph's label ids with the right classes."""
    if not ood_data:
        raise OodgateError("give at least one OOD set to evaluate against (e.g. --ood textures=ood:textures)")
    id_data = id_data.for_classes(session.info.class_names, class_map)
    if id_data.labels is not None and id_data.labels_from == "folders":
        raise OodgateError(f"the labels of {id_data.name!r} come from folder names {id_data.class_names[:6]}, but the "
                           "graph has no class names to match them to: map them with --class-map FOLDER=INDEX,...")
    id_scores = score_set(session, id_data.name, id_data.images, id_data.labels, batch_size=batch_size,
                          progress=progress)
    oods = [score_set(session, name, data.images, batch_size=batch_size, progress=progress)
            for name, data in ood_data.items()]
    return Evaluation(session.info.method, session.threshold, id_scores, oods)


def metrics_table(evaluations: list[Evaluation], *, sets: list[str] | None = None) -> str:
    """Markdown table: one row per method; AUROC and classic FPR95 (ID positive) per OOD set, and the mean."""
    if not evaluations:
        return ""
    names = sets or [*(o.name for o in evaluations[0].ood_sets), "mean"]
    head = "| method | ID acc | " + " | ".join(f"{n} AUROC | {n} FPR95" for n in names) + " |"
    sep = "|---|---:|" + "---:|---:|" * len(names)
    rows = [head, sep]
    for ev in evaluations:
        per = ev.per_set()
        acc = "—" if ev.id_accuracy is None else f"{100 * ev.id_accuracy:.1f}"
        cells = [f"{100 * per[n]['auroc']:.2f} | {100 * per[n]['fpr95_id_positive']:.2f}" for n in names]
        rows.append(f"| {ev.method} | {acc} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
