"""Native TensorRT runner: build (or load from the engine cache) an engine for an oodgate graph and run it.

Written to TensorRT 10's documented Python API (Builder, OnnxParser, BuilderConfig, optimisation profiles,
``build_serialized_network``, ``Runtime.deserialize_cuda_engine``, ``execute_async_v3``) with device memory from
cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases). ``tensorrt`` and ``cuda`` are
imported inside the functions that need them, so importing this module costs nothing on a machine without a GPU.

Precision: 'fp32' builds with TF32 disabled (strict FP32, for parity with PyTorch). 'fp16' lets TensorRT run the
backbone in half precision and pins the detector head to FP32 (``oodgate.runtime.precision``) with
OBEY_PRECISION_CONSTRAINTS, because SCALE/ASH-S/AdaSCALE's exp(r) and logsumexp overflow in half precision.

``TensorRTRunner`` answers the part of ``onnxruntime.InferenceSession`` that ``oodgate.runtime.Session`` uses
(``get_providers``, ``get_inputs``, ``get_outputs``, ``run``), so ``Session(path, providers='trt-native')`` has the
same API as with ONNX Runtime.
"""

from __future__ import annotations

import time
import warnings
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

INSTALL_HINT = ("install TensorRT 10 and cuda-python (pip install tensorrt cuda-python) on a machine with an NVIDIA "
                "GPU and driver, or use --provider cpu / cuda")
