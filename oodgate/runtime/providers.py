"""Options of ONNX Runtime's TensorRT and CUDA execution providers for an oodgate graph.

TensorRT EP: FP16 on/off, an engine cache and a timing cache on disk, and an explicit optimisation profile for the
batch axis (``trt_profile_min/opt/max_shapes``), so that ONNX Runtime builds one engine for the whole batch range
instead of rebuilding for each new batch size. ONNX Runtime does not check its engine cache against the TensorRT
version or the GPU (its documentation says to clear the cache when either changes), so the cache folder is keyed
here by the graph's hash, the ONNX Runtime version and, when they can be read, the TensorRT version and the GPU.

CUDA EP: TF32 off by default (parity with a strict-FP32 reference), the device id.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import OodgateError
from .engine_cache import BatchProfile, default_cache_dir, graph_sha256
from .tensorrt import device_facts

DEFAULT_BATCH_PROFILE = BatchProfile(1, 32, 32)
FP16_HEAD_WARNING = ("ONNX Runtime's TensorRT EP cannot keep the detector head in FP32: with trt_fp16_enable the "
                     "logsumexp/exp of the score run in half precision and can overflow (exp(x) > 65504 for x > 11). "
                     "Use providers='trt-native' with precision='fp16' (FP32 head), or measure the drift with "
                     "`oodgate parity` first")


def _shape_text(input_name: str, shape: Sequence[int]) -> str:
    return f"{input_name}:" + "x".join(str(int(d)) for d in shape)


def ort_cache_dir(graph: str | Path, root: str | Path | None = None) -> Path:
    """Folder for ONNX Runtime's TensorRT engine and timing caches of ``graph``, keyed by what invalidates them."""
    import onnxruntime as ort

    graph = Path(graph)
    parts = [f"ort{ort.__version__}"]
    try:
        facts = device_facts()
    except OodgateError:  # no TensorRT/cuda-python/GPU here: the graph hash and ORT version still key the folder
        facts = None
    if facts is not None:
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", facts.gpu_name).strip("-").lower()
        parts += [f"trt{facts.tensorrt_version}", gpu, f"sm{facts.compute_capability.replace('.', '')}"]
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


def open_session(graph: str | Path, spec: str, **session_kwargs: Any) -> Any:
    """A Session for a provider spec ('cpu', 'cuda', 'tensorrt:fp16', 'trt-native:fp16,batch=1/8/32', ...)."""
    from .metadata import read_graph_info
    from .session import Session, resolve_providers

    name, opts = parse_provider_spec(spec)
    if not opts:
        return Session(graph, providers=name, **session_kwargs)
    if name == "trt-native":
        return Session(graph, providers=name, provider_options=[opts], **session_kwargs)
    info = read_graph_info(graph)
    chain = resolve_providers(name)
    options = provider_options(chain, graph=graph, input_name=info.input_name, input_shape=info.input_shape,
                               fp16=opts.get("precision") == "fp16", profile=opts.get("profile", DEFAULT_BATCH_PROFILE))
    return Session(graph, providers=name, provider_options=options, **session_kwargs)
