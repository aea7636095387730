"""Native TensorRT runner: build (or load from the engine cache) an engine for an oodgate graph and run it.

Built on Polygraphy (NVIDIA's TensorRT toolkit): engines are built with its loaders (CreateConfig, Profile,
EngineBytesFromNetwork) and run with its TrtRunner; what stays here is oodgate's own: the engine cache keying and
invalidation (``engine_cache``), the choice of head layers kept in FP32 (``precision``) and the checks on what the
builder did. TensorRT 10 for CUDA 12 (``pip install "oodgate[tensorrt]" --extra-index-url https://pypi.nvidia.com``);
cuda-python gives the GPU's name and compute capability for the cache key. ``tensorrt``, ``cuda`` and
``polygraphy`` are imported inside the functions that need them, so importing this module costs nothing on a
machine without a GPU.

Precision: 'fp32' builds with TF32 disabled (strict FP32, for parity with PyTorch). 'fp16' lets TensorRT run the
backbone in half precision and pins the detector head to FP32 (``oodgate.runtime.precision``) with obeyed
precision constraints, because SCALE/ASH-S/AdaSCALE's exp(r) and logsumexp overflow in half precision. TensorRT 11
removed the FP16 flag and precision constraints (strongly typed networks only), so the runner refuses it.

``build_engine(..., target='8.9')`` builds with TensorRT-RTX ahead of time, without a GPU (FP32, strongly typed):
what ``oodgate inspect --trt-check`` uses to prove a graph builds.

``TensorRTRunner`` answers the part of ``onnxruntime.InferenceSession`` that ``oodgate.runtime.Session`` uses
(``get_providers``, ``get_inputs``, ``get_outputs``, ``run``), so ``Session(path, providers='trt-native')`` has the
same API as with ONNX Runtime.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import OodgateError, ProviderError
from ..files import write_atomic
from .engine_cache import DEFAULT_BATCH_PROFILE, BatchProfile, CacheLookup, DeviceFacts, EngineCache, engine_key
from .metadata import read_graph_info
from .onnx_graph import NodeIO
from .precision import PrecisionPlan, fp32_head_plan, head_region, pooling_chain

#: NVIDIA's package index: TensorRT's libraries (``tensorrt-cu12-libs``) are published there; PyPI only holds a
#: placeholder that downloads from it while installing
NVIDIA_INDEX = "https://pypi.nvidia.com"
INSTALL_HINT = (f'pip install "oodgate[tensorrt]" --extra-index-url {NVIDIA_INDEX} (TensorRT 10 for CUDA 12, '
                "cuda-python 12, Polygraphy) on a machine with an NVIDIA GPU and driver, or use --provider cpu / cuda")
#: the provider name of this runner (re-exported as ``oodgate.runtime.providers.NATIVE_TENSORRT``)
PROVIDER_NAME = "trt-native"
DEFAULT_PROFILE = DEFAULT_BATCH_PROFILE
#: the TensorRT line the native runner is written for (TensorRT 11 dropped the FP16 flag and precision constraints)
SUPPORTED_MAJOR = 10


def _import(module: str, what: str, hint: str) -> Any:
    """Import ``module``; ProviderError saying whether it is missing or installed but unloadable (a missing library)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise ProviderError(f"{what} is installed but cannot be loaded: it needs the module {exc.name!r}, which "
                                f"is missing: {hint}") from None
        raise ProviderError(f"{what} is not installed: {hint}") from None
    except Exception as exc:  # noqa: BLE001 - missing libnvinfer.so / libcudart raise ImportError or OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProviderError(f"{what} is installed but cannot be loaded ({type(exc).__name__}: {first}): its "
                            f"libraries are missing or do not match the driver; {hint}") from None


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (TensorRT 10), or ProviderError saying why not and how to get it."""
    trt = _import("tensorrt", "the native TensorRT runner needs the tensorrt package, which", INSTALL_HINT)
    major = int(str(trt.__version__).split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise ProviderError(f"TensorRT {trt.__version__} is installed; oodgate's native runner needs TensorRT 10 (its "
                            "FP16 build keeps the detector head in FP32 with precision constraints, which TensorRT 11 "
                            f"removed): {INSTALL_HINT}")
    return trt


def import_cudart() -> Any:
    """cuda-python's CUDA runtime bindings (for the GPU's name and compute capability), or ProviderError."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise ProviderError(f"the native TensorRT runner needs cuda-python: {INSTALL_HINT}") from None
    return cudart