#: the provider name of this runner (re-exported as ``oodgate.runtime.providers.NATIVE_TENSORRT``)
PROVIDER_NAME = "trt-native"
DEFAULT_PROFILE = DEFAULT_BATCH_PROFILE


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (version 10 or newer), or ProviderError saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ProviderError(f"the native TensorRT runner needs the tensorrt package, which is not installed: "
                            f"{INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - a broken install raises OSError (missing libnvinfer) and others
        raise ProviderError(f"tensorrt is installed but cannot be loaded ({type(exc).__name__}: {exc}): check the "
                            "CUDA driver and TensorRT libraries") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ProviderError(f"TensorRT {trt.__version__} is installed; oodgate's native runner needs TensorRT >= 10")
    return trt


def import_cudart() -> Any:
    """cuda-python's CUDA runtime bindings, or ProviderError saying how to get them."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise ProviderError(f"the native TensorRT runner needs cuda-python for device memory: {INSTALL_HINT}"
                                ) from None
    return cudart


def tensorrt_unavailable_reason() -> str | None:
    """None when tensorrt (>= 10) and cuda-python import; otherwise why not (for skips and provider checks)."""
    try:
        import_tensorrt()
        import_cudart()
    except ProviderError as exc:
        return str(exc)
    return None


def _cuda(result: Any, what: str) -> Any:
    """Unpack a cuda-python call's (error, *values) result; raise on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise OodgateError(f"CUDA call {what} failed: {err}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def _handle(obj: Any) -> int:
    """The integer handle of a cuda-python object (stream, pointer)."""
    get = getattr(obj, "getPtr", None)
    return int(get()) if get is not None else int(obj)


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


# -- building ---------------------------------------------------------------------------------------------------------

@dataclass
class BuildReport:
    """What a build did: precision, how long it took, how much of the head was pinned to FP32."""

    precision: str
    profile: list[int]
    seconds: float = 0.0
    fp32_head: dict[str, Any] = field(default_factory=dict)


def _parser_error(err: Any) -> str:
    """One ONNX parser error as 'node (op): description' where the binding offers those fields."""
    try:
        where = err.node_name() or f"node {err.node()}"
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        return f"{where}{f' ({op})' if op else ''}: {err.desc()}"
    except AttributeError:
        return str(err)


def _logger(trt: Any, verbose: bool) -> Any:
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def build_engine(graph: str | Path, *, precision: str = "fp32", profile: Any = DEFAULT_PROFILE,
                 fp32_head: bool = True, workspace_bytes: int | None = None, timing_cache: str | Path | None = None,
                 verbose: bool = False) -> tuple[bytes, BuildReport]:
    """Build a serialized TensorRT engine for an oodgate graph: optimisation profile over the batch axis, FP32 or FP16
    (with the FP32 head unless ``fp32_head=False``). Needs TensorRT and a GPU."""
    trt = import_tensorrt()
    graph = Path(graph)
    info = read_graph_info(graph)
    profile = BatchProfile.parse(profile)
    if precision not in ("fp32", "fp16"):
        raise OodgateError(f"precision {precision!r}: use fp32 or fp16")
    t0 = time.perf_counter()
    logger = _logger(trt, verbose)
    trt.init_libnvinfer_plugins(logger, "")  # ScatterElements with a reduction is imported as a plugin
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise OodgateError(f"TensorRT's ONNX parser rejected {graph}: {errors} (run `oodgate inspect --trt-check "
                           f"{graph}` for a static audit)")
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.clear_flag(trt.BuilderFlag.TF32)  # strict FP32 where FP32 is asked for (parity with PyTorch)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(info.input_name, *profile.shapes(info.input_shape))
    config.add_optimization_profile(opt_profile)
    report = BuildReport(precision, profile.to_list())
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if fp32_head:
            report.fp32_head = apply_precision_plan(network, fp32_head_plan(graph), trt)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        if not config.set_timing_cache(cache, ignore_mismatch=False):  # from another TensorRT/GPU: start afresh
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OodgateError(f"TensorRT could not build an engine for {graph} ({precision}, batch {profile.to_list()}): "
                           "see the TensorRT log above")
    if cache is not None and timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(timing_cache, bytes(cache.serialize()), overwrite=True)
    report.seconds = time.perf_counter() - t0
    return bytes(serialized), report


# -- running ----------------------------------------------------------------------------------------------------------

class TensorRTRunner:
    """A TensorRT engine for one oodgate graph, built or loaded from the engine cache, run with device buffers sized
    for the profile's largest batch. Larger inputs are split, smaller than ``profile.min`` are padded.

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
        trt = import_tensorrt()
        cudart = self._cudart = import_cudart()
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
        self._runtime = trt.Runtime(_logger(trt, verbose))
        engine = None
        if lookup.hit:
            engine = self._runtime.deserialize_cuda_engine(lookup.data)
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
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise OodgateError(f"TensorRT built an engine for {self.path} but cannot deserialize it")
        self.engine_path = target
        self._engine = engine
        self._context = engine.create_execution_context()
        self._names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input = self.info.input_name
        self._output_names = [n for n in self._names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in self._names}
        self._stream = _cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}
        max_shape = self.profile.shapes(self.info.input_shape)[2]
        self._context.set_input_shape(self._input, max_shape)
        for name in self._names:
            shape = max_shape if name == self._input else tuple(self._context.get_tensor_shape(name))
            nbytes = max(1, int(np.prod(shape)) * self._dtypes[name].itemsize)
            ptr = _cuda(cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._buffers[name] = (int(ptr), nbytes)
            self._context.set_tensor_address(name, int(ptr))

    # -- the InferenceSession-like surface that oodgate.runtime.Session uses --
    def get_providers(self) -> list[str]:
        return [PROVIDER_NAME]

    def get_inputs(self) -> list[Any]:
        return [SimpleNamespace(name=self._input, shape=["batch", *self.info.input_shape], type="tensor(float)")]

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name=n) for n in self._output_names]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs (in ``output_names`` order) for the input batch in ``feeds``, as ONNX Runtime's ``run``."""
        if self._context is None:
            raise OodgateError("this TensorRT runner is closed")
        x = np.ascontiguousarray(feeds[self._input], dtype=np.float32)
        if len(x) == 0:
            raise OodgateError("no inputs to run: give at least one image")
        parts = [self._run_chunk(x[i:i + self.profile.max]) for i in range(0, len(x), self.profile.max)]
        names = list(output_names or self._output_names)
        return [np.concatenate([p[n] for p in parts]) for n in names]

    def _run_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self._cudart
        n = len(x)
        if n < self.profile.min:
            x = np.concatenate([x, np.zeros((self.profile.min - n, *x.shape[1:]), x.dtype)])
        self._context.set_input_shape(self._input, tuple(x.shape))
        ptr, _ = self._buffers[self._input]
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda(cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self._stream), "cudaMemcpyAsync")
        if not self._context.execute_async_v3(_handle(self._stream)):
            raise OodgateError("TensorRT failed to run the engine (execute_async_v3 returned False)")
        outs = {}
        for name in self._output_names:
            host = np.empty(tuple(self._context.get_tensor_shape(name)), self._dtypes[name])
            _cuda(cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes, d2h, self._stream),
                  "cudaMemcpyAsync")
            outs[name] = host
        _cuda(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {k: v[:n] for k, v in outs.items()}

    def close(self) -> None:
        """Free the device buffers, the stream and the engine."""
        if getattr(self, "_context", None) is None:
            return
        cudart = self._cudart
        for ptr, _ in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers = {}
        cudart.cudaStreamDestroy(self._stream)
        self._context = None
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
