"""calibrate(): fit a detector's statistics on ID data and its threshold on held-out ID data."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.preprocess import Preprocess
from ..data.sets import ImageSet, load_image_set
from ..detectors.registry import detector as make_detector
from ..detectors.threshold import fit_threshold
from ..errors import FeatureSignWarning, OodgateError
from ..models.registry import ModelBundle, load_model
from ..models.split import SplitModel, split_classifier
from .artifact import Calibration, model_state_hash

#: calibrate warns when more than this share of the ID features is negative for a method that assumes h >= 0
NEGATIVE_SHARE_WARN = 0.01


def resolve_model(model: Any, *, preprocess: Preprocess | None = None, class_names: list[str] | None = None,
                  head: str | None = None) -> ModelBundle:
    """A ModelBundle from a bundle, a model reference string, or a torch module (+ its preprocessing)."""
    if isinstance(model, ModelBundle):
        return model.override(preprocess=preprocess, class_names=class_names, head=head)
    if isinstance(model, str):
        return load_model(model, preprocess=preprocess, class_names=class_names, head=head)
    if isinstance(model, nn.Module):
        if preprocess is None:
            raise OodgateError("a torch model needs its preprocessing: pass preprocess=oodgate.data.Preprocess(...)")
        return ModelBundle(model.eval(), preprocess, class_names, None, head)
    raise OodgateError(f"expected a torch.nn.Module, a ModelBundle or a model name, got {type(model).__name__}")


def resolve_images(data: Any, what: str = "ID data") -> ImageSet:
    """An ImageSet from an ImageSet, a spec string (e.g. 'digits:calib', a folder), or (images, labels)."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, str):
        return load_image_set(data)
    if isinstance(data, tuple) and len(data) == 2:
        return ImageSet(what, data[0], None if data[1] is None else np.asarray(data[1], dtype=np.int64))
    if isinstance(data, np.ndarray):
        return ImageSet(what, data)
    raise OodgateError(f"{what}: expected an ImageSet, a data spec string or (images, labels), got {type(data).__name__}")


def calibrate(model: Any, id_data: Any, method: str = "energy", *, tpr: float = 0.95, holdout: float | Any = 0.2,
              seed: int = 0, preprocess: Preprocess | None = None, class_names: list[str] | None = None,
              head: str | None = None, batch_size: int = 128, progress: bool | None = None,
              class_map: dict[str, Any] | None = None, **params: Any) -> Calibration:
    """Fit ``method`` on ID data and its threshold at ``tpr`` on held-out ID data; returns a Calibration.

    ``holdout`` is the share of ``id_data`` held out (seeded split) or a separate ID data set. Labels of class
    folders are matched to the model's class names, or mapped with ``class_map`` (folder -> class name or index).
    """
    det = make_detector(method, **params)
    bundle = resolve_model(model, preprocess=preprocess, class_names=class_names, head=head)
    split = split_classifier(bundle.model, head=bundle.head)
    if bundle.class_names is not None and len(bundle.class_names) != split.num_classes:
        raise OodgateError(f"{len(bundle.class_names)} class names for a model with {split.num_classes} outputs: give "
                           "one name per class, in the model's output order")
    images = model_classes(resolve_images(id_data), bundle.class_names, class_map, det.needs_labels)
    if isinstance(holdout, (int, float)) and not isinstance(holdout, bool):
        if not 0 < holdout < 1:
            raise OodgateError(f"holdout={holdout!r}: give the held-out share in (0, 1), e.g. 0.2")
        held, fit_set = images.split(float(holdout), seed=seed)
    else:
        fit_set = images
        held = model_classes(resolve_images(holdout, "held-out ID data"), bundle.class_names, class_map, False)
    if len(fit_set) == 0 or len(held) == 0:
        raise OodgateError(f"need ID samples both to fit ({len(fit_set)}) and to hold out ({len(held)}): give more data")
    if det.needs_labels and fit_set.labels is None:
        raise OodgateError(f"detector '{method}' is fitted with class labels, but the ID data has none")
    _check_input(split, bundle.preprocess, images)
    det.fit_model(split, fit_set.batches(bundle.preprocess, batch_size), progress=progress, n=len(fit_set),
                  class_names=bundle.class_names)
    scores = det.score_model(split, held.batches(bundle.preprocess, batch_size), progress=progress, n=len(held))
    tau = fit_threshold(scores, tpr)
    info = _jsonable(det.fit_info())
    if det.assumes_nonnegative_features:
        sign = _feature_sign(split, bundle.preprocess, held)
        if sign["negative_share"] > NEGATIVE_SHARE_WARN:
            info["feature_warning"] = (
                f"'{det.name}' assumes non-negative (ReLU-pooled) features, but {100 * sign['negative_share']:.1f} % "
                f"of this model's ID features are negative (min {sign['min']:.3g}): its clipping/pruning then acts on "
                "signed LayerNorm/SiLU outputs, not activation strengths (docs/ZOO.md); compare with energy / msp / mos")
            warnings.warn(info["feature_warning"], FeatureSignWarning, stacklevel=2)
    cal = Calibration(
        method=det.name, params=_jsonable(det.params), state=det.fitted_state(), info=info,
        threshold=tau, tpr=float(tpr), preprocess=bundle.preprocess, class_names=bundle.class_names,
        data_fingerprint=images.fingerprint() if isinstance(holdout, float) else
        fit_set.fingerprint() + "+" + held.fingerprint(),
        model_ref=bundle.ref, model_head=split.head_path, model_weights=bundle.extra.get("weights"),
        holdout_scores=np.asarray(scores, np.float32),
        counts={"fit": len(fit_set), "holdout": len(held), "accepted_holdout": int(np.sum(scores >= tau))},
        seed=seed, model_sha256=model_state_hash(split),
    )
    cal._detector, cal._model = det, split
    return cal


