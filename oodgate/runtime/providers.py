"""The one owner of execution providers: names, chains, spec strings, availability and EP options. No torch here.

Names: 'auto' | 'cpu' | 'cuda' | 'tensorrt' (ONNX Runtime's execution providers) and 'trt-native' (oodgate's own
TensorRT runner, ``oodgate.runtime.tensorrt``). A spec is a name with options, e.g. 'tensorrt:fp16' or
'trt-native:fp16,batch=1/8/32'; ``Session(path, spec)`` and every CLI ``--provider`` take the same specs.

TensorRT EP: FP16 on/off, an engine cache and a timing cache on disk, and an explicit optimisation profile for the
batch axis (``trt_profile_min/opt/max_shapes``), so that ONNX Runtime builds one engine for the whole batch range
instead of rebuilding for each new batch size. ONNX Runtime does not check its engine cache against the TensorRT
version or the GPU (its documentation says to clear the cache when either changes), so the cache folder is keyed
here by the graph's hash, the ONNX Runtime version and, when they can be read, the TensorRT version and the GPU.

CUDA EP: TF32 off by default (parity with a strict-FP32 reference), the device id.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OodgateError, ProviderError
from .engine_cache import DEFAULT_BATCH_PROFILE, BatchProfile, default_cache_dir, gpu_slug, graph_sha256
from .tensorrt import PROVIDER_NAME, device_facts, tensorrt_unavailable_reason

#: not an ONNX Runtime provider: oodgate's own TensorRT runner (oodgate.runtime.tensorrt)
NATIVE_TENSORRT = PROVIDER_NAME
#: ONNX Runtime execution providers per user-facing name, in order of preference
PROVIDER_CHAINS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
PROVIDER_NAMES = ("auto", "cpu", "cuda", "tensorrt", NATIVE_TENSORRT)
FP16_HEAD_WARNING = ("ONNX Runtime's TensorRT EP cannot keep the detector head in FP32: with trt_fp16_enable the "
                     "logsumexp/exp of the score run in half precision and can overflow (exp(x) > 65504 for x > 11). "
                     "Use providers='trt-native' with precision='fp16' (FP32 head), or measure the drift with "
                     "`oodgate parity` first")


def onnxruntime_module() -> Any:
    """The onnxruntime module, or OodgateError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise OodgateError("ONNX Runtime is not installed: pip install 'oodgate[cpu]' (or 'oodgate[gpu]' for "
                           "CUDA/TensorRT; the two packages conflict, install only one)") from None
    return onnxruntime


def resolve_providers(provider: str) -> list[str]:
    """The ONNX Runtime provider list for 'auto' | 'cpu' | 'cuda' | 'tensorrt' (['trt-native'] for the native
    TensorRT runner, after checking that TensorRT and cuda-python import)."""
    if provider == NATIVE_TENSORRT:
        reason = tensorrt_unavailable_reason()
        if reason:
            raise ProviderError(reason)
        return [NATIVE_TENSORRT]
    ort = onnxruntime_module()
    available = ort.get_available_providers()
    if provider == "auto":
        for name in ("tensorrt", "cuda", "cpu"):
            if PROVIDER_CHAINS[name][0] in available:
                return [p for p in PROVIDER_CHAINS[name] if p in available]
        return ["CPUExecutionProvider"]
    if provider not in PROVIDER_CHAINS:
        raise OodgateError(f"unknown provider '{provider}': use one of {', '.join(PROVIDER_NAMES)}")
    wanted = PROVIDER_CHAINS[provider][0]
    if wanted not in available:
        raise ProviderError(
            f"provider '{provider}' needs ONNX Runtime's {wanted}, which this install lacks (available: "
            f"{', '.join(available)}): install onnxruntime-gpu (pip install 'oodgate[gpu]') on a machine with a "
            "GPU, or use --provider cpu")
    return [p for p in PROVIDER_CHAINS[provider] if p in available]


def check_providers(requested: Sequence[str], active: Sequence[str]) -> None:
    """Raise if the first requested GPU provider is not among the session's active ones (a silent CPU fallback)."""
    first = requested[0]
    if first != "CPUExecutionProvider" and first not in active:
        raise ProviderError(f"ONNX Runtime fell back from {first} to {', '.join(active)}: the GPU provider failed "
                            "to initialise (check CUDA/cuDNN/TensorRT libraries), or use --provider cpu")


def _shape_text(input_name: str, shape: Sequence[int]) -> str:
    return f"{input_name}:" + "x".join(str(int(d)) for d in shape)


def ort_cache_dir(graph: str | Path, root: str | Path | None = None) -> Path:
    """Folder for ONNX Runtime's TensorRT engine and timing caches of ``graph``, keyed by what invalidates them."""
    ort = onnxruntime_module()
    graph = Path(graph)
    parts = [f"ort{ort.__version__}"]
    try:
        facts = device_facts()
    except OodgateError:  # no TensorRT/cuda-python/GPU here: the graph hash and ORT version still key the folder
        facts = None
    if facts is not None:
        parts += [f"trt{facts.tensorrt_version}", gpu_slug(facts.gpu_name), f"sm{facts.compute_capability.replace('.', '')}"]
    base = Path(root) if root is not None else default_cache_dir().parent / "ort-tensorrt"
    return base / f"{graph.stem}-{graph_sha256(graph)[:16]}" / "-".join(parts)


