"""A dynamic batch axis for a graph exported at one static batch size (the fast way through torch.onnx's dynamo).

torch.export with a symbolic batch dimension reasons about every shape with sympy: on AdaSCALE's gradient graphs
that is ~40 % of the export (digits CNN: 9.1 s dynamic vs 5.3 s static). So oodgate exports at a static batch of
``STATIC_BATCH`` — a prime no other dimension of an image model takes — and then makes that axis dynamic: every
integer constant holding the batch size (or a multiple of it: a reshape to batch x heads) is recomputed from the
input's shape in the graph, a constant with a batch-sized axis along which it repeats is expanded to the input's batch, and the inputs' and outputs' first dimension becomes 'batch'. The result is run by ONNX
Runtime at two other batch sizes before it is used; where anything does not fit (a batch size inside an attribute or
a subgraph, a graph that does not run at another batch size) the caller exports with a symbolic batch instead.
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


#: where generalise_batch last gave up (a line number of this file; for diagnostics)
LAST_REFUSAL: list[int] = []


def _refuse(line: int) -> None:
    LAST_REFUSAL[:] = [line]
    return None


def _batch_entries(values: np.ndarray, batch: int) -> np.ndarray:
    """Mask of the entries of an int constant that are a positive multiple of the batch size."""
    return (values != 0) & (values % batch == 0) & (values > 0)


def generalise_batch(model: Any, batch: int = STATIC_BATCH) -> Any | None:
    """A copy of ``model`` (exported at batch ``batch``) whose batch axis is dynamic, or None where that cannot be
    done safely (the batch size in a node attribute, a subgraph, or no input carrying it)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                return _refuse(46)
            if attr.type == onnx.AttributeProto.INT and attr.i != 0 and attr.i % batch == 0:
                return _refuse(48)
            if attr.type == onnx.AttributeProto.INTS and any(v != 0 and v % batch == 0 for v in attr.ints):
                return _refuse(50)
    initializer_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    if not inputs:
        return _refuse(54)
    for value in (*inputs, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != batch:
            return _refuse(58)
        dims[0].dim_param = "batch"  # clears dim_value (a oneof)
    del graph.value_info[:]  # shapes inferred at the static batch; ONNX Runtime infers them again

    readers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node.op_type, i))
    for out in graph.output:
        readers.setdefault(out.name, []).append(("graph output", 0))

    def is_batch_shape(name: str, values: np.ndarray) -> bool | None:
        """True: a shape holding the batch size; False: not one; None: undecidable (give up)."""
        if values.size > _MAX_SHAPE_LEN or values.ndim > 1 or not _batch_entries(values, batch).any():
            return False
        at_shape = [i in SHAPE_INPUTS.get(op, ()) for op, i in readers.get(name, [])]
        if all(at_shape) and at_shape:
            return True
        return None if any(at_shape) else False

    nodes = [helper.make_node("Shape", [inputs[0].name], ["oodgate_batch"], start=0, end=1,
                              name="oodgate_batch_size")]
    kept_inits = []
    uses = 0
    def batch_sized(name: str, dims: list[int], fetch: Any) -> list[Any] | None | bool:
        """A constant with the batch size in its shape (the ones of a backward pass, a per-channel vector the
        optimiser expanded over the batch): nodes that rebuild it at the input's batch when its values repeat along
        every batch-sized axis, None when they do not (give up), False when its shape holds no batch size."""
        nonlocal uses
        if not any(d != 0 and d % batch == 0 for d in dims):
            return False
        if any(d != batch and d != 0 and d % batch == 0 for d in dims):
            return _refuse(90)  # batch x something: which rows repeat is undecidable here
        base = fetch()
        if base.size == 0:
            return _refuse(93)
        steps = []  # (axis, step): integer values growing by `step` per row along a batch axis (flat indices n*C + c)
        for axis, d in enumerate(dims):
            if d == batch:
                first = np.take(base, [0], axis=axis)
                step = np.take(base, [1], axis=axis) - first if base.dtype.kind in "iu" else None
                rows = np.arange(batch).reshape([-1 if a == axis else 1 for a in range(base.ndim)])
                if np.array_equal(base, np.broadcast_to(first, base.shape)):
                    pass
                elif step is not None and np.array_equal(base, first + rows * step):
                    steps.append((axis, np.ascontiguousarray(step)))
                else:
                    return _refuse(98)
                base = first
        p = f"oodgate_batch_{uses}"
        uses += 1
        shape = _recompute(f"{p}_shape", np.asarray(dims, np.int64), batch, uses)
        uses += 1
        out = [*shape, helper.make_node("Constant", [], [f"{p}_v"], value=numpy_helper.from_array(
            np.ascontiguousarray(base), f"{p}_v"))]
        value = f"{p}_v"
        for k, (axis, step) in enumerate(steps):  # + arange(N) (along axis) * step
            q = f"{p}_s{k}"
            out += [helper.make_node("Constant", [], [f"{q}_0"], value=numpy_helper.from_array(
                        np.array(0, base.dtype), f"{q}_0")),
                    helper.make_node("Constant", [], [f"{q}_1"], value=numpy_helper.from_array(
                        np.array(1, base.dtype), f"{q}_1")),
                    helper.make_node("Squeeze", ["oodgate_batch"], [f"{q}_n64"]),
                    helper.make_node("Cast", [f"{q}_n64"], [f"{q}_n"], to=helper.np_dtype_to_tensor_dtype(base.dtype)),
                    helper.make_node("Range", [f"{q}_0", f"{q}_n", f"{q}_1"], [f"{q}_r"]),
                    helper.make_node("Constant", [], [f"{q}_shape"], value=numpy_helper.from_array(
                        np.array([-1 if a == axis else 1 for a in range(base.ndim)], np.int64), f"{q}_shape")),
                    helper.make_node("Reshape", [f"{q}_r", f"{q}_shape"], [f"{q}_rows"]),
                    helper.make_node("Constant", [], [f"{q}_step"], value=numpy_helper.from_array(step, f"{q}_step")),
                    helper.make_node("Mul", [f"{q}_rows", f"{q}_step"], [f"{q}_grow"]),
                    helper.make_node("Add", [value, f"{q}_grow"], [f"{q}_v"])]
            value = f"{q}_v"
        return [*out, helper.make_node("Expand", [value, f"{p}_shape"], [name])]

    for init in graph.initializer:
        rebuilt = batch_sized(init.name, list(init.dims), lambda init=init: numpy_helper.to_array(init))
        if rebuilt is None:
            return _refuse(110)
        if rebuilt:
            nodes += rebuilt
            continue
        values = numpy_helper.to_array(init) if init.data_type in _INT_TYPES else None
        verdict = False if values is None else is_batch_shape(init.name, values)
        if verdict is None:
            return _refuse(117)
        if not verdict:
            kept_inits.append(init)
            continue
        nodes += _recompute(init.name, values, batch, uses)
        uses += 1
    body = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            rebuilt = batch_sized(node.output[0], list(tensor.dims), lambda t=tensor: numpy_helper.to_array(t))
            if rebuilt is None:
                return _refuse(129)
            if rebuilt:
                nodes += rebuilt
                continue
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value" \
                and node.attribute[0].t.data_type in _INT_TYPES:
            values = numpy_helper.to_array(node.attribute[0].t)
            verdict = is_batch_shape(node.output[0], values)
            if verdict is None:
                return _refuse(138)
            if verdict:
                nodes += _recompute(node.output[0], values, batch, uses)
                uses += 1
                continue
        elif node.op_type == "Constant" and any(a.name in ("value_int", "value_ints") for a in node.attribute):
            ints = [a for a in node.attribute if a.name in ("value_int", "value_ints")][0]
            flat = [ints.i] if ints.name == "value_int" else list(ints.ints)
            if any(v != 0 and v % batch == 0 for v in flat):
                return _refuse(147)
        body.append(node)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.node[:]
    graph.node.extend(nodes + body)
    return model


