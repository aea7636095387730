"""A dynamic batch axis for a graph exported at one static batch size (the fast way through torch.onnx's dynamo).

torch.export with a symbolic batch dimension reasons about every shape with sympy: on AdaSCALE's gradient graphs
that is a large share of the export (docs/BENCHMARKS.md, question 6, times both routes). So oodgate exports at a
static batch of ``STATIC_BATCH`` — a prime no other dimension of an image model takes — and then makes that axis
dynamic: every integer constant holding the batch size (or a multiple of it: a reshape to batch x heads) at a shape
input is recomputed from the input's shape in the graph, a constant with a batch-sized axis along which it repeats
(or grows by a fixed step: flat indices) is rebuilt at the input's batch, and the inputs' and outputs' first
dimension becomes 'batch'. The caller runs the result with ONNX Runtime at two other batch sizes before using it;
where anything does not fit (a batch size inside an attribute or a subgraph, a graph that does not run at another
batch size) the caller exports with a symbolic batch instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: the batch size of the static export: a prime larger than the channel groups / heads of common image models and
#: not a spatial size, so that a constant equal to it (or to a multiple) is the batch
STATIC_BATCH = 97
#: int tensor types: INT32, INT64
_INT_TYPES = (6, 7)
#: the inputs that are shapes / extents (op type -> input positions): only constants read there are batch sizes
SHAPE_INPUTS = {"Reshape": {1}, "Expand": {1}, "ConstantOfShape": {0}, "Tile": {1}, "Slice": {1, 2}, "Range": {0, 1},
                "Resize": {3}}
#: a shape constant has at most this many entries
_MAX_SHAPE_LEN = 8


def _batch_entries(values: np.ndarray, batch: int) -> np.ndarray:
    """Mask of the entries of an int constant that are a positive multiple of the batch size."""
    return (values > 0) & (values % batch == 0)


def _holds_batch(ints: Any, batch: int) -> bool:
    return any(v != 0 and v % batch == 0 for v in ints)


def generalise_batch(model: Any, batch: int = STATIC_BATCH) -> Any | None:
    """A copy of ``model`` (exported at batch ``batch``) whose batch axis is dynamic, or None where that cannot be
    done safely (the batch size in a node attribute, a subgraph, a batch-sized constant that neither repeats nor
    grows along the batch, an int constant read both as a shape and as data, no input carrying the batch)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or (
                    attr.type == onnx.AttributeProto.INT and _holds_batch([attr.i], batch)) or (
                    attr.type == onnx.AttributeProto.INTS and _holds_batch(attr.ints, batch)):
                return None  # (also Constant's value_int / value_ints)
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if not inputs:
        return None
    for value in (*inputs, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != batch:
            return None
        dims[0].dim_param = "batch"  # clears dim_value (a oneof)
    del graph.value_info[:]  # shapes inferred at the static batch; ONNX Runtime infers them again

    readers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node.op_type, i))
    for out in graph.output:
        readers.setdefault(out.name, []).append(("graph output", 0))

    def rebuild(name: str, tensor: Any) -> list[Any] | None | bool:
        """Nodes computing constant ``name`` at the input's batch; False: it holds no batch size (kept as is);
        None: undecidable (give up)."""
        if _holds_batch(tensor.dims, batch):  # a batch-sized axis: the ones of a backward pass, flat indices
            return _expanded(name, numpy_helper.to_array(tensor), list(tensor.dims), batch)
        if tensor.data_type not in _INT_TYPES or len(tensor.dims) > 1:
            return False
        values = numpy_helper.to_array(tensor)
        if values.size > _MAX_SHAPE_LEN or not _batch_entries(values, batch).any():
            return False
        at_shape = [i in SHAPE_INPUTS.get(op, ()) for op, i in readers.get(name, [])]
        if not any(at_shape):
            return False  # data that happens to hold a multiple of the batch size
        return _recompute(name, values, batch) if all(at_shape) else None

    nodes = [onnx.helper.make_node("Shape", [inputs[0].name], [_N], start=0, end=1, name="oodgate_batch_size")]
    kept_inits, body = [], []
    for init in graph.initializer:
        rebuilt = rebuild(init.name, init)
        if rebuilt is None:
            return None
        if rebuilt:
            nodes += rebuilt
        else:
            kept_inits.append(init)
    for node in graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            rebuilt = rebuild(node.output[0], node.attribute[0].t)
            if rebuilt is None:
                return None
            if rebuilt:
                nodes += rebuilt
                continue
        body.append(node)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.node[:]
    graph.node.extend(nodes + body)
    return model


#: the input's batch size as a 1-element int64 tensor, computed first in the generalised graph
_N = "oodgate_batch"