def tensorrt_ep_options(*, input_name: str, input_shape: Sequence[int], profile: Any = DEFAULT_BATCH_PROFILE,
                        fp16: bool = False, cache_dir: str | Path | None = None, timing_cache: bool = True,
                        device_id: int = 0, workspace_bytes: int | None = None,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """ONNX Runtime TensorRT EP options: profile over the batch axis, FP16, engine + timing caches in ``cache_dir``."""
    profile = BatchProfile.parse(profile)
    lo, opt, hi = profile.shapes(tuple(input_shape))
    opts: dict[str, Any] = {
        "device_id": int(device_id),
        "trt_fp16_enable": bool(fp16),
        "trt_profile_min_shapes": _shape_text(input_name, lo),
        "trt_profile_opt_shapes": _shape_text(input_name, opt),
        "trt_profile_max_shapes": _shape_text(input_name, hi),
    }
    if cache_dir is not None:
        opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        if timing_cache:
            opts.update(trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir))
    if workspace_bytes:
        opts["trt_max_workspace_size"] = int(workspace_bytes)
    if fp16:
        warnings.warn(FP16_HEAD_WARNING, stacklevel=2)
    opts.update(extra or {})
    return opts


def cuda_ep_options(*, device_id: int = 0, tf32: bool = False, extra: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """ONNX Runtime CUDA EP options: the device and TF32 (off by default: FP32 convolutions stay FP32)."""
    return {"device_id": int(device_id), "use_tf32": int(bool(tf32)), **(extra or {})}


def provider_options(providers: Sequence[str], *, graph: str | Path, input_name: str, input_shape: Sequence[int],
                     fp16: bool = False, profile: Any = DEFAULT_BATCH_PROFILE, cache_dir: str | Path | None = None,
                     device_id: int = 0) -> list[dict[str, Any]]:
    """One options dict per entry of an ONNX Runtime provider list (TensorRT, CUDA, CPU), in the same order.

    ``cache_dir``: where the TensorRT EP keeps engines; default: a folder keyed by the graph hash, the ONNX Runtime
    and TensorRT versions and the GPU (``ort_cache_dir``).
    """
    out: list[dict[str, Any]] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            folder = Path(cache_dir) if cache_dir is not None else ort_cache_dir(graph)
            folder.mkdir(parents=True, exist_ok=True)
            out.append(tensorrt_ep_options(input_name=input_name, input_shape=input_shape, profile=profile, fp16=fp16,
                                           cache_dir=folder, device_id=device_id))
        elif name == "CUDAExecutionProvider":
            out.append(cuda_ep_options(device_id=device_id))
        else:
            out.append({})
    return out


def parse_provider_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'NAME[:OPTION,...]' -> (name, options). Options, for 'tensorrt' and 'trt-native' only: 'fp16' | 'fp32' and
    'batch=MIN/OPT/MAX' (the optimisation profile), e.g. 'trt-native:fp16,batch=1/8/32' or 'tensorrt:fp16'."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    opts: dict[str, Any] = {}
    for item in (p.strip() for p in rest.split(",")):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if item in ("fp16", "fp32"):
            opts["precision"] = item
        elif key.strip() == "batch" and eq:
            opts["profile"] = BatchProfile.parse(value.replace("/", ","))
        else:
            raise OodgateError(f"provider option {item!r} in {spec!r}: use fp16, fp32 or batch=MIN/OPT/MAX, e.g. "
                               "trt-native:fp16,batch=1/8/32")
    if opts and name not in ("tensorrt", "trt-native"):
        raise OodgateError(f"provider '{name}' takes no options (got {spec!r}): options are for tensorrt and "
                           "trt-native, e.g. tensorrt:fp16")
    return name, opts


@dataclass(frozen=True)
class ProviderSpec:
    """A parsed provider spec: the name and its options (precision 'fp16'/'fp32', the batch profile)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> "ProviderSpec":
        name, options = parse_provider_spec(spec)
        return cls(name, options)

    @property
    def native(self) -> bool:
        return self.name == NATIVE_TENSORRT


def session_providers(graph: str | Path, spec: str, *, input_name: str, input_shape: Sequence[int]
                      ) -> tuple[list[str], list[dict[str, Any]] | None]:
    """(ONNX Runtime provider list, provider options) for an ONNX Runtime spec such as 'cuda' or 'tensorrt:fp16'.

    GPU providers get oodgate's default options (batch profile 1/32/32 unless the spec gives one, engine cache,
    TF32 off); the CPU gets none.
    """
    parsed = ProviderSpec.parse(spec)
    if parsed.native:
        raise OodgateError("'trt-native' is not an ONNX Runtime provider: open it with Session(path, 'trt-native')")
    chain = resolve_providers(parsed.name)
    if chain[0] not in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
        return chain, None
    return chain, provider_options(chain, graph=graph, input_name=input_name, input_shape=input_shape,
                                   fp16=parsed.options.get("precision") == "fp16",
                                   profile=parsed.options.get("profile", DEFAULT_BATCH_PROFILE))


__all__ = ["DEFAULT_BATCH_PROFILE", "FP16_HEAD_WARNING", "NATIVE_TENSORRT", "PROVIDER_CHAINS", "PROVIDER_NAMES",
           "ProviderError", "ProviderSpec", "check_providers", "cuda_ep_options", "onnxruntime_module",
           "ort_cache_dir", "parse_provider_spec", "provider_options", "resolve_providers", "session_providers",
           "tensorrt_ep_options"]
