"""Reading an ONNX graph as data: nodes with their inputs/outputs, constants, tensor types and shapes, and the
reachability walks that the TensorRT audit and the FP32-head precision plan are built on. No torch, no onnxruntime.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError


@dataclass(frozen=True)
class NodeIO:
    """One node of a graph (an ONNX node or a TensorRT layer): its name, operator and tensor names."""

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def load_model(path_or_model: Any) -> Any:
    """An onnx.ModelProto from a path or a ModelProto (weights stored externally are not loaded)."""
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    path = Path(path_or_model)
    if not path.is_file():
        raise ArtifactError(f"no such graph file: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise ArtifactError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None


def node_name(node: Any, index: int) -> str:
    """The node's name, or a stable stand-in for unnamed nodes (``<op>#<index>``)."""
    return node.name or f"{node.op_type}#{index}"


def graph_nodes(graph: Any) -> list[NodeIO]:
    """The nodes of an ONNX graph (top level only) as NodeIO, in file (topological) order."""
    return [NodeIO(node_name(n, i), n.op_type, tuple(n.input), tuple(n.output)) for i, n in enumerate(graph.node)]


def constant_values(graph: Any) -> dict[str, np.ndarray]:
    """Values known without running the graph: initializers and the outputs of Constant nodes."""
    from onnx import numpy_helper

    values: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if init.data_location != 1:  # external data is not loaded; its value is unknown here
            try:
                values[init.name] = numpy_helper.to_array(init)
            except Exception:  # noqa: BLE001 - odd dtypes (strings, float8) are reported by the audit instead
                pass
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    try:
                        values[node.output[0]] = numpy_helper.to_array(attr.t)
                    except Exception:  # noqa: BLE001
                        pass
                elif attr.name in ("value_int", "value_ints"):
                    values[node.output[0]] = np.asarray(attr.i if attr.name == "value_int" else list(attr.ints))
                elif attr.name in ("value_float", "value_floats"):
                    values[node.output[0]] = np.asarray(attr.f if attr.name == "value_float" else list(attr.floats),
                                                        np.float32)
    return values


def infer_shapes(model: Any) -> Any:
    """The model with inferred value_info (the model itself if shape inference fails)."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a help, not a requirement
        return model


def tensor_types(model: Any) -> dict[str, tuple[int, tuple[Any, ...] | None]]:
    """name -> (ONNX element type, shape or None) for every typed tensor (inputs, outputs, value_info, weights).

    Shape entries are ints for fixed dimensions and strings (or None) for symbolic ones.
    """
    graph = model.graph
    out: dict[str, tuple[int, tuple[Any, ...] | None]] = {}
    for vi in (*graph.input, *graph.output, *graph.value_info):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out[vi.name] = (tt.elem_type, shape)
    for init in graph.initializer:
        out.setdefault(init.name, (init.data_type, tuple(init.dims)))
    return out


def consumers(nodes: Sequence[NodeIO]) -> dict[str, list[NodeIO]]:
    """tensor name -> the nodes that read it."""
    users: dict[str, list[NodeIO]] = defaultdict(list)
    for node in nodes:
        for name in dict.fromkeys(node.inputs):
            if name:
                users[name].append(node)
    return users


def producers(nodes: Sequence[NodeIO]) -> dict[str, NodeIO]:
    """tensor name -> the node that writes it."""
    return {out: node for node in nodes for out in node.outputs if out}


def descendants(nodes: Sequence[NodeIO], tensors: Iterable[str]) -> set[str]:
    """Names of the nodes that read ``tensors`` directly or through other nodes."""
    users = consumers(nodes)
    seen: set[str] = set()
    queue = deque(tensors)
    while queue:
        for node in users.get(queue.popleft(), ()):
            if node.name not in seen:
                seen.add(node.name)
                queue.extend(o for o in node.outputs if o)
    return seen


def ancestors(nodes: Sequence[NodeIO], tensors: Iterable[str]) -> set[str]:
    """Names of the nodes whose outputs ``tensors`` are computed from (the producers included)."""
    made_by = producers(nodes)
    seen: set[str] = set()
    queue = deque(tensors)
    while queue:
        node = made_by.get(queue.popleft())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            queue.extend(i for i in node.inputs if i)
    return seen


def subgraphs(node: Any) -> Iterator[Any]:
    """The graphs held in a node's attributes (Loop/Scan bodies, If branches)."""
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs
