"""The FP32-head precision plan: which nodes of an oodgate graph stay in FP32 when TensorRT builds it in FP16.

The detector head (everything computed from the pooled features: the classifier, clipping, masks, top-k sums,
exp(s1/s2) of SCALE/ASH-S/AdaSCALE, logsumexp, group softmax, the ECDF count, the threshold comparison) is kept in
FP32 because exp(r) and logsumexp overflow half precision (max 65504: exp(11.1) already does); the backbone,
where the time goes, runs in FP16.

The rule, applied to the ONNX graph here and to the TensorRT network in ``oodgate.runtime.tensorrt``:

1. The *pooled feature tensors* P: the output of a global pooling (GlobalAveragePool/GlobalMaxPool, or
   ReduceMean/ReduceMax over all spatial axes), followed through Reshape/Flatten/Squeeze/Identity to an (N, D)
   matrix. Squeeze-excitation pools inside the backbone stay (N, C, 1, 1) and feed a Conv, so they are not in
   P; AdaSCALE's perturbed-pass features h' are, although no classifier reads them. Without such a pooling
   (a backbone that ends in Flatten + Linear), P is the activation input of the Gemm/MatMul that computes the
   ``logits`` output.
2. The head = (descendants of P minus ancestors of P) plus the direct readers of P. Subtracting the ancestors
   keeps a second backbone pass (AdaSCALE's perturbed forward and its gradient, which depend on the first
   pass's logits) out of the head; the direct readers put the first pass's classifier back in.
3. Optionally the pooling chain itself (pool -> reshape), so that h enters the head at full precision.

A pure function of the graph: testable without TensorRT or a GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import OodgateError
from .onnx_graph import (NodeIO, ancestors, consumers, constant_values, descendants, graph_nodes, infer_shapes,
                         load_model, producers, tensor_types)

GLOBAL_POOL_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
REDUCE_POOL_OPS = frozenset({"ReduceMean", "ReduceMax"})
SHAPE_ONLY_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Identity"})
MATMUL_OPS = frozenset({"Gemm", "MatMul"})
#: ONNX float element types (FLOAT, FLOAT16, DOUBLE, BFLOAT16)
FLOAT_TYPES = frozenset({1, 10, 11, 16})


@dataclass(frozen=True)
class PrecisionPlan:
    """Nodes and tensors of a graph to pin to FP32 in an FP16 TensorRT build (see the module docstring)."""

    pooled: tuple[str, ...]
    nodes: tuple[str, ...]
    tensors: tuple[str, ...]
    pooling_nodes: tuple[str, ...]
    rule: str
    ops: dict[str, int] = field(default_factory=dict)

    def covers(self, node: str) -> bool:
        """Whether the ONNX node ``node`` is pinned to FP32."""
        return node in self._node_set

    @property
    def _node_set(self) -> frozenset[str]:
        return frozenset(self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: how many nodes stay FP32, from which tensor, by which operators."""
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(self.ops.items(), key=lambda kv: (-kv[1], kv[0])))
        return (f"FP32 head: {len(self.nodes)} nodes from {', '.join(self.pooled)} ({self.rule}; "
                f"{len(self.pooling_nodes)} pooling nodes included): {ops}")


def head_region(nodes: Sequence[NodeIO], pooled: Iterable[str], *, constant_ops: Iterable[str] = ("Constant",)
                ) -> set[str]:
    """Names of the head nodes: (descendants of ``pooled`` - their ancestors) + direct readers of ``pooled``, plus
    constant-producing nodes whose every reader is in the head. Works on ONNX nodes and on TensorRT layers."""
    pooled = [p for p in pooled if p]
    region = descendants(nodes, pooled) - ancestors(nodes, pooled)
    users = consumers(nodes)
    for p in pooled:
        region.update(n.name for n in users.get(p, ()))
    constant_ops = frozenset(constant_ops)
    for node in nodes:
        if node.op in constant_ops and node.name not in region:
            readers = [u for o in node.outputs for u in users.get(o, ())]
            if readers and all(u.name in region for u in readers):
                region.add(node.name)
    return region


def pooling_chain(nodes: Sequence[NodeIO], pooled: str, *, pool_ops: Iterable[str], shape_ops: Iterable[str]
                  ) -> list[str]:
    """The nodes from the pooling op to ``pooled`` (shape-only steps included), or [] if it is not pooled."""
    made_by = producers(nodes)
    pool_ops, shape_ops = frozenset(pool_ops), frozenset(shape_ops)
    chain: list[str] = []
    tensor = pooled
    while (node := made_by.get(tensor)) is not None:
        chain.append(node.name)
        if node.op in pool_ops:
            return chain
        if node.op not in shape_ops or not node.inputs:
            return []
        tensor = node.inputs[0]
    return []


