"""Calibration at scale: backbone features written as shards (in-process or as Ray tasks), and a detector plus
its threshold fitted from those shards, streamed, so that the features of an ImageNet-size ID set never sit in
memory. Fitting from shards gives the calibration that ``calibrate`` gives from the same images.

A shard folder: ``shard-00000.npz`` ... (features float32 (n, D), labels int64 or none, global row index) and
``shards.json`` (model reference and head, preprocessing, classes, the data set's fingerprint, each shard's rows
and sha256), with the classifier's head weight and bias in ``head.npz``. The folder is assembled under a
temporary name and renamed into place once every shard is written; shards are checked against their sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ArtifactError, OodgateError
from ..files import atomic_folder, write_atomic

FORMAT = "oodgate-feature-shards"
FORMAT_VERSION = 1
MANIFEST = "shards.json"
HEAD_FILE = "head.npz"


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def extract_shard(split: Any, images: Any, preprocess: Any, *, start: int, path: str | Path,
                  batch_size: int = 128) -> dict[str, Any]:
    """Features of ``images`` (rows ``start``.. of the whole set) written to the shard file ``path``; returns its
    manifest entry. The unit of work of a Ray task, and of the plain loop."""
    from .features import iter_features

    feats, labels = [], []
    for f, y in iter_features(split, images, preprocess, batch_size=batch_size, progress=False):
        feats.append(f)
        labels.append(y)
    features = np.concatenate(feats) if feats else np.zeros((0, split.num_features), np.float32)
    arrays = {"features": features.astype(np.float32, copy=False),
              "index": np.arange(start, start + len(features), dtype=np.int64)}
    if labels and labels[0] is not None:
        arrays["labels"] = np.concatenate(labels).astype(np.int64)
    data = _npz_bytes(**arrays)
    write_atomic(path, data)
    return {"file": Path(path).name, "start": start, "rows": len(features), "sha256": hashlib.sha256(data).hexdigest()}


def write_feature_shards(model: Any, images: Any, output: str | Path, *, shard_size: int = 1024,
                         batch_size: int = 128, preprocess: Any = None, class_names: list[str] | None = None,
                         head: str | None = None, use_ray: bool = False, cpus_per_task: float = 1.0,
                         overwrite: bool = False, progress: bool | None = None,
                         class_map: dict[str, Any] | None = None) -> Path:
    """Write the backbone features of ``images`` as shards of ``shard_size`` rows into the folder ``output``.

    Labels of class folders are the model's class ids, matched by name (or mapped with ``class_map``), as in
    ``calibrate``; folder labels that cannot be matched are refused rather than stored as sorted-folder indices.

    ``use_ray``: one Ray task per shard (Ray must be started by the caller: ``ray.init(...)`` locally, or
    ``ray.init(address="auto")`` on a cluster whose workers can import oodgate and write to ``output``);
    otherwise a plain loop in this process. Both write the same shards.
    """
    import torch

    from ..models.split import split_classifier
    from ..progress import progress_bar
    from .calibrate import model_classes, resolve_images, resolve_model

    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise OodgateError(f"shard_size={shard_size!r}: give a positive number of rows per shard, e.g. 1024")
    output = Path(output).resolve()  # Ray's workers do not share the caller's working folder
    if output.exists() and not overwrite:
        raise OodgateError(f"{output} exists: choose another shard folder or overwrite it (--force)")
    if output.exists() and not (output / MANIFEST).is_file():
        raise OodgateError(f"{output} exists and is not a feature shard folder (no {MANIFEST}): not replacing it")
    if not output.parent.is_dir():
        raise OodgateError(f"cannot write {output}: folder {output.parent} does not exist")
    bundle = resolve_model(model, preprocess=preprocess, class_names=class_names, head=head)
    split = split_classifier(bundle.model, head=bundle.head).eval()
    from .artifact import model_state_hash
    data = model_classes(resolve_images(images), bundle.class_names, class_map, labels_needed=True)
    if len(data) == 0:
        raise OodgateError("no images to extract features from: give at least one")
    ray = None
    if use_ray:
        try:
            import ray
        except ImportError:
            raise OodgateError("use_ray needs Ray: pip install 'oodgate[ray]'") from None
        if not ray.is_initialized():
            raise OodgateError("Ray is not started: call ray.init(num_cpus=2, _node_ip_address='127.0.0.1', "
                               "include_dashboard=False) for this machine, or ray.init(address='auto') on a cluster")
    with atomic_folder(output, overwrite=overwrite) as staging:
        with torch.no_grad():
            weight = split.head.weight.detach().numpy().astype(np.float32)
            bias = split.head.bias.detach().numpy().astype(np.float32)
        write_atomic(staging / HEAD_FILE, _npz_bytes(weight=weight, bias=bias))
        starts = list(range(0, len(data), shard_size))
        jobs = [(s, data.subset(np.arange(s, min(s + shard_size, len(data)))),
                 staging / f"shard-{i:05d}.npz") for i, s in enumerate(starts)]
        entries: list[dict[str, Any]] = []
        with progress_bar(len(data), "feature shards", progress) as bar:
            if ray is not None:
                task = ray.remote(num_cpus=cpus_per_task)(extract_shard)
                split_ref = ray.put(split)
                pending = [task.remote(split_ref, part, bundle.preprocess, start=s, path=str(p), batch_size=batch_size)
                           for s, part, p in jobs]
                while pending:  # as they finish, for the progress bar
                    done, pending = ray.wait(pending, num_returns=1)
                    entry = ray.get(done[0])
                    entries.append(entry)
                    bar.update(entry["rows"])
            else:
                for s, part, p in jobs:
                    entries.append(extract_shard(split, part, bundle.preprocess, start=s, path=p,
                                                 batch_size=batch_size))
                    bar.update(entries[-1]["rows"])
        entries.sort(key=lambda e: e["start"])
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "oodgate_version": __version__,
            "rows": len(data), "feature_dim": int(weight.shape[1]), "num_classes": int(weight.shape[0]),
            "has_labels": data.labels is not None, "data_name": data.name, "data_fingerprint": data.fingerprint(),
            "model_ref": bundle.ref, "model_head": split.head_path, "model_weights": bundle.extra.get("weights"),
            "model_sha256": model_state_hash(split),
            "preprocess": bundle.preprocess.to_dict(), "class_names": bundle.class_names,
            "head_sha256": hashlib.sha256((staging / HEAD_FILE).read_bytes()).hexdigest(), "shards": entries,
        }
        write_atomic(staging / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return output


@dataclass(frozen=True)
class FeatureShards:
    """A checked shard folder: its manifest and the head weight/bias; rows are read shard by shard."""

    folder: Path
    manifest: dict[str, Any]
    weight: np.ndarray
    bias: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    def read_shard(self, entry: dict[str, Any]) -> dict[str, np.ndarray]:
        """One shard's arrays, after checking its sha256 and rows against the manifest."""
        path = self.folder / entry["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"shard {path} cannot be read ({exc.strerror}): re-extract the features") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ArtifactError(f"shard {path} fails its sha256: modified or corrupt; re-extract the features")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if len(arrays["features"]) != entry["rows"] or arrays["features"].shape[1:] != (self.manifest["feature_dim"],):
            raise ArtifactError(f"shard {path} holds {arrays['features'].shape}, the manifest says {entry['rows']} "
                                f"rows of width {self.manifest['feature_dim']}")
        return arrays

    def stream(self, rows: np.ndarray | None = None, batch_size: int = 4096,
               ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(features, labels-or-None) batches of exactly ``batch_size`` rows (the last one shorter), in row order,
        of the rows selected by the boolean mask ``rows`` (all when None); one shard in memory at a time."""
        buf_f: list[np.ndarray] = []
        buf_y: list[np.ndarray] = []
        held = 0
        labelled = bool(self.manifest["has_labels"])
        for entry in self.manifest["shards"]:
            arrays = self.read_shard(entry)
            f = arrays["features"]
            y = arrays.get("labels")
            if rows is not None:
                keep = rows[arrays["index"]]
                f, y = f[keep], (None if y is None else y[keep])
            buf_f.append(f)
            if labelled:
                buf_y.append(y)
            held += len(f)
            while held >= batch_size:
                feats, labs = np.concatenate(buf_f), (np.concatenate(buf_y) if labelled else None)
                yield feats[:batch_size], (None if labs is None else labs[:batch_size])
                buf_f, held = [feats[batch_size:]], len(feats) - batch_size
                buf_y = [labs[batch_size:]] if labelled else []
        if held:
            yield np.concatenate(buf_f), (np.concatenate(buf_y) if labelled else None)


def open_shards(folder: str | Path) -> FeatureShards:
    """Read and check a shard folder's manifest and head (the shards are checked as they are read)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a complete feature shard folder (no {MANIFEST}): write it with "
                            "`oodgate extract-features`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an oodgate feature shard manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has shard format version {manifest.get('format_version')}; this oodgate reads "
                            f"version {FORMAT_VERSION}: re-extract the features")
    head = folder / HEAD_FILE
    if not head.is_file() or hashlib.sha256(head.read_bytes()).hexdigest() != manifest.get("head_sha256"):
        raise ArtifactError(f"{head} is missing or fails its sha256: re-extract the features")
    with np.load(head, allow_pickle=False) as npz:
        weight, bias = npz["weight"], npz["bias"]
    starts = [e["start"] for e in manifest["shards"]]
    if starts != sorted(starts) or sum(e["rows"] for e in manifest["shards"]) != manifest["rows"]:
        raise ArtifactError(f"{path}: the shards do not cover the {manifest['rows']} rows in order")
    return FeatureShards(folder, manifest, weight, bias)


def holdout_mask(n: int, share: float, seed: int) -> np.ndarray:
    """True for the rows ``ImageSet.split(share, seed)`` holds out (its first part), so that fitting from shards
    splits exactly as ``calibrate(..., holdout=share, seed=seed)`` does."""
    k = round(share * n)
    if k == 0 or k == n:
        raise OodgateError(f"holding out {share:g} of {n} rows leaves one part empty: use a share nearer 0.5 or "
                           "more rows")
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:k]] = True  # the permutation ImageSet.split draws
    return mask