def _const(name: str, value: np.ndarray) -> Any:
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _batch_as(dtype: np.dtype, prefix: str, scalar: bool) -> tuple[list[Any], str]:
    """(nodes, name) of the input's batch size as ``dtype``, a scalar or a 1-element tensor."""
    from onnx import helper

    nodes, n = [], _N
    if dtype != np.int64:
        nodes.append(helper.make_node("Cast", [n], [f"{prefix}_n"], to=helper.np_dtype_to_tensor_dtype(dtype)))
        n = f"{prefix}_n"
    if scalar:
        nodes.append(helper.make_node("Squeeze", [n], [f"{prefix}_n0"]))
        n = f"{prefix}_n0"
    return nodes, n


def _recompute(name: str, values: np.ndarray, batch: int) -> list[Any]:
    """Nodes computing ``name`` = ``values`` with each multiple k*batch replaced by k*N (N: the input's batch)."""
    from onnx import helper

    at = _batch_entries(values, batch)
    p = f"{name}__oodgate_batch"
    nodes, n = _batch_as(values.dtype, p, values.ndim == 0)
    return [*nodes, _const(f"{p}_k", np.where(at, values // batch, 0).astype(values.dtype)),
            _const(f"{p}_c", np.where(at, 0, values).astype(values.dtype)),
            helper.make_node("Mul", [n, f"{p}_k"], [f"{p}_kn"]), helper.make_node("Add", [f"{p}_kn", f"{p}_c"], [name])]


def _expanded(name: str, values: np.ndarray, dims: list[int], batch: int) -> list[Any] | None:
    """Nodes computing a constant whose batch-sized axes (dims == batch) repeat, or grow by a fixed integer step
    per row (flat indices n*C + c), at the input's batch: Expand(first row [+ arange(N) * step], shape); None when
    an axis does neither or a dimension is a larger multiple of the batch."""
    from onnx import helper

    if values.size == 0 or any(d != batch for d in dims if d != 0 and d % batch == 0):
        return None
    p = f"{name}__oodgate_batch"
    base, steps = values, []
    for axis, d in enumerate(dims):
        if d != batch:
            continue
        first = np.take(base, [0], axis=axis)
        if not np.array_equal(base, np.broadcast_to(first, base.shape)):
            if base.dtype.kind not in "iu":
                return None
            step = np.take(base, [1], axis=axis) - first
            rows = np.arange(batch).reshape([-1 if a == axis else 1 for a in range(base.ndim)])
            if not np.array_equal(base, first + rows * step):
                return None
            steps.append((axis, step))
        base = first
    nodes = [*_recompute(f"{p}_shape", np.asarray(dims, np.int64), batch), _const(f"{p}_v", base)]
    value = f"{p}_v"
    for k, (axis, step) in enumerate(steps):  # value += arange(N) (along axis) * step
        q = f"{p}_s{k}"
        n_nodes, n = _batch_as(base.dtype, q, scalar=True)
        nodes += [*n_nodes, _const(f"{q}_0", np.array(0, base.dtype)), _const(f"{q}_1", np.array(1, base.dtype)),
                  helper.make_node("Range", [f"{q}_0", n, f"{q}_1"], [f"{q}_r"]),
                  _const(f"{q}_shape", np.array([-1 if a == axis else 1 for a in range(base.ndim)], np.int64)),
                  helper.make_node("Reshape", [f"{q}_r", f"{q}_shape"], [f"{q}_rows"]), _const(f"{q}_step", step),
                  helper.make_node("Mul", [f"{q}_rows", f"{q}_step"], [f"{q}_grow"]),
                  helper.make_node("Add", [value, f"{q}_grow"], [f"{q}_v"])]
        value = f"{q}_v"
    return [*nodes, helper.make_node("Expand", [value, f"{p}_shape"], [name])]


def runs_at_other_batches(model: Any, example: tuple[np.ndarray, ...], batches: tuple[int, ...] = (1, 3)) -> bool:
    """True when ONNX Runtime runs ``model`` at each of ``batches`` (rows of ``example``) and every output's first
    dimension is that batch size.

    The session has graph optimisation off: this probe asks whether the graph runs at those batch sizes, and the
    exported graph is then checked against PyTorch under full optimisation (oodgate.export). Measured during
    development on a ResNet-50-sized AdaSCALE graph (1 thread): the optimised session took 0.79 s to create, this one
    0.15 s; their runs at batch 1 and 3: 0.35 and 0.97 s optimised, 0.36 and 1.06 s not."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for b in batches:
            feeds = {name: np.ascontiguousarray(x[np.arange(b) % len(x)]) for name, x in zip(names, example)}
            outputs = sess.run(None, feeds)
            if any(np.ndim(o) == 0 or np.shape(o)[0] != b for o in outputs):
                return False
    except Exception:  # noqa: BLE001 - any failure: not usable, the caller exports with a symbolic batch
        return False
    return True


__all__ = ["STATIC_BATCH", "generalise_batch", "runs_at_other_batches"]