def _reduces_spatial(node: Any, values: dict[str, Any], types: dict[str, Any]) -> bool:
    """Whether a ReduceMean/ReduceMax node reduces every axis after the channel axis of a rank >= 3 input."""
    axes = None
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] in values:
            axes = [int(a) for a in values[node.input[1]].ravel()]
    else:
        for attr in node.attribute:
            if attr.name == "axes":
                axes = list(attr.ints)
    shape = types.get(node.input[0], (None, None))[1]
    if axes is None or shape is None or len(shape) < 3:
        return False
    rank = len(shape)
    return sorted(a % rank for a in axes) == list(range(2, rank))


def _rank(types: dict[str, Any], tensor: str) -> int | None:
    shape = types.get(tensor, (None, None))[1]
    return None if shape is None else len(shape)


def find_pooled(model: Any) -> tuple[list[str], dict[str, list[str]], str]:
    """(pooled feature tensors, pooling chain per pooled tensor, rule used) of an ONNX model."""
    graph = model.graph
    nodes = graph_nodes(graph)
    values = constant_values(graph)
    types = tensor_types(model)
    users = consumers(nodes)
    by_name = {node_io.name: proto for node_io, proto in zip(nodes, graph.node)}
    pooled: list[str] = []
    chains: dict[str, list[str]] = {}
    for node_io in nodes:
        proto = by_name[node_io.name]
        if not (node_io.op in GLOBAL_POOL_OPS or (node_io.op in REDUCE_POOL_OPS
                                                  and _reduces_spatial(proto, values, types))):
            continue
        tensor = node_io.outputs[0]
        chain = [node_io.name]
        while _rank(types, tensor) != 2:
            shape_readers = [r for r in users.get(tensor, []) if r.op in SHAPE_ONLY_OPS and r.inputs[0] == tensor]
            if len(shape_readers) != 1:
                break
            chain.append(shape_readers[0].name)
            tensor = shape_readers[0].outputs[0]
        rank = _rank(types, tensor)
        if rank == 2 or (rank is None and len(chain) > 1):
            pooled.append(tensor)
            chains[tensor] = chain
    if pooled:
        return pooled, chains, "global pooling to (N, D) features"
    # fallback: the activation input of the matrix product that computes the 'logits' output
    made_by = producers(nodes)
    out_names = [o.name for o in graph.output]
    tensor = "logits" if "logits" in out_names else (out_names[0] if out_names else "")
    node = made_by.get(tensor)
    if node is not None and node.op == "Add":  # MatMul + Add(bias)
        node = next((made_by[i] for i in node.inputs if i in made_by and made_by[i].op in MATMUL_OPS), node)
    if node is not None and node.op in MATMUL_OPS:
        act = [i for i in node.inputs[:2] if i and i not in values]
        if act:
            return [act[0]], {act[0]: []}, f"input of the matrix product that computes '{tensor}'"
    raise OodgateError("cannot find the pooled features in this graph (no global pooling to (N, D) features, and "
                       f"'{tensor}' is not computed by a Gemm/MatMul): the FP32-head plan needs them; build in FP32 "
                       "or export the classifier with a final nn.Linear")


def input_guard_nodes(model: Any) -> list[str]:
    """The nodes of the graph's non-finite-input guard (sum(input * 0), added to the score): Mul of the graph
    input by a constant 0, then ReduceSum/Cast. Kept in FP32 with the head, so that FP16 sees the input's own NaN/inf."""
    from .onnx_graph import constant_values

    nodes = graph_nodes(model.graph)
    inits = {i.name for i in model.graph.initializer}
    inputs = {vi.name for vi in model.graph.input} - inits
    values = constant_values(model.graph)
    users = consumers(nodes)
    found: list[str] = []
    for node in nodes:
        if node.op != "Mul" or not inputs & set(node.inputs):
            continue
        others = [values.get(i) for i in node.inputs if i not in inputs]
        if len(others) != 1 or others[0] is None or others[0].size != 1 or float(others[0].reshape(())) != 0.0:
            continue
        chain, current = [node.name], node
        while len(next_users := [u for o in current.outputs for u in users.get(o, ())]) == 1 and \
                next_users[0].op in ("ReduceSum", "Cast"):
            current = next_users[0]
            chain.append(current.name)
        found.extend(chain)
    return found


def fp32_head_plan(path_or_model: Any, *, include_pooling: bool = True) -> PrecisionPlan:
    """The nodes of an oodgate graph that stay in FP32 in an FP16 TensorRT engine (the detector head)."""
    model = infer_shapes(load_model(path_or_model))
    pooled, chains, rule = find_pooled(model)
    nodes = graph_nodes(model.graph)
    region = head_region(nodes, pooled)
    region.update(input_guard_nodes(model))
    pool_nodes: list[str] = []
    if include_pooling:
        for p in pooled:
            pool_nodes.extend(n for n in chains.get(p, []) if n not in region)
        region.update(pool_nodes)
    types = tensor_types(model)
    ordered = [n for n in nodes if n.name in region]
    tensors = [o for n in ordered for o in n.outputs if o and types.get(o, (1, None))[0] in FLOAT_TYPES]
    ops = Counter(n.op for n in ordered)
    return PrecisionPlan(tuple(pooled), tuple(n.name for n in ordered), tuple(tensors), tuple(pool_nodes), rule,
                         dict(ops))