def _recompute(name: str, values: np.ndarray, batch: int, index: int) -> list[Any]:
    """Nodes computing ``name`` = ``values`` with each multiple k*batch replaced by k*N (N: the input's batch)."""
    from onnx import helper, numpy_helper

    dtype = values.dtype
    multiple = np.where(_batch_entries(values, batch), values // batch, 0).astype(dtype)
    rest = np.where(_batch_entries(values, batch), 0, values).astype(dtype)
    p = f"oodgate_batch_{index}"
    n = "oodgate_batch"
    nodes = []
    if dtype != np.int64:
        nodes.append(helper.make_node("Cast", [n], [f"{p}_n"], to=helper.np_dtype_to_tensor_dtype(dtype)))
        n = f"{p}_n"
    if values.ndim == 0:
        nodes.append(helper.make_node("Squeeze", [n], [f"{p}_n0"]))
        n = f"{p}_n0"
    nodes += [
        helper.make_node("Constant", [], [f"{p}_k"], value=numpy_helper.from_array(multiple, f"{p}_k")),
        helper.make_node("Constant", [], [f"{p}_c"], value=numpy_helper.from_array(rest, f"{p}_c")),
        helper.make_node("Mul", [n, f"{p}_k"], [f"{p}_kn"]),
        helper.make_node("Add", [f"{p}_kn", f"{p}_c"], [name]),
    ]
    return nodes


def runs_at_other_batches(model: Any, example: tuple[np.ndarray, ...], batches: tuple[int, ...] = (1, 3)) -> bool:
    """True when ONNX Runtime runs ``model`` at each of ``batches`` (rows of ``example``) and every output's first
    dimension is that batch size."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
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
