"""What oodgate writes into a graph's metadata, and reading it back (no torch, no onnxruntime needed)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.preprocess import Preprocess
from ..errors import ArtifactError

METADATA_KEY = "oodgate"
GRAPH_FORMAT = "oodgate-graph"
GRAPH_FORMAT_VERSION = 2  # 2: sealed (graph_sha256 + metadata checksum), is_ood = NOT(tau <= score < inf)
#: metadata key of the sha256 of the exact JSON text stored under METADATA_KEY
CHECKSUM_KEY = "oodgate.checksum"
#: the comparison operators that can turn the score into is_ood against the baked threshold
_COMPARISONS = ("GreaterOrEqual", "Greater", "Less", "LessOrEqual")
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
        if not isinstance(meta, dict) or meta.get("format") != GRAPH_FORMAT:
            raise ArtifactError(f"{source} was not made by oodgate export (no oodgate graph metadata)")
        if meta.get("format_version") != GRAPH_FORMAT_VERSION:
            raise ArtifactError(f"{source} has graph format version {meta.get('format_version')}; this oodgate "
                                f"reads version {GRAPH_FORMAT_VERSION}: re-export it with this version")
        missing = sorted({"method", "params", "threshold", "tpr", "preprocess", "input_name", "input_shape",
                          "outputs", "calibration_hash", "oodgate_version"} - set(meta))
        if missing:
            raise ArtifactError(f"{source}: oodgate metadata lacks {missing}: the graph was edited or is damaged; "
                                "re-export it")
        _check_fields(meta, source)
        return cls(
            method=meta["method"], params=meta["params"], threshold=float(meta["threshold"]), tpr=float(meta["tpr"]),
            preprocess=Preprocess.from_dict(meta["preprocess"]), class_names=meta.get("class_names"),
            input_name=meta["input_name"], input_shape=tuple(meta["input_shape"]), outputs=tuple(meta["outputs"]),
            calibration_hash=meta["calibration_hash"], oodgate_version=meta["oodgate_version"], raw=meta,
        )


def _check_fields(meta: dict[str, Any], source: str) -> None:
    """Types and values of the metadata fields: one ArtifactError naming the first bad field."""

    def bad(field: str, want: str) -> ArtifactError:
        return ArtifactError(f"{source}: oodgate metadata field '{field}' is {meta.get(field)!r:.80}, expected "
                             f"{want}: the graph was edited or is damaged; re-export it")

    for name in ("method", "input_name", "calibration_hash", "oodgate_version"):
        if not isinstance(meta[name], str) or not meta[name]:
            raise bad(name, "a non-empty string")
    if not isinstance(meta["params"], dict):
        raise bad("params", "an object")
    for name in ("threshold", "tpr"):
        value = meta[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(name, "a finite number")
    if not 0 < meta["tpr"] <= 1:
        raise bad("tpr", "a share in (0, 1]")
    shape = meta["input_shape"]
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise bad("input_shape", "[C, H, W] of positive integers")
    if not isinstance(meta["outputs"], list) or not all(isinstance(o, str) for o in meta["outputs"]):
        raise bad("outputs", "a list of output names")
    names = meta.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(c, str) for c in names)):
        raise bad("class_names", "null or a list of strings")
    if not isinstance(meta["preprocess"], dict):
        raise bad("preprocess", "an object")


def graph_body_hash(model: Any, base_dir: str | Path | None = None,
                    external_files: dict[str, str | Path] | None = None) -> str:
    """sha256 of everything in an ONNX model but its metadata_props (external weight bytes included).

    External data is read from ``base_dir / location``, or from ``external_files[location]`` (the exporter's
    temporary file, before it is published under the name the graph refers to).
    """
    import onnx

    body = onnx.ModelProto()
    body.CopyFrom(model)
    del body.metadata_props[:]
    digest = hashlib.sha256(body.SerializeToString(deterministic=True))
    for init in body.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            location = info.get("location", "")
            if external_files and location in external_files:
                file = Path(external_files[location])
            elif base_dir is None:
                raise ArtifactError(f"graph weight {init.name} is stored externally: give the graph's folder")
            else:
                file = Path(base_dir) / location
            offset, length = int(info.get("offset", 0) or 0), info.get("length")
            try:
                with open(file, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(int(length)) if length is not None else fh.read()
            except OSError as exc:
                raise ArtifactError(f"the external weights {file} of the graph cannot be read ({exc.strerror}): keep "
                                    "the .data file next to the graph") from None
            if length is not None and len(data) != int(length):
                raise ArtifactError(f"the external weights {file} of the graph are truncated: re-export the graph")
            digest.update(init.name.encode() + b"\0" + data)
    return digest.hexdigest()


def seal_graph(model: Any, meta: dict[str, Any], base_dir: str | Path | None = None,
               external_files: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Write oodgate's metadata into ``model`` with the graph body hash and a checksum of the metadata text.

    Call it last, once the graph body is final. Integrity against corruption and inconsistent edits, not
    authenticity: anyone can re-seal an edited graph (see README, "What the integrity checks guarantee").
    """
    meta = {**meta, "graph_sha256": graph_body_hash(model, base_dir, external_files)}
    text = json.dumps(meta, sort_keys=True)
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=text)
    model.metadata_props.add(key="oodgate.method", value=str(meta.get("method")))
    model.metadata_props.add(key="oodgate.threshold", value=repr(meta.get("threshold")))
    model.metadata_props.add(key=CHECKSUM_KEY, value=hashlib.sha256(text.encode()).hexdigest())
    return meta


