"""Static TensorRT compatibility audit of an ONNX graph: what TensorRT's ONNX parser will refuse, found on a CPU.

The operator list and restrictions follow the support matrix of the ONNX-TensorRT parser for TensorRT 10
(onnx-tensorrt ``docs/operators.md``: opsets 9 to 24 as of TensorRT 10.15; opset 20 as of 10.0) and the
TopK layer's documented limit k <= 3840. A graph that passes can still fail on a GPU (memory, tactics, a newer
restriction); one that fails here will not build. Findings are ``error`` (the parser or builder rejects it),
``warning`` (it builds only under a condition, or on some TensorRT versions) or ``info``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .onnx_graph import constant_values, infer_shapes, load_model, node_name, subgraphs, tensor_types

#: ONNX operators (default domain) that TensorRT 10's ONNX parser imports
TRT_SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow Cast
CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu
Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool
Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow
PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze
Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

#: operators the parser's support matrix lists as not supported
TRT_UNSUPPORTED_OPS: frozenset[str] = frozenset("""
AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor CenterCropPad Col2Im Compress
ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool MaxUnpool
MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength
SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
""".split())

#: the TopK layer's limit on k (TensorRT operator documentation: k <= 3840)
TOPK_MAX_K = 3840
#: opsets of the default domain the parser reads (TensorRT 10.0 reads up to 20; 10.15 up to 24)
MIN_OPSET, MAX_OPSET_TRT10_0, MAX_OPSET = 9, 20, 24

# ONNX TensorProto element types
_DTYPE_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
                8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64",
                15: "COMPLEX128", 16: "BFLOAT16", 17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2",
                20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1"}
#: element types TensorRT computes with
TRT_DTYPES = frozenset({1, 6, 7, 9, 10, 16})
#: quantized types: only as the output of QuantizeLinear / input of DequantizeLinear
QUANTIZED_DTYPES = frozenset({3, 17, 22, 23})
REDUCE_OPS = frozenset(op for op in TRT_SUPPORTED_OPS if op.startswith("Reduce"))
POOL_OPS = frozenset({"AveragePool", "MaxPool", "LpPool"})


@dataclass(frozen=True)
class Finding:
    """One audit result: severity ('error' | 'warning' | 'info'), the node and operator, and what to do."""

    severity: str
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op})" if self.node else self.op
        return f"{self.severity.upper():<7} {where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def dtype_name(elem_type: int) -> str:
    """The ONNX name of an element type."""
    return _DTYPE_NAMES.get(elem_type, str(elem_type))


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Auditor:
    def __init__(self, model: Any) -> None:
        self.model = model
        self.findings: list[Finding] = []
        self.values: dict[str, np.ndarray] = {}
        self.types: dict[str, tuple[int, Any]] = {}
        self.functions = {(f.domain, f.name): f for f in model.functions}

    def add(self, severity: str, node: str, op: str, message: str) -> None:
        self.findings.append(Finding(severity, node, op, message))

    # -- the whole model ------------------------------------------------------------------------------------
    def run(self) -> list[Finding]:
        opsets = {imp.domain or "ai.onnx": imp.version for imp in self.model.opset_import}
        opset = opsets.get("ai.onnx")
        if opset is not None and opset < MIN_OPSET:
            self.add("error", "", "opset", f"default-domain opset {opset} is older than {MIN_OPSET}, the oldest "
                                           "TensorRT's parser reads: re-export with opset >= 17")
        elif opset is not None and opset > MAX_OPSET:
            self.add("error", "", "opset", f"opset {opset} is newer than the {MAX_OPSET} TensorRT 10.15 reads: "
                                           "re-export with an older opset (oodgate exports 18)")
        elif opset is not None and opset > MAX_OPSET_TRT10_0:
            self.add("warning", "", "opset", f"opset {opset} needs a TensorRT 10 release newer than 10.0 (which reads "
                                             f"up to {MAX_OPSET_TRT10_0})")
        graph = self.model.graph
        self.values = constant_values(graph)
        self.types = tensor_types(self.model)
        self._io(graph)
        self._graph(graph, top=True)
        for fn in self.model.functions:
            self._function(fn)
        return self.findings

    def _io(self, graph: Any) -> None:
        for kind, items in (("input", graph.input), ("output", graph.output)):
            for vi in items:
                if not vi.type.HasField("tensor_type"):
                    self.add("error", vi.name, f"graph {kind}", "not a tensor (sequence/map/optional): TensorRT "
                                                                "takes tensors only")
                    continue
                et = vi.type.tensor_type.elem_type
                if et not in TRT_DTYPES and et != 2:  # UINT8 is allowed as network input/output
                    self.add("error", vi.name, f"graph {kind}", f"element type {dtype_name(et)} is not a TensorRT "
                                                                "I/O type (FLOAT, FLOAT16, BFLOAT16, INT32, INT64, "
                                                                "BOOL, UINT8)")
        for vi in graph.input:
            dims = vi.type.tensor_type.shape.dim
            dynamic = [i for i, d in enumerate(dims) if i > 0 and not d.HasField("dim_value")]
            if dynamic:
                self.add("warning", vi.name, "graph input", f"axes {dynamic} besides the batch axis are dynamic: the "
                                                           "optimisation profile must give min/opt/max for each of "
                                                           "them (oodgate's profiles cover the batch axis only)")

    def _function(self, fn: Any) -> None:
        for i, node in enumerate(fn.node):
            self._node(node, f"{fn.name}/{node_name(node, i)}")

    def _graph(self, graph: Any, top: bool = False) -> None:
        if not top:
            self.values.update(constant_values(graph))
        for init in graph.initializer:
            self._dtype(init.data_type, init.name, "initializer", weight=True)
        for i, node in enumerate(graph.node):
            self._node(node, node_name(node, i))
            for sub in subgraphs(node):
                self._graph(sub)

    # -- element types --------------------------------------------------------------------------------------
    def _dtype(self, et: int, where: str, op: str, *, weight: bool = False, quantized_ok: bool = False) -> None:
        if et in TRT_DTYPES or et == 0:
            return
        name = dtype_name(et)
        if et == 11:
            self.add("warning", where, op, "DOUBLE: TensorRT casts it down to FLOAT (values clamped to ±FLT_MAX); "
                                           "export in float32")
        elif et in QUANTIZED_DTYPES:
            if not quantized_ok:
                self.add("warning", where, op, f"{name} is a quantized type in TensorRT: supported only through "
                                               "QuantizeLinear/DequantizeLinear")
        elif et == 2:
            if not weight:
                self.add("warning", where, op, "UINT8 is supported only as a network input or output")
        else:
            self.add("error", where, op, f"element type {name} is not supported by TensorRT")

    # -- one node -------------------------------------------------------------------------------------------
    def _node(self, node: Any, name: str) -> None:
        op = node.op_type
        domain = node.domain or ""
        if domain not in ("", "ai.onnx"):
            if (domain, op) in self.functions:
                return  # a model-local function: its body is audited
            self.add("error", name, op, f"operator of domain '{domain}' is imported only as a TensorRT plugin of "
                                        "that name: register the plugin or re-export with standard ONNX operators")
            return
        if (domain, op) in self.functions or ("", op) in self.functions:
            return
        if op in TRT_UNSUPPORTED_OPS:
            self.add("error", name, op, "not supported by TensorRT's ONNX parser: rewrite the model without it")
            return
        if op not in TRT_SUPPORTED_OPS:
            self.add("error", name, op, "not in TensorRT's ONNX parser support list: rewrite the model without it")
            return
        quantized_ok = op in ("QuantizeLinear", "DequantizeLinear")
        for out in node.output:
            if out and out in self.types:
                self._dtype(self.types[out][0], name, op, quantized_ok=quantized_ok)
        check = getattr(self, f"_check_{op}", None)
        if check is not None:
            check(node, name)
        if op in REDUCE_OPS:
            self._const_input(node, name, 1, "axes")
        if op in POOL_OPS:
            self._pool(node, name)

    def _is_const(self, tensor: str) -> bool:
        return tensor in self.values

    def _const_input(self, node: Any, name: str, index: int, what: str) -> None:
        if len(node.input) > index and node.input[index] and not self._is_const(node.input[index]):
            self.add("error", name, node.op_type, f"'{what}' ({node.input[index]}) is computed at run time; TensorRT "
                                                  "needs it as an initializer/constant: export it as a constant")

    def _shape(self, tensor: str) -> tuple[Any, ...] | None:
        return self.types.get(tensor, (0, None))[1]

    # -- operator-specific restrictions ------------------------------------------------------------------------
    def _check_TopK(self, node: Any, name: str) -> None:
        shape = self._shape(node.input[0])
        axis = int(_attr(node, "axis", -1))
        dim = None
        if shape is not None and shape:
            d = shape[axis % len(shape)]
            dim = d if isinstance(d, int) and d > 0 else None
        if len(node.input) < 2 or not node.input[1]:
            k_val = _attr(node, "k")
            k = None if k_val is None else int(k_val)
        elif self._is_const(node.input[1]):
            k = int(np.asarray(self.values[node.input[1]]).ravel()[0])
        else:
            k = None
            bound = f"; the axis has {dim} entries, so k <= {dim}" if dim else ""
            severity = "warning" if dim is not None and dim <= TOPK_MAX_K else "error"
            self.add(severity, name, "TopK", f"k ({node.input[1]}) is computed at run time (dynamic-k TopK): parsers "
                                             f"before TensorRT 10 require an initializer, and k must stay <= "
                                             f"{TOPK_MAX_K} at run time{bound}. Prefer a constant k (e.g. top-k at "
                                             "the largest k, then a mask)")
        if k is not None and k > TOPK_MAX_K:
            self.add("error", name, "TopK", f"k = {k} exceeds TensorRT's TopK limit of {TOPK_MAX_K}: select the "
                                            "entries another way (a threshold found by bisection on counts, or "
                                            "top-k over blocks)")
        if k is not None and dim is not None and k > dim:
            self.add("error", name, "TopK", f"k = {k} is larger than the {dim} entries along axis {axis}")
        if shape is not None and len(shape) >= 1 and (axis % len(shape)) < len(shape) - 4:
            self.add("error", name, "TopK", f"axis {axis} of a rank-{len(shape)} input: TensorRT reduces only along "
                                            "one of the last four axes")
        if int(_attr(node, "sorted", 1)) == 0:
            self.add("info", name, "TopK", "sorted=0: the support matrix lists sorted=1; TensorRT returns sorted "
                                           "values, which sorted=0 also allows, so results are unaffected")

    def _check_ScatterElements(self, node: Any, name: str) -> None:
        reduction = _text(_attr(node, "reduction", "none"))
        if reduction != "none":
            self.add("warning", name, "ScatterElements", f"reduction='{reduction}' is imported through TensorRT's "
                                                         "ScatterElements plugin: the standard plugin library "
                                                         "(libnvinfer_plugin) must be loaded when building and "
                                                         "running (oodgate's TensorRT runner loads it)")

    def _check_ScatterND(self, node: Any, name: str) -> None:
        reduction = _text(_attr(node, "reduction", "none"))
        if reduction != "none":
            self.add("error", name, "ScatterND", f"reduction='{reduction}' is not supported (only 'none')")

    def _check_MaxPool(self, node: Any, name: str) -> None:
        if len(node.output) > 1 and node.output[1]:
            self.add("error", name, "MaxPool", "the Indices output is not supported by TensorRT: compute the "
                                               "max-pool backward another way (e.g. compare the input with the "
                                               "upsampled pooled maximum)")

    def _pool(self, node: Any, name: str) -> None:
        kernel = _attr(node, "kernel_shape") or []
        if len(kernel) not in (2, 3):
            self.add("error", name, node.op_type, f"{len(kernel)}-D pooling: TensorRT pools in 2-D or 3-D only")
        dilations = _attr(node, "dilations")
        if dilations and any(int(d) != 1 for d in dilations):
            self.add("error", name, node.op_type, f"dilations {list(dilations)}: TensorRT supports none (all ones)")

    def _check_Squeeze(self, node: Any, name: str) -> None:
        self._const_input(node, name, 1, "axes")

    def _check_Unsqueeze(self, node: Any, name: str) -> None:
        self._const_input(node, name, 1, "axes")

    def _check_CumSum(self, node: Any, name: str) -> None:
        self._const_input(node, name, 1, "axis")

    def _check_OneHot(self, node: Any, name: str) -> None:
        self._const_input(node, name, 1, "depth")

    def _check_Dropout(self, node: Any, name: str) -> None:
        if len(node.input) > 2 and node.input[2]:
            value = self.values.get(node.input[2])
            if value is None or bool(np.asarray(value).ravel()[0]):
                self.add("error", name, "Dropout", "training_mode must be a constant False: export in eval mode")

    def _check_Resize(self, node: Any, name: str) -> None:
        mode = _text(_attr(node, "mode", "nearest"))
        if mode not in ("nearest", "linear"):
            self.add("error", name, "Resize", f"mode '{mode}' is not supported (nearest, linear)")
        ctm = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
        if ctm not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"):
            self.add("error", name, "Resize", f"coordinate_transformation_mode '{ctm}' is not supported")
        if int(_attr(node, "antialias", 0)):
            self.add("error", name, "Resize", "antialias=1 is not supported")
        policy = _text(_attr(node, "keep_aspect_ratio_policy", "stretch"))
        if policy != "stretch":
            self.add("error", name, "Resize", f"keep_aspect_ratio_policy '{policy}' is not supported (stretch)")

    def _check_Constant(self, node: Any, name: str) -> None:
        for a in node.attribute:
            if a.name in ("sparse_value", "value_string", "value_strings"):
                self.add("error", name, "Constant", f"attribute '{a.name}' is not supported")
            elif a.name == "value":
                self._dtype(a.t.data_type, name, "Constant", weight=True)

    def _check_Cast(self, node: Any, name: str) -> None:
        self._dtype(int(_attr(node, "to", 1)), name, "Cast")

    def _check_LayerNormalization(self, node: Any, name: str) -> None:
        if any(node.output[1:]):
            self.add("error", name, "LayerNormalization", "only the first output (Y) is supported")

    def _check_NonZero(self, node: Any, name: str) -> None:
        self.add("warning", name, "NonZero", "data-dependent output shape: supported, but it blocks many "
                                             "optimisations and needs output allocation at run time")

    def _check_Loop(self, node: Any, name: str) -> None:
        self.add("warning", name, "Loop", "control flow: the shapes of loop-carried values must not change between "
                                          "iterations and scan outputs must have a fixed length")

    def _check_Scan(self, node: Any, name: str) -> None:
        self.add("warning", name, "Scan", "control flow: supported with restrictions (fixed trip counts)")

    def _check_If(self, node: Any, name: str) -> None:
        self.add("warning", name, "If", "control flow: both branches must give outputs of the same rank")


def audit_graph(path_or_model: Any) -> list[Finding]:
    """TensorRT compatibility findings of an ONNX graph (a path or an onnx.ModelProto), errors first."""
    model = infer_shapes(load_model(path_or_model))
    findings = _Auditor(model).run()
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(findings, key=lambda f: order.get(f.severity, 3))


def has_errors(findings: Iterable[Finding]) -> bool:
    """Whether any finding is an error (the graph will not build with TensorRT)."""
    return any(f.severity == "error" for f in findings)


def format_findings(findings: list[Finding], graph: str = "") -> str:
    """Human-readable audit report: one line per finding and a verdict."""
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    plural = {"error": "errors", "warning": "warnings", "info": "infos"}
    head = f"TensorRT check{f' of {graph}' if graph else ''}: " + ", ".join(
        f"{v} {k if v == 1 or k == 'info' else plural[k]}" for k, v in counts.items())
    verdict = ("FAIL: TensorRT's ONNX parser or builder will reject this graph" if counts["error"] else
               "PASS: no operator or attribute outside what TensorRT 10's ONNX parser supports")
    return "\n".join([head, *(f"  {f}" for f in findings), verdict])
