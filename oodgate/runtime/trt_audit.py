"""Static TensorRT compatibility audit of an ONNX graph: what TensorRT's ONNX parser will refuse, found on a CPU.

The operator list and restrictions follow the support matrix of the ONNX-TensorRT parser for TensorRT 10
(onnx-tensorrt ``docs/operators.md``: opsets 9 to 24 as of TensorRT 10.15; opset 20 as of 10.0) and the
TopK layer's documented limit k <= 3840, corrected where a real parser disagreed (issue 17: TensorRT-RTX 1.7.1's
parser and ahead-of-time builder accept dynamic-k TopK, opsets 7 and 25-26, cubic Resize, a run-time OneHot depth
and CumSum axis, DOUBLE/INT8 graph I/O, and reject UINT8 inside the graph). This table is the fallback of
``check_graph``, which runs the real parser when TensorRT or TensorRT-RTX is installed. A graph that passes can still fail on a GPU (memory, tactics, a newer
restriction); one that fails here will not build. Findings are ``error`` (the parser or builder rejects it),
``warning`` (it builds only under a condition, or on some TensorRT versions) or ``info``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
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
        self.io_names = {vi.name for vi in (*model.graph.input, *model.graph.output)}

    def add(self, severity: str, node: str, op: str, message: str) -> None:
        self.findings.append(Finding(severity, node, op, message))

    # -- the whole model ------------------------------------------------------------------------------------
    def run(self) -> list[Finding]:
        opsets = {imp.domain or "ai.onnx": imp.version for imp in self.model.opset_import}
        opset = opsets.get("ai.onnx")
        if opset is not None and opset < MIN_OPSET:
            self.add("warning", "", "opset", f"default-domain opset {opset} is older than {MIN_OPSET}, where TensorRT's "
                                             "support matrix starts (the parser still reads it, but operators whose "
                                             "meaning changed since may import differently): re-export with opset "
                                             ">= 17")
        elif opset is not None and opset > MAX_OPSET:
            self.add("warning", "", "opset", f"opset {opset} is newer than {MAX_OPSET}, the newest in TensorRT 10.15's "
                                             "support matrix (TensorRT-RTX 1.7's parser reads 25 and 26): check with "
                                             "`oodgate inspect --trt-check` on the target TensorRT, or re-export with "
                                             "opset 18")
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
                if et == 11:
                    self.add("warning", vi.name, f"graph {kind}", "DOUBLE: TensorRT casts it down to FLOAT (values "
                                                                  "clamped to ±FLT_MAX); export in float32")
                elif et in QUANTIZED_DTYPES:
                    self.add("warning", vi.name, f"graph {kind}", f"{dtype_name(et)} is a quantized type in "
                                                                  "TensorRT: the engine's I/O holds quantized values")
                elif et not in TRT_DTYPES and et != 2:  # UINT8 is allowed as network input/output
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
                self.add("error", where, op, "UINT8 is supported only as a network input or output, not for a tensor "
                                             "inside the graph: compute in FLOAT or INT32")
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
                if out in self.io_names and self.types[out][0] == 2:
                    continue  # a UINT8 graph output: allowed
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
            if dim is None or dim > TOPK_MAX_K:
                self.add("warning", name, "TopK", f"k ({node.input[1]}) is computed at run time (dynamic-k TopK, "
                                                  f"which TensorRT 10's parser accepts) on an axis of "
                                                  f"{dim or 'unknown'} entries: k above {TOPK_MAX_K} fails when the "
                                                  "engine runs. Prefer a constant k (top-k at the largest k, then a "
                                                  "mask)")
            else:
                self.add("info", name, "TopK", f"k ({node.input[1]}) is computed at run time (dynamic-k TopK): "
                                               f"accepted, and the axis has {dim} <= {TOPK_MAX_K} entries")
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
                                                         "running (oodgate's TensorRT runner loads it); "
                                                         "TensorRT-RTX has no such plugin and rejects it")

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

    def _check_Dropout(self, node: Any, name: str) -> None:
        if len(node.input) > 2 and node.input[2]:
            value = self.values.get(node.input[2])
            if value is None or bool(np.asarray(value).ravel()[0]):
                self.add("error", name, "Dropout", "training_mode must be a constant False: export in eval mode")

    def _check_Resize(self, node: Any, name: str) -> None:
        mode = _text(_attr(node, "mode", "nearest"))
        if mode not in ("nearest", "linear", "cubic"):
            self.add("error", name, "Resize", f"mode '{mode}' is not supported (nearest, linear, cubic)")
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
                                             "optimisations and needs output allocation at run time "
                                             "(TensorRT-RTX 1.7 rejects it: no NonZero plugin)")

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


# -- the real parser and an ahead-of-time build (issue 17) -------------------------------------------------------------

#: the GPU generation TensorRT-RTX builds for ahead of time when no GPU is here (any of SM75-SM121 works)
DEFAULT_AOT_TARGET = "8.9"
#: seconds the ahead-of-time build may take (AdaSCALE's ~1500-layer network does not finish in 400 s on 2 CPU cores)
AOT_TIMEOUT_S = 120.0
STATIC_TABLE = "the static operator table (TensorRT 10.15 support matrix)"


@dataclass
class TrtCheck:
    """What checked a graph (a real ONNX parser, or the static table as fallback), its findings and the build."""

    graph: str
    checker: str
    real: bool
    findings: list[Finding]
    build: dict[str, Any] | None = None
    fallback_reason: str = ""

    @property
    def passed(self) -> bool:
        return not has_errors(self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "checker": self.checker, "real_parser": self.real, "passed": self.passed,
                "build": self.build, "fallback_reason": self.fallback_reason,
                "findings": [f.to_dict() for f in self.findings]}


def real_parser() -> tuple[Any, str]:
    """(module, name) of a TensorRT ONNX parser that works here: TensorRT 10 where its builder starts (a GPU),
    else TensorRT-RTX (no GPU needed); ProviderError if neither."""
    from ..errors import ProviderError
    from .tensorrt import collecting_logger, import_tensorrt, import_tensorrt_rtx

    reason = ""
    for load, name in ((import_tensorrt, "TensorRT"), (import_tensorrt_rtx, "TensorRT-RTX")):
        try:
            trt = load()
            if trt.Builder(collecting_logger(trt)) is None:
                raise RuntimeError("no GPU")
        except ProviderError as exc:
            reason = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - TensorRT 10's builder fails to start without a GPU
            reason = f"{name}'s builder does not start here ({type(exc).__name__}: {exc})"
            continue
        return trt, f"{name} {trt.__version__}"
    raise ProviderError(reason)


def aot_build(graph: str | Path, *, target: str | None = DEFAULT_AOT_TARGET, timeout: float = AOT_TIMEOUT_S
              ) -> dict[str, Any]:
    """Build an engine for ``graph`` in a child process (TensorRT-RTX ahead of time for ``target``, or TensorRT 10 on
    this GPU for ``target=None``); {'status': 'ok' | 'failed' | 'timeout', ...}. A child process, because a build can
    run for minutes and Polygraphy binds one TensorRT flavour per process."""
    cmd = [sys.executable, "-m", "oodgate.runtime.trt_audit", str(graph), "--target", target or "gpu"]
    label = f"SM{target.replace('.', '')} (ahead of time)" if target else "this GPU"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "target": label, "seconds": round(time.perf_counter() - t0, 1),
                "message": f"the engine build did not finish within {timeout:g} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "target": label, "message": f"the build process failed: {tail}"}
    return json.loads(lines[-1])


def _parser_findings(trt: Any, name: str, graph: str | Path) -> list[Finding]:
    from .tensorrt import collecting_logger, parse_onnx

    logger = collecting_logger(trt)
    *_, issues = parse_onnx(trt, graph, logger)
    found = [Finding("error", i.node, i.op or "parser", f"{name}'s ONNX parser rejects it: {i.message}")
             for i in issues]
    warned = {m for sev, m in logger.messages if sev == trt.ILogger.Severity.WARNING}
    found += [Finding("info", "", "parser", f"{name}'s parser: {m.split(': ', 1)[-1]}") for m in sorted(warned)]
    return found


def check_graph(graph: str | Path, *, real: bool | None = None, build: bool = True,
                target: str | None = DEFAULT_AOT_TARGET, timeout: float = AOT_TIMEOUT_S) -> TrtCheck:
    """TensorRT compatibility of an ONNX graph: the real ONNX parser (and an engine build) when TensorRT 10 or
    TensorRT-RTX is installed, the static table only as fallback (``real=None``); ``real=True`` requires the real
    parser, ``real=False`` uses the table.

    With the real parser, the table's findings are kept beside it: an error the parser does not confirm stays an
    error unless the engine was built (fail closed: the build is the proof); then it is shown as a disagreement."""
    from ..errors import ProviderError

    static = audit_graph(graph)
    if real is False:
        return TrtCheck(str(graph), STATIC_TABLE, False, static, fallback_reason="static check asked for")
    try:
        trt, name = real_parser()
    except ProviderError as exc:
        if real:
            raise
        return TrtCheck(str(graph), STATIC_TABLE, False, static,
                        fallback_reason=f"no TensorRT parser here ({str(exc).split(':')[0]}): pip install "
                                        "'oodgate[trt-check]' for the real one")
    findings = _parser_findings(trt, name, graph)
    result = None
    if build and not has_errors(findings):
        result = aot_build(graph, target=None if name.startswith("TensorRT ") else target, timeout=timeout)
        if result["status"] == "failed":
            findings.append(Finding("error", "", "build", result["message"]))
        elif result["status"] == "timeout":
            findings.append(Finding("warning", "", "build", f"{result['message']}: the parser accepted the graph, the "
                                                            "build is unverified (run it on the target GPU)"))
    built = result is not None and result["status"] == "ok"
    confirmed = {(f.node, f.op) for f in findings if f.severity == "error"}
    for f in static:
        if (f.node, f.op) in confirmed:  # the parser said it already
            continue
        if f.severity == "error" and built:
            findings.append(Finding("info", f.node, f.op, f"the static table disagrees ({f.message}); {name}'s "
                                                          "parser and builder accepted it"))
        else:
            findings.append(Finding(f.severity, f.node, f.op, f"static table: {f.message}"))
    order = {"error": 0, "warning": 1, "info": 2}
    return TrtCheck(str(graph), f"{name}'s ONNX parser", True, sorted(findings, key=lambda f: order[f.severity]),
                    build=result)


def format_check(check: TrtCheck, graph: str = "") -> str:
    """Human-readable check report: which checker ran, one line per finding and a verdict."""
    counts = {s: sum(f.severity == s for f in check.findings) for s in ("error", "warning", "info")}
    plural = {"error": "errors", "warning": "warnings", "info": "infos"}
    how = check.checker
    b = check.build
    if b is not None:
        how += f" + engine build for {b.get('target')}: {b['status']}"
        if b["status"] == "ok":
            how += f" ({b['engine_bytes'] / 1e6:.2f} MB in {b['seconds']:.1f} s)"
    elif check.fallback_reason:
        how += f"; {check.fallback_reason}"
    head = (f"TensorRT check{f' of {graph}' if graph else ''} with {how}: "
            + ", ".join(f"{v} {k if v == 1 or k == 'info' else plural[k]}" for k, v in counts.items()))
    if counts["error"]:
        verdict = "FAIL: TensorRT's ONNX parser or builder will reject this graph"
    elif check.real:
        verdict = (f"PASS: {check.checker} read every node" + (
            " and the graph built" if b is not None and b["status"] == "ok" else ""))
    else:
        verdict = "PASS: no operator or attribute outside what TensorRT 10's ONNX parser supports (static table)"
    return "\n".join([head, *(f"  {f}" for f in check.findings), verdict])


def _main(argv: list[str] | None = None) -> int:
    """``python -m oodgate.runtime.trt_audit GRAPH --target 8.9|gpu``: build an engine, print one JSON line."""
    import argparse

    from ..errors import OodgateError
    from .tensorrt import build_engine

    ap = argparse.ArgumentParser(prog="python -m oodgate.runtime.trt_audit")
    ap.add_argument("graph")
    ap.add_argument("--target", default=DEFAULT_AOT_TARGET)
    args = ap.parse_args(argv)
    target = None if args.target == "gpu" else args.target
    try:
        data, report = build_engine(args.graph, target=target)
    except OodgateError as exc:
        label = f"SM{args.target.replace('.', '')} (ahead of time)" if target else "this GPU"
        print(json.dumps({"status": "failed", "target": label, "message": str(exc)}))
        return 0
    print(json.dumps({"status": "ok", "target": report.target, "backend": report.backend,
                      "seconds": round(report.seconds, 2), "engine_bytes": len(data), "flags": report.flags}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
