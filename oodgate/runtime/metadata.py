"""What oodgate writes into a graph's metadata, and reading it back (no torch, no onnxruntime needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.preprocess import Preprocess
from ..errors import ArtifactError

METADATA_KEY = "oodgate"
GRAPH_FORMAT = "oodgate-graph"
GRAPH_FORMAT_VERSION = 1
#: the graph's input and its four outputs, in order
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "score", "is_ood", "label")


@dataclass(frozen=True)
class GraphInfo:
    """The oodgate facts of an exported graph: method, threshold, preprocessing, classes, provenance."""

    method: str
    params: dict[str, Any]
    threshold: float
    tpr: float
    preprocess: Preprocess
    class_names: list[str] | None
    input_name: str
    input_shape: tuple[int, int, int]
    outputs: tuple[str, ...]
    calibration_hash: str
    oodgate_version: str
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, text: str, source: str = "graph") -> "GraphInfo":
        """Parse the JSON stored under the metadata key."""
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{source}: oodgate metadata is not valid JSON ({exc})") from None
        if meta.get("format") != GRAPH_FORMAT:
            raise ArtifactError(f"{source} was not made by oodgate export (no oodgate graph metadata)")
        if meta.get("format_version") != GRAPH_FORMAT_VERSION:
            raise ArtifactError(f"{source} has graph format version {meta.get('format_version')}; this oodgate "
                                f"reads version {GRAPH_FORMAT_VERSION}: re-export it with this version")
        missing = sorted({"method", "params", "threshold", "tpr", "preprocess", "input_name", "input_shape",
                          "outputs", "calibration_hash", "oodgate_version"} - set(meta))
        if missing:
            raise ArtifactError(f"{source}: oodgate metadata lacks {missing}: the graph was edited or is damaged; "
                                "re-export it")
        return cls(
            method=meta["method"], params=meta["params"], threshold=float(meta["threshold"]), tpr=float(meta["tpr"]),
            preprocess=Preprocess.from_dict(meta["preprocess"]), class_names=meta.get("class_names"),
            input_name=meta["input_name"], input_shape=tuple(meta["input_shape"]), outputs=tuple(meta["outputs"]),
            calibration_hash=meta["calibration_hash"], oodgate_version=meta["oodgate_version"], raw=meta,
        )


def read_graph_info(path: str | Path) -> GraphInfo:
    """Read oodgate's metadata from an ONNX file (weights are not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no such graph file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise ArtifactError(f"{path} is not a readable ONNX file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ArtifactError(f"{path} was not made by oodgate export (no '{METADATA_KEY}' metadata): "
                            "export it with `oodgate export`")
    return GraphInfo.from_json(props[METADATA_KEY], str(path))