def fit_from_shards(shards: str | Path, method: str = "energy", *, holdout: float | str | Path = 0.2,
                    tpr: float = 0.95, seed: int = 0, batch_size: int = 4096, progress: bool | None = None,
                    **params: Any) -> Any:
    """Fit ``method`` from a shard folder and its threshold at ``tpr`` on held-out rows; returns a Calibration.

    ``holdout``: the share of rows held out (the same seeded split as ``calibrate``), or a second shard folder of
    held-out ID data (made with the same model). Features are streamed shard by shard (``batch_size`` rows to the
    detector at a time); only the held-out scores, one float per row, are kept.
    """
    from ..data.preprocess import Preprocess
    from ..detectors.registry import detector as make_detector
    from ..detectors.threshold import fit_threshold
    from ..progress import progress_bar
    from .artifact import Calibration
    from .calibrate import _jsonable

    det = make_detector(method, **params)
    if det.input_kind != "features":
        raise OodgateError(f"detector '{method}' needs the backbone itself (input gradients), not features: "
                           "calibrate it from images (oodgate calibrate)")
    fit = open_shards(shards)
    if det.needs_labels and not fit.manifest["has_labels"]:
        raise OodgateError(f"detector '{method}' is fitted with class labels, but the shards hold none")
    if isinstance(holdout, (int, float)) and not isinstance(holdout, bool):
        if not 0 < holdout < 1:
            raise OodgateError(f"holdout={holdout!r}: give the held-out share in (0, 1), e.g. 0.2")
        held_mask = holdout_mask(fit.rows, float(holdout), seed)
        held, fit_rows, held_rows = fit, ~held_mask, held_mask
        fingerprint = fit.manifest["data_fingerprint"]
    else:
        held = open_shards(holdout)
        for key in ("model_ref", "model_head", "model_weights", "model_sha256", "feature_dim", "num_classes"):
            if held.manifest.get(key) != fit.manifest.get(key):
                raise OodgateError(f"the held-out shards were made with another model ({key}: "
                                   f"{held.manifest[key]!r} vs {fit.manifest[key]!r}): extract both with one model")
        if not (np.array_equal(held.weight, fit.weight) and np.array_equal(held.bias, fit.bias)):
            raise OodgateError("the held-out shards come from a classifier with another head: extract both with one "
                               "model")
        fit_rows = held_rows = None
        fingerprint = fit.manifest["data_fingerprint"] + "+" + held.manifest["data_fingerprint"]
    n_fit = fit.rows if fit_rows is None else int(fit_rows.sum())
    n_held = held.rows if held_rows is None else int(held_rows.sum())
    if n_fit == 0 or n_held == 0:
        raise OodgateError(f"need ID rows both to fit ({n_fit}) and to hold out ({n_held}): give more data")

    def counted(stream: Iterator[tuple[np.ndarray, Any]], bar: Any) -> Iterator[tuple[np.ndarray, Any]]:
        for f, y in stream:
            bar.update(len(f))
            yield f, y

    with progress_bar(n_fit, f"fit {method} from shards", progress) as bar:
        det.fit(counted(fit.stream(fit_rows, batch_size), bar), weight=fit.weight, bias=fit.bias,
                class_names=fit.manifest["class_names"])
    scores = np.concatenate([det.score(f) for f, _ in held.stream(held_rows, batch_size)])
    tau = fit_threshold(scores, tpr)
    m = fit.manifest
    cal = Calibration(
        method=det.name, params=_jsonable(det.params), state=det.fitted_state(), info=_jsonable(det.fit_info()),
        threshold=tau, tpr=float(tpr), preprocess=Preprocess.from_dict(m["preprocess"]), class_names=m["class_names"],
        data_fingerprint=fingerprint, model_ref=m["model_ref"], model_head=m["model_head"],
        model_weights=m["model_weights"], holdout_scores=np.asarray(scores, np.float32),
        counts={"fit": n_fit, "holdout": n_held, "accepted_holdout": int(np.sum(scores >= tau))}, seed=seed,
        model_sha256=m.get("model_sha256"),
    )
    cal._detector = det
    return cal
