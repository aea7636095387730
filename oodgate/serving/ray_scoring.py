"""Batch scoring with Ray Data: a callable class for ``ray.data.Dataset.map_batches`` that holds one oodgate
Session per actor, and ``score_dataset`` writing scores, labels and decisions to Parquet. No torch; ray is
imported inside the functions (``pip install 'oodgate[ray]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OodgateError
from ..files import atomic_folder
from ..runtime.session import Session

#: the columns GraphScorer adds to every batch
SCORE_COLUMNS = ("label", "score", "is_ood")


class GraphScorer:
    """``ds.map_batches(GraphScorer, fn_constructor_kwargs={"graph": path}, concurrency=2, num_cpus=0.5)``:
    adds label, score (higher = ID) and is_ood (score < threshold, or not finite) columns (and 'class' when the graph has class
    names) to each batch; ``keep`` columns (e.g. an id or path) are passed through, the image column is dropped.

    The image column holds image paths, decoded images (H, W[, C]) or inputs already preprocessed to the graph's
    (C, H, W); the graph's recorded preprocessing is applied to the first two.
    """

    def __init__(self, graph: str | Path, *, image_column: str = "image", keep: Sequence[str] = (),
                 providers: str = "cpu", threads: int | None = 1, threshold: float | None = None) -> None:
        self.session = Session(graph, providers=providers, threads=threads)
        self.image_column, self.keep, self.threshold = image_column, tuple(keep), threshold

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.image_column not in batch:
            raise OodgateError(f"batch has no column {self.image_column!r} (columns: {sorted(batch)}): pass "
                               "image_column=... naming the images or their paths")
        missing = [k for k in self.keep if k not in batch]
        if missing:
            raise OodgateError(f"keep columns {missing} are not in the batch (columns: {sorted(batch)})")
        images = batch[self.image_column]
        shape = tuple(self.session.input_shape)
        if isinstance(images, np.ndarray) and images.dtype.kind == "f" and tuple(images.shape[1:]) == shape:
            pred = self.session.run(np.asarray(images, np.float32), threshold=self.threshold)
        else:  # one entry per image: paths (str/bytes) or decoded images of any size
            items = [x.decode() if isinstance(x, bytes) else x for x in images]
            pred = self.session.run(items, threshold=self.threshold) if items else None
        out = {k: batch[k] for k in self.keep}
        if pred is None:
            out.update(label=np.zeros(0, np.int64), score=np.zeros(0, np.float32), is_ood=np.zeros(0, bool))
            return out
        out.update(label=np.asarray(pred.labels, np.int64), score=np.asarray(pred.scores, np.float32),
                   is_ood=np.asarray(pred.is_ood, bool))
        if self.session.info.class_names:
            names = np.asarray(self.session.info.class_names, dtype=object)
            out["class"] = names[np.clip(out["label"], 0, len(names) - 1)]
        return out


def score_dataset(dataset: Any, graph: str | Path, output: str | Path, *, image_column: str = "image",
                  keep: Sequence[str] = (), actors: int = 2, cpus_per_actor: float = 0.5, batch_size: int = 64,
                  threshold: float | None = None, overwrite: bool = False) -> Path:
    """Score a ``ray.data.Dataset`` with ``graph`` on a pool of ``actors`` (each holding a Session, fractional
    CPUs) and write the result as a Parquet folder at ``output``: written under a temporary name next to it and
    renamed into place when complete; an existing folder is replaced only with ``overwrite``."""
    output = Path(output).resolve()  # Ray's workers do not share the caller's working folder
    graph = Path(graph).resolve()
    if not graph.is_file():
        raise OodgateError(f"no such graph file: {graph}")
    if output.exists() and not overwrite:
        raise OodgateError(f"{output} exists: choose another output folder or overwrite it (--force)")
    if not output.parent.is_dir():
        raise OodgateError(f"cannot write {output}: folder {output.parent} does not exist")
    if not 0 < cpus_per_actor <= 64 or actors < 1:
        raise OodgateError(f"actors={actors}, cpus_per_actor={cpus_per_actor}: give >= 1 actor and a positive "
                           "CPU share (fractional, e.g. 0.5, so that actors never wait on each other for cores)")
    try:
        from ray.data import ActorPoolStrategy
    except ImportError:
        raise OodgateError("scoring with Ray Data needs ray[data]: pip install 'oodgate[ray]'") from None
    with atomic_folder(output, overwrite=overwrite, create=False) as staging:  # Ray makes it (not for no rows)
        scored = dataset.map_batches(
            GraphScorer, fn_constructor_kwargs={"graph": str(graph), "image_column": image_column, "keep": tuple(keep),
                                                "threshold": threshold},
            compute=ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, batch_size=batch_size,
            batch_format="numpy")
        scored.write_parquet(str(staging))
    return output


def read_scores(output: str | Path) -> dict[str, np.ndarray]:
    """The Parquet folder written by score_dataset as columns of NumPy arrays (needs pyarrow)."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(output))
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