def import_polygraphy(*, rtx: bool = False) -> Any:
    """``polygraphy.backend.trt`` set up for TensorRT (``rtx=False``) or TensorRT-RTX, or ProviderError.

    Polygraphy picks its TensorRT module once per process, when ``polygraphy.backend.trt`` is first imported
    (``POLYGRAPHY_USE_TENSORRT_RTX``); asking for the other one afterwards is an error, not a silent mix."""
    hint = INSTALL_HINT if not rtx else "pip install 'oodgate[trt-check]'"
    config = _import("polygraphy.config", "Polygraphy (NVIDIA's TensorRT toolkit), which", hint)
    if "polygraphy.backend.trt" in sys.modules:
        if bool(config.USE_TENSORRT_RTX) != rtx:
            used = "TensorRT-RTX" if config.USE_TENSORRT_RTX else "TensorRT"
            raise ProviderError(f"Polygraphy is already set up for {used} in this process; run the "
                                f"{'TensorRT-RTX check' if rtx else 'TensorRT runner'} in a separate process")
    else:
        config.USE_TENSORRT_RTX = rtx
    return _import("polygraphy.backend.trt", "Polygraphy's TensorRT backend, which", hint)


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT 10, cuda-python and Polygraphy load; otherwise why not (for skips and provider checks)."""
    try:
        import_tensorrt()
        import_cudart()
        import_polygraphy()
    except ProviderError as exc:
        return str(exc)
    return None


def _cuda(result: Any, what: str) -> Any:
    """Unpack a cuda-python call's (error, *values) result; raise on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise OodgateError(f"CUDA call {what} failed: {err}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def device_facts(device: int = 0) -> DeviceFacts:
    """GPU name, compute capability and TensorRT version of ``device`` (the facts the engine cache keys on)."""
    trt = import_tensorrt()
    cudart = import_cudart()
    props = _cuda(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return DeviceFacts(str(name).strip(), f"{props.major}.{props.minor}", str(trt.__version__))


# -- the FP32 head on a TensorRT network ------------------------------------------------------------------------------

def network_nodes(network: Any) -> list[NodeIO]:
    """The layers of a TensorRT network as NodeIO (named by layer index, op = the LayerType's name)."""
    nodes = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ins = tuple(t.name for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None)
        outs = tuple(layer.get_output(j).name for j in range(layer.num_outputs))
        nodes.append(NodeIO(str(i), str(layer.type).rsplit(".", 1)[-1], ins, outs))
    return nodes


def head_layers(nodes: list[NodeIO], layer_names: list[str], plan: PrecisionPlan) -> tuple[set[int], str]:
    """Indices of the network layers to pin to FP32, and how they were found.

    The plan's rule is applied again to the network (TensorRT's ONNX parser keeps ONNX tensor names on node
    outputs, and may add helper layers that only this walk finds); if no pooled tensor name survived parsing,
    layers are matched by name (the parser names layers after ONNX nodes, adding '_N' to repeats).
    """
    tensor_names = {o for n in nodes for o in n.outputs}
    pooled = [p for p in plan.pooled if p in tensor_names]
    if pooled:
        region = head_region(nodes, pooled, constant_ops=("CONSTANT",))
        if plan.pooling_nodes:
            for p in pooled:
                region.update(pooling_chain(nodes, p, pool_ops=("REDUCE", "POOLING"), shape_ops=("SHUFFLE",
                                                                                               "IDENTITY")))
        return {int(name) for name in region}, "walk from the pooled tensor"
    wanted = set(plan.nodes)
    picked = set()
    for i, name in enumerate(layer_names):
        base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        if name in wanted or base in wanted:
            picked.add(i)
    return picked, "layer names"


def apply_precision_plan(network: Any, plan: PrecisionPlan, trt: Any) -> dict[str, Any]:
    """Pin the head's layers to FP32 (layer precision and float output types); returns what was done."""
    nodes = network_nodes(network)
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    picked, how = head_layers(nodes, names, plan)
    float_types = {trt.float32, trt.float16}
    if hasattr(trt, "bfloat16"):
        float_types.add(trt.bfloat16)
    no_precision = {trt.LayerType.SHAPE, trt.LayerType.CONSTANT, trt.LayerType.CAST}
    pinned, outputs = 0, 0
    for i in sorted(picked):
        layer = network.get_layer(i)
        tensors = [layer.get_input(j) for j in range(layer.num_inputs)] + \
                  [layer.get_output(j) for j in range(layer.num_outputs)]
        if layer.type not in no_precision and any(t is not None and t.dtype in float_types for t in tensors):
            layer.precision = trt.float32
            pinned += 1
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in float_types:
                layer.set_output_type(j, trt.float32)
                outputs += 1
    return {"layers": len(picked), "precision_set": pinned, "outputs_fp32": outputs, "matched_by": how,
            "onnx_nodes": len(plan.nodes)}


# -- parsing and building (Polygraphy's loaders) ------------------------------------------------------------------------

RTX_HINT = "pip install 'oodgate[trt-check]' (TensorRT-RTX and Polygraphy; no GPU needed)"


def import_tensorrt_rtx() -> Any:
    """The ``tensorrt_rtx`` module (TensorRT-RTX: its ONNX parser and ahead-of-time builder work without a GPU)."""
    return _import("tensorrt_rtx", "the TensorRT-RTX check needs the tensorrt_rtx package, which", RTX_HINT)


def collecting_logger(trt: Any, verbose: bool = False) -> Any:
    """A TensorRT logger that keeps every (severity, message) it receives (printing them only when ``verbose``)."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            self.messages.append((severity, str(msg)))
            if verbose:
                print(f"[TensorRT {str(severity).rsplit('.', 1)[-1]}] {msg}", file=sys.stderr)

        def errors(self) -> list[str]:
            bad = {trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR}
            return [m for sev, m in self.messages if sev in bad]

    return CollectingLogger()


@dataclass(frozen=True)
class ParserIssue:
    """One error of TensorRT's ONNX parser: the node, its operator and what the parser said."""

    node: str
    op: str
    message: str


def _parser_issue(err: Any) -> ParserIssue:
    def field_(name: str) -> str:
        try:
            value = getattr(err, name)()
        except Exception:  # noqa: BLE001 - older bindings lack some fields
            return ""
        return "" if value is None else str(value)

    desc = field_("desc") or str(err)
    func = field_("func")
    message = f"{func}: {desc}" if func and (len(desc) < 20 or func not in desc) else desc
    node = field_("node_name") or (f"node {field_('node')}" if field_("node") not in ("", "-1") else "")
    return ParserIssue(node, field_("node_operator"), message.strip())


def parse_onnx(trt: Any, graph: str | Path, logger: Any) -> tuple[Any, Any, Any, list[ParserIssue]]:
    """(builder, network, parser, parser errors) of TensorRT's ONNX parser on ``graph``.

    Parsed here rather than with Polygraphy's NetworkFromOnnxPath, which logs parser errors as text and raises one
    generic exception: the check needs each error's node and operator. The triple is what Polygraphy's
    EngineBytesFromNetwork takes."""
    if hasattr(trt, "init_libnvinfer_plugins"):  # ScatterElements with a reduction is imported as a plugin
        trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (the only mode of TensorRT 10 and TensorRT-RTX)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(graph))
    issues = [_parser_issue(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok and not issues:
        issues = [ParserIssue("", "", "; ".join(logger.errors()) or "the parser gave no details")]
    return builder, network, parser, issues


def profile_shapes(graph: str | Path, profile: Any = DEFAULT_PROFILE) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every graph input: the batch axis over ``profile``, other dynamic axes 1."""
    import onnx

    profile = BatchProfile.parse(profile)
    model = onnx.load(str(graph), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        rows = []
        for n in (profile.min, profile.opt, profile.max):
            rows.append(tuple((n if i == 0 else 1) if d is None else int(d) for i, d in enumerate(dims)))
        shapes[vi.name] = tuple(rows)
    return shapes


@dataclass
class BuildReport:
    """What a build did: backend, target, precision, builder flags, time, how much of the head was pinned to FP32."""

    precision: str
    profile: list[int]
    seconds: float = 0.0
    fp32_head: dict[str, Any] = field(default_factory=dict)
    backend: str = ""
    target: str = "this GPU"
    flags: list[str] = field(default_factory=list)
    engine_bytes: int = 0


@contextmanager
def _silenced(verbose: bool) -> Iterator[None]:
    """Polygraphy's logger quiet (it prints to stdout, which ``--json`` output must not get), uncoloured."""
    from polygraphy.logger import G_LOGGER

    colors, G_LOGGER.colors = G_LOGGER.colors, False
    try:
        with G_LOGGER.verbosity(G_LOGGER.VERBOSE if verbose else G_LOGGER.CRITICAL + 1):
            yield
    finally:
        G_LOGGER.colors = colors


def build_engine(graph: str | Path, *, precision: str = "fp32", profile: Any = DEFAULT_PROFILE,
                 fp32_head: bool = True, workspace_bytes: int | None = None, timing_cache: str | Path | None = None,
                 verbose: bool = False, target: str | None = None) -> tuple[bytes, BuildReport]:
    """A serialized TensorRT engine for an ONNX graph, built with Polygraphy's loaders (CreateConfig with TF32 off,
    FP16 + obeyed precision constraints for the FP32 head, an optimisation profile over the batch axis, the timing
    cache), and what the build did.

    ``target=None``: TensorRT 10 for this machine's GPU. ``target='8.9'`` (a compute capability): TensorRT-RTX's
    ahead-of-time build for that GPU generation, which needs no GPU; TensorRT-RTX networks are strongly typed, so it
    builds FP32 only."""
    if precision not in ("fp32", "fp16"):
        raise OodgateError(f"precision {precision!r}: use fp32 or fp16")
    rtx = target is not None
    if rtx and precision != "fp32":
        raise OodgateError("TensorRT-RTX builds strongly typed networks: its ahead-of-time build is FP32 only; build "
                           "FP16 engines with TensorRT 10 on the GPU (providers='trt-native:fp16')")
    trt = import_tensorrt_rtx() if rtx else import_tensorrt()
    pg = import_polygraphy(rtx=rtx)
    graph = Path(graph)
    profile = BatchProfile.parse(profile)
    t0 = time.perf_counter()
    logger = collecting_logger(trt, verbose)
    builder, network, parser, issues = parse_onnx(trt, graph, logger)
    if issues:
        errors = "; ".join(f"{i.node}{f' ({i.op})' if i.op else ''}: {i.message}" for i in issues)
        raise OodgateError(f"TensorRT's ONNX parser rejected {graph}: {errors} (run `oodgate inspect --trt-check "
                           f"{graph}` for the full check)")
    report = BuildReport(precision, profile.to_list(), backend=f"{'TensorRT-RTX' if rtx else 'TensorRT'} "
                                                               f"{trt.__version__}",
                         target=f"SM{target.replace('.', '')} (ahead of time)" if rtx else "this GPU")
    if precision == "fp16" and fp32_head:
        report.fp32_head = apply_precision_plan(network, fp32_head_plan(graph), trt)
    opt_profile = pg.Profile()
    for name, (lo, opt, hi) in profile_shapes(graph, profile).items():
        opt_profile.add(name, lo, opt, hi)
    # TensorRT-RTX: timing-cache operations are no-ops (deprecated since 1.2), so none is kept
    timing_cache = Path(timing_cache) if timing_cache is not None and not rtx else None
    common: dict[str, Any] = {
        "profiles": [opt_profile],
        "load_timing_cache": str(timing_cache) if timing_cache is not None and timing_cache.is_file() else None,
    }
    if workspace_bytes:
        common["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(workspace_bytes)}
    if rtx:
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        major, _, minor = target.partition(".")
        if not hasattr(trt.ComputeCapability, f"SM{major}{minor}"):
            known = ", ".join(n[2:-1] + "." + n[-1] for n in dir(trt.ComputeCapability) if n.startswith("SM"))
            raise OodgateError(f"compute capability {target!r}: TensorRT-RTX {trt.__version__} builds for {known}")
        create = CreateConfigRTX(compute_capabilities=[(int(major), int(minor))], **common)
    else:
        create = pg.CreateConfig(tf32=False, fp16=precision == "fp16",
                                 precision_constraints="obey" if precision == "fp16" and fp32_head else None, **common)
    built: dict[str, Any] = {}

    def finish(builder: Any, network: Any, config: Any) -> None:
        config.clear_flag(trt.BuilderFlag.TF32)  # strict FP32 (CreateConfigRTX leaves TF32 on)
        if timing_cache is not None and config.get_timing_cache() is None:  # another TensorRT/GPU's: start afresh
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        report.flags = sorted(name for name, flag in trt.BuilderFlag.__members__.items() if config.get_flag(flag))
        built["config"] = config

    with _silenced(verbose), warnings.catch_warnings():
        # CreateConfigRTX sets an empty timing cache, which TensorRT-RTX deprecates as a no-op
        warnings.filterwarnings("ignore", "Use Deprecated in TensorRT-RTX", DeprecationWarning)
        try:
            serialized = pg.EngineBytesFromNetwork((builder, network, parser),
                                                   config=pg.PostprocessConfig(create, finish))()
        except Exception as exc:  # noqa: BLE001 - Polygraphy raises PolygraphyException on a failed build
            why = "; ".join(logger.errors()[-3:]) or str(exc)
            raise OodgateError(f"TensorRT could not build an engine for {graph} ({report.backend}, {precision}, "
                               f"batch {profile.to_list()}, {report.target}): {why}") from None
    data = bytes(serialized)
    cache = built["config"].get_timing_cache() if built and timing_cache is not None else None
    if timing_cache is not None and cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(timing_cache, bytes(cache.serialize()), overwrite=True)
    report.seconds = time.perf_counter() - t0
    report.engine_bytes = len(data)
    return data, report


# -- running (Polygraphy's TrtRunner) ----------------------------------------------------------------------------------

class TensorRTRunner:
    """A TensorRT engine for one oodgate graph, built or loaded from the engine cache, run by Polygraphy's TrtRunner.
    Inputs larger than the profile's max batch are split, smaller than ``profile.min`` are padded.

    ``precision``: 'fp32' | 'fp16'. ``profile``: (min, opt, max) of the batch axis. ``cache_dir``: the engine
    cache (default ``~/.cache/oodgate/tensorrt``); ``engine_path``: use this file instead of a cache slot (checked
    against the graph, GPU and TensorRT version all the same; rebuilt in place when stale; a file without oodgate's
    sidecar is neither loaded nor overwritten). ``rebuild``: ignore any cached engine.
    """

    def __init__(self, path: str | Path, *, precision: str = "fp32", profile: Any = DEFAULT_PROFILE,
                 cache_dir: str | Path | None = None, engine_path: str | Path | None = None, fp32_head: bool = True,
                 rebuild: bool = False, device: int = 0, workspace_bytes: int | None = None,
                 timing_cache: bool = True, verbose: bool = False) -> None:
        self.path = Path(path)
        self.info = read_graph_info(self.path)
        self.profile = BatchProfile.parse(profile)
        self.precision = precision
        self._runner: Any = None
        trt = import_tensorrt()
        cudart = import_cudart()
        pg = self._pg = import_polygraphy()
        _cuda(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.device = device_facts(device)
        key = engine_key(self.path, self.device, precision, self.profile, input_name=self.info.input_name,
                         input_shape=self.info.input_shape,
                         build={"fp32_head": bool(fp32_head and precision == "fp16"), "tf32": False,
                                "workspace_bytes": int(workspace_bytes or 0)})
        cache = EngineCache(cache_dir)
        target = Path(engine_path) if engine_path is not None else cache.engine_path(key, self.path.stem)
        lookup = CacheLookup("miss", target, "rebuild requested") if rebuild else cache.lookup(key, target)
        if engine_path is not None and lookup.status == "foreign":  # the user's file: neither loaded nor overwritten
            warnings.warn(f"not loading {target}: {lookup.reason}; using the engine cache in {cache.root} instead",
                          stacklevel=2)
            target = cache.engine_path(key, self.path.stem)
            lookup = cache.lookup(key, target)
        engine = None
        if lookup.hit:
            engine = self._deserialize(lookup.data, verbose)
            if engine is None:
                warnings.warn(f"TensorRT refused to load the cached engine {target} although its key matches; "
                              "rebuilding it", stacklevel=2)
                cache.invalidate(target)
                lookup = CacheLookup("corrupt", target, "TensorRT could not deserialize it")
        elif lookup.status in ("stale", "foreign", "corrupt"):
            warnings.warn(f"rebuilding the TensorRT engine {target}: {lookup.reason}", stacklevel=2)
        self.cache_status = lookup.status
        self.build_report: BuildReport | None = None
        if engine is None:
            timing = cache.timing_cache_path(self.device) if timing_cache else None
            data, self.build_report = build_engine(self.path, precision=precision, profile=self.profile,
                                                   fp32_head=fp32_head, workspace_bytes=workspace_bytes,
                                                   timing_cache=timing, verbose=verbose)
            cache.store(key, data, target)
            engine = self._deserialize(data, verbose)
            if engine is None:
                raise OodgateError(f"TensorRT built an engine for {self.path} but cannot deserialize it")
        self.engine_path = target
        self._engine = engine
        self._input = self.info.input_name
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._runner = pg.TrtRunner(engine, name=f"oodgate-{self.path.stem}")
        self._runner.activate()

    def _deserialize(self, data: bytes, verbose: bool) -> Any:
        """The engine in ``data`` (Polygraphy's EngineFromBytes), or None if TensorRT refuses it."""
        with _silenced(verbose):
            try:
                return self._pg.EngineFromBytes(data)()
            except Exception:  # noqa: BLE001 - Polygraphy raises PolygraphyException when deserialization fails
                return None

    # -- the InferenceSession-like surface that oodgate.runtime.Session uses --
    def get_providers(self) -> list[str]:
        return [PROVIDER_NAME]

    def get_inputs(self) -> list[Any]:
        return [SimpleNamespace(name=self._input, shape=["batch", *self.info.input_shape], type="tensor(float)")]

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name=n) for n in self._output_names]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs (in ``output_names`` order) for the input batch in ``feeds``, as ONNX Runtime's ``run``."""
        if self._runner is None:
            raise OodgateError("this TensorRT runner is closed")
        x = np.ascontiguousarray(feeds[self._input], dtype=np.float32)
        if len(x) == 0:
            raise OodgateError("no inputs to run: give at least one image")
        parts = [self._run_chunk(x[i:i + self.profile.max]) for i in range(0, len(x), self.profile.max)]
        names = list(output_names or self._output_names)
        return [np.concatenate([p[n] for p in parts]) for n in names]

    def _run_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n = len(x)
        if n < self.profile.min:
            x = np.concatenate([x, np.zeros((self.profile.min - n, *x.shape[1:]), x.dtype)])
        outs = self._runner.infer({self._input: x})
        return {name: np.array(outs[name][:n]) for name in self._output_names}

    def close(self) -> None:
        """Release the runner's device buffers and the engine."""
        runner, self._runner = getattr(self, "_runner", None), None
        if runner is not None and getattr(runner, "is_active", True):
            runner.deactivate()
        self._engine = None

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - depends on garbage collection
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