def reseal_graph(model: Any, base_dir: str | Path | None = None) -> dict[str, Any]:
    """Re-seal a graph whose body you edited on purpose (e.g. its doc string), keeping its oodgate metadata."""
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ArtifactError("this graph has no oodgate metadata to re-seal: export it with `oodgate export`")
    meta = {k: v for k, v in json.loads(props[METADATA_KEY]).items() if k != "graph_sha256"}
    return seal_graph(model, meta, base_dir)


def baked_thresholds(model: Any) -> list[float]:
    """The finite scalar constants that the comparisons deciding is_ood compare with (walking back from is_ood
    through boolean operators only, so that comparisons inside the backbone are never taken for the threshold)."""
    from .onnx_graph import constant_values, graph_nodes, producers

    graph = model.graph
    made_by = producers(graph_nodes(graph))
    values = constant_values(graph)
    found: list[float] = []
    seen: set[str] = set()
    queue = ["is_ood"]
    while queue:
        node = made_by.get(queue.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op in _COMPARISONS:
            for name in node.inputs:
                value = values.get(name)
                if value is not None and value.size == 1 and np.isfinite(value).all():
                    found.append(float(value.reshape(())))
        elif node.op in ("Not", "And", "Or", "Xor", "Cast", "Identity"):
            queue.extend(i for i in node.inputs if i)
    return found


def _dims(value_info: Any) -> list[Any]:
    tt = value_info.type.tensor_type
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def verify_graph(model: Any, info: GraphInfo, source: str, base_dir: str | Path | None = None) -> None:
    """Check a graph against its metadata: body hash, baked threshold, input name/shape/channels, outputs and
    class-name count; raise one ArtifactError naming the first disagreement."""
    props = {p.key: p.value for p in model.metadata_props}
    text = props[METADATA_KEY]
    if props.get(CHECKSUM_KEY) != hashlib.sha256(text.encode()).hexdigest():
        raise ArtifactError(f"{source}: its oodgate metadata fails its checksum (edited or corrupt): re-export the "
                            "graph")
    if info.raw.get("graph_sha256") != graph_body_hash(model, base_dir):
        raise ArtifactError(f"{source}: the graph body does not match the hash in its metadata (edited or "
                            "corrupt weights/nodes): re-export the graph")
    baked = baked_thresholds(model)
    tau32 = float(np.float32(info.threshold))
    if not baked or any(b != tau32 for b in baked):
        raise ArtifactError(f"{source}: the threshold baked into the graph ({', '.join(f'{b:.9g}' for b in baked) or 'none found'}) "
                            f"is not the metadata's tau={info.threshold:.9g}: re-export the graph")
    inputs = {vi.name: vi for vi in model.graph.input}
    inits = {i.name for i in model.graph.initializer}
    feeds = [name for name in inputs if name not in inits]
    if info.input_name not in inputs or feeds != [info.input_name]:
        raise ArtifactError(f"{source}: metadata names input '{info.input_name}', the graph's inputs are {feeds}: "
                            "re-export the graph")
    dims = _dims(inputs[info.input_name])
    if len(dims) != 4 or any(isinstance(d, int) and d != s for d, s in zip(dims[1:], info.input_shape)):
        raise ArtifactError(f"{source}: metadata gives input shape (N, {', '.join(map(str, info.input_shape))}), the "
                            f"graph takes {dims}: re-export the graph")
    if info.preprocess.num_channels != info.input_shape[0]:
        raise ArtifactError(f"{source}: preprocessing makes {info.preprocess.num_channels}-channel inputs "
                            f"({info.preprocess.channels}), the graph takes {info.input_shape[0]}: re-export the graph")
    outputs = {vi.name: vi for vi in model.graph.output}
    if [o for o in info.outputs if o not in outputs] or not set(("logits", "score", "is_ood", "label")) <= set(outputs):
        raise ArtifactError(f"{source}: metadata lists outputs {list(info.outputs)}, the graph has {list(outputs)}: "
                            "re-export the graph")
    logits = _dims(outputs["logits"])
    # MOS's logits are its C + G group-head logits: there the names may only not outnumber them
    if info.class_names is not None and len(logits) == 2 and isinstance(logits[1], int) and logits[1] > 0 \
            and (len(info.class_names) > logits[1] or (info.method != "mos" and len(info.class_names) != logits[1])):
        raise ArtifactError(f"{source}: metadata holds {len(info.class_names)} class names, the graph has "
                            f"{logits[1]} logits: re-export the graph with one name per class")


def read_graph_info(path: str | Path, *, verify: bool = True) -> GraphInfo:
    """Read oodgate's metadata from an ONNX file and (``verify``) check the graph against it."""
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
    info = GraphInfo.from_json(props[METADATA_KEY], str(path))
    if verify and REQUIRE_SEAL and "graph_sha256" not in info.raw:
        raise ArtifactError(f"{path}: its oodgate metadata has no graph hash (graph_sha256): the graph was edited or "
                            "is damaged; re-export it")
    if verify:
        verify_graph(model, info, str(path), path.parent)
    return info


#: every graph of format version 2 is sealed by the exporter: one without a graph_sha256 was edited
REQUIRE_SEAL = True