def _feature_sign(split: SplitModel, preprocess: Preprocess, images: ImageSet, n: int = 32) -> dict[str, float]:
    """Share of negative entries and the minimum of the features h of (up to n) ID images."""
    x, _ = next(images.subset(np.arange(min(n, len(images)))).batches(preprocess, n))
    with torch.no_grad():
        h = split.features(torch.from_numpy(x))
    return {"negative_share": float((h < 0).float().mean()), "min": float(h.min())}


def model_classes(images: ImageSet, class_names: list[str] | None, class_map: dict[str, Any] | None,
                  labels_needed: bool) -> ImageSet:
    """``images`` with labels in the model's class order (folder names matched or mapped; see ImageSet.for_classes).

    Folder labels that cannot be matched (the model has no class names and no map is given) are refused where they
    would be used, instead of silently meaning "index of the sorted folder names"."""
    images = images.for_classes(class_names, class_map)
    if labels_needed and images.labels_from == "folders":
        raise OodgateError(f"the labels of {images.name!r} come from folder names {images.class_names[:6]}, but the "
                           "model has no class names to match them to: give class_names (--class-names, in the "
                           "model's output order) or class_map (--class-map FOLDER=INDEX,...)")
    return images


def _check_input(split: SplitModel, preprocess: Preprocess, images: ImageSet) -> None:
    """Fail early, in one line, on what export would reject later: an input size the preprocessing does not fix,
    channels the model's first convolution does not take, an input the model cannot run."""
    from ..data.preprocess import SPEC_HELP
    from ..models.split import first_conv

    preprocess.input_shape  # noqa: B018 - raises, naming --crop / --resize, when H and W are not fixed
    conv = first_conv(split.backbone)
    if conv is not None and conv[1] != preprocess.num_channels:
        want = "L" if conv[1] == 1 else "RGB" if conv[1] == 3 else None
        fix = (f"use channels '{want}' (--channels {want}" + (", --preset gray-28" if want == "L" else "") + ")"
               if want else "oodgate feeds 1 (L) or 3 (RGB) channels")
        raise OodgateError(f"the model's first convolution ({conv[0]}) takes {conv[1]} channel(s) but the "
                           f"preprocessing gives {preprocess.num_channels} (channels '{preprocess.channels}'): {fix}")
    x, _ = next(images.subset(np.arange(1)).batches(preprocess, 1))
    try:
        with torch.no_grad():
            split.features(torch.from_numpy(x))
    except OodgateError:
        raise
    except Exception as exc:  # noqa: BLE001 - translate a shape error into an actionable message
        raise OodgateError(f"the model cannot take inputs of shape {tuple(x.shape)} made by {preprocess}: "
                           f"{str(exc).splitlines()[0]}; set the preprocessing it was trained with: "
                           f"{SPEC_HELP}") from None


def _jsonable(value: Any) -> Any:
    """Plain JSON types from NumPy scalars / arrays / tuples."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["calibrate", "resolve_images", "resolve_model"]
