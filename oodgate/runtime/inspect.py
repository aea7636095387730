"""Describing a graph: what `oodgate inspect` prints (no torch, no onnxruntime needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .metadata import read_graph_info


def _shape(value_info: Any) -> list[Any]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def _dtype(value_info: Any) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name


def describe_graph(path: str | Path) -> dict[str, Any]:
    """Method, threshold, preprocessing, classes, inputs/outputs, opsets and operator counts of a graph."""
    import onnx

    info = read_graph_info(path)
    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    for fn in model.functions:
        ops.update(n.op_type for n in fn.node)
    classes = info.class_names or []
    return {
        "path": str(path), "file_bytes": Path(path).stat().st_size, "method": info.method, "params": info.params,
        "threshold": info.threshold, "tpr": info.tpr, "score": "higher = in-distribution; is_ood = NOT(threshold <= score < inf)",
        "preprocess": info.preprocess.to_dict(), "num_classes": len(classes),
        "class_names_preview": classes[:5], "calibration_hash": info.calibration_hash,
        "oodgate_version": info.oodgate_version, "producer": f"{model.producer_name} {model.producer_version}",
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "inputs": [{"name": i.name, "shape": _shape(i), "dtype": _dtype(i)} for i in model.graph.input],
        "outputs": [{"name": o.name, "shape": _shape(o), "dtype": _dtype(o)} for o in model.graph.output],
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "metadata": info.raw,
    }


def format_description(desc: dict[str, Any]) -> str:
    """Human-readable text of ``describe_graph``."""
    params = ", ".join(f"{k}={v}" for k, v in desc["params"].items()) or "—"
    lines = [
        f"{desc['path']}  ({desc['file_bytes'] / 1e6:.2f} MB, {desc['producer']}, opsets {desc['opsets']})",
        f"method     {desc['method']} ({params})",
        f"threshold  {desc['threshold']:.6g} (keeps {100 * desc['tpr']:g} % of held-out ID; {desc['score']})",
        f"preprocess {desc['preprocess']}",
        f"classes    {desc['num_classes']} ({', '.join(map(str, desc['class_names_preview']))}"
        f"{', …' if desc['num_classes'] > 5 else ''})",
        f"calibration {desc['calibration_hash'][:16]}…  oodgate {desc['oodgate_version']}",
        "inputs     " + "; ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in desc["inputs"]),
        "outputs    " + "; ".join(f"{o['name']} {o['dtype']} {o['shape']}" for o in desc["outputs"]),
        "ops        " + ", ".join(f"{k}×{v}" for k, v in desc["ops"].items()),
    ]
    return "\n".join(lines)
