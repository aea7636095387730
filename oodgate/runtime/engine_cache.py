"""The TensorRT engine cache: a serialized engine is reused only for the graph, TensorRT version, GPU, precision and
batch profile it was built for; anything else (a re-exported graph, another GPU or TensorRT, a truncated or foreign
file) is rebuilt, never loaded blindly.

Layout: one engine per (graph name, GPU, compute capability, precision, profile) slot,
``<root>/<graph>-<gpu>-sm<cc>-<precision>-b<min>-<opt>-<max>.engine``, and beside it a JSON sidecar
(``.engine.json``) holding the full key and the engine's SHA-256. A lookup compares the sidecar with the current
key field by field and the engine bytes with the recorded hash. Pure Python: the device and TensorRT facts are
passed in, so every decision is testable without TensorRT or a GPU.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import OodgateError
from ..files import write_atomic

ENGINE_FORMAT = "oodgate-trt-engine"
ENGINE_FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16")
SIDECAR_SUFFIX = ".json"


def gpu_slug(name: str) -> str:
    """A GPU name as a file-name part: 'NVIDIA A100-SXM4-80GB' -> 'nvidia-a100-sxm4-80gb' ('gpu' if empty)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "gpu"


def default_cache_dir() -> Path:
    """``$OODGATE_CACHE_DIR/tensorrt``, else ``$XDG_CACHE_HOME/oodgate/tensorrt``, else
    ``~/.cache/oodgate/tensorrt``."""
    if os.environ.get("OODGATE_CACHE_DIR"):
        return Path(os.environ["OODGATE_CACHE_DIR"]) / "tensorrt"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "oodgate" / "tensorrt"


@dataclass(frozen=True)
class DeviceFacts:
    """What an engine is tied to besides the graph: the GPU (name, compute capability) and the TensorRT version."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile of the batch axis: the engine accepts min <= N <= max and is tuned for opt."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        vals = (self.min, self.opt, self.max)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            raise OodgateError(f"batch profile {vals}: give whole numbers min <= opt <= max, e.g. 1,8,32")
        if not 1 <= self.min <= self.opt <= self.max:
            raise OodgateError(f"batch profile min={self.min}, opt={self.opt}, max={self.max}: need "
                               "1 <= min <= opt <= max, e.g. 1,8,32")

    @classmethod
    def parse(cls, value: Any) -> "BatchProfile":
        """From a BatchProfile, an int (1, n, n), a (min, opt, max) sequence or the text 'min,opt,max'."""
        if isinstance(value, BatchProfile):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(1, value, value)
        if isinstance(value, str):
            try:
                value = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
            except ValueError:
                raise OodgateError(f"batch profile {value!r}: write min,opt,max, e.g. 1,8,32") from None
        try:
            lo, opt, hi = (operator.index(v) for v in value)
        except (TypeError, ValueError):
            raise OodgateError(f"batch profile {value!r}: give whole numbers (min, opt, max), e.g. (1, 8, 32)"
                               ) from None
        return cls(lo, opt, hi)

    def shapes(self, sample_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Full input shapes (min, opt, max) for one sample shape (C, H, W)."""
        rest = tuple(int(d) for d in sample_shape)
        return (self.min, *rest), (self.opt, *rest), (self.max, *rest)

    def to_list(self) -> list[int]:
        return [self.min, self.opt, self.max]


#: the batch profile of TensorRT engines (native runner and ONNX Runtime's TensorRT EP) unless one is given
DEFAULT_BATCH_PROFILE = BatchProfile(1, 32, 32)


def graph_sha256(path: str | Path) -> str:
    """SHA-256 of a graph file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; two engines are interchangeable only if their keys are equal."""

    graph_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: BatchProfile
    input_name: str
    input_shape: tuple[int, ...]
    oodgate_version: str = __version__
    build: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise OodgateError(f"precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")

    def fields(self) -> dict[str, Any]:
        """The key as JSON-ready fields (what the sidecar stores)."""
        return {
            "graph_sha256": self.graph_sha256, "tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability, "precision": self.precision,
            "profile": self.profile.to_list(), "input_name": self.input_name, "input_shape": list(self.input_shape),
            "oodgate_version": self.oodgate_version, "build": {k: v for k, v in self.build},
        }

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the key."""
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()

    def slot(self, graph_name: str) -> str:
        """The file stem of this key's cache slot (one engine per graph name, GPU, precision and profile)."""
        gpu = gpu_slug(self.gpu_name)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", graph_name) or "graph"
        cc = self.compute_capability.replace(".", "")
        p = self.profile
        return f"{stem}-{gpu}-sm{cc}-{self.precision}-b{p.min}-{p.opt}-{p.max}"


def engine_key(graph: str | Path, device: DeviceFacts, precision: str, profile: Any, *, input_name: str,
               input_shape: tuple[int, ...], build: dict[str, Any] | None = None) -> EngineKey:
    """The cache key of building ``graph`` on ``device`` (graph hashed from its file)."""
    return EngineKey(graph_sha256(graph), device.tensorrt_version, device.gpu_name, device.compute_capability,
                     precision, BatchProfile.parse(profile), input_name, tuple(int(d) for d in input_shape),
                     build=tuple(sorted((str(k), str(v)) for k, v in (build or {}).items())))


@dataclass(frozen=True)
class CacheLookup:
    """The outcome of looking an engine up: 'hit' (``data`` holds the verified bytes), or 'miss' | 'stale' |
    'foreign' | 'corrupt' with the reason; anything but a hit means: build a new engine."""

    status: str
    engine: Path
    reason: str = ""
    changed: tuple[str, ...] = ()
    data: bytes | None = field(default=None, repr=False)

    @property
    def hit(self) -> bool:
        return self.status == "hit"


def sidecar_path(engine: Path) -> Path:
    """The JSON sidecar beside an engine file."""
    return engine.with_name(engine.name + SIDECAR_SUFFIX)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text[:12] + "…" if len(text) > 16 and all(c in "0123456789abcdef" for c in text) else text


class EngineCache:
    """Serialized TensorRT engines on disk with their keys; see the module docstring."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def engine_path(self, key: EngineKey, graph_name: str) -> Path:
        """Where the engine for ``key`` of the graph named ``graph_name`` lives."""
        return self.root / f"{key.slot(graph_name)}.engine"

    def lookup(self, key: EngineKey, engine: str | Path) -> CacheLookup:
        """Check the engine file at ``engine`` against ``key``: a hit only if sidecar key and engine hash match."""
        engine = Path(engine)
        if not engine.is_file():
            return CacheLookup("miss", engine, "no engine built yet")
        side = sidecar_path(engine)
        try:
            meta = json.loads(side.read_text())
        except FileNotFoundError:
            return CacheLookup("foreign", engine, f"{engine.name} has no {side.name}: not built by oodgate, or "
                                                  "its build was interrupted")
        except (OSError, ValueError) as exc:
            return CacheLookup("foreign", engine, f"{side.name} is unreadable ({type(exc).__name__})")
        if not isinstance(meta, dict) or meta.get("format") != ENGINE_FORMAT:
            return CacheLookup("foreign", engine, f"{side.name} is not an oodgate engine sidecar")
        if meta.get("format_version") != ENGINE_FORMAT_VERSION:
            return CacheLookup("stale", engine, f"sidecar format version {meta.get('format_version')}, this oodgate "
                                                f"writes {ENGINE_FORMAT_VERSION}", ("format_version",))
        stored = meta.get("key") if isinstance(meta.get("key"), dict) else {}
        current = key.fields()
        changed = tuple(k for k in current if stored.get(k) != current[k])
        if changed:
            why = "; ".join(f"{k}: engine {_short(stored.get(k))}, now {_short(current[k])}" for k in changed)
            return CacheLookup("stale", engine, f"built for another {', '.join(changed)} ({why})", changed)
        try:
            data = engine.read_bytes()
        except OSError as exc:
            return CacheLookup("corrupt", engine, f"cannot read {engine.name} ({exc})")
        if len(data) != meta.get("engine_bytes") or hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
            return CacheLookup("corrupt", engine, f"{engine.name} does not match the SHA-256 recorded when it was "
                                                  "built (truncated, overwritten or tampered with)")
        return CacheLookup("hit", engine, "key and engine hash match", data=data)

    def store(self, key: EngineKey, data: bytes, engine: str | Path) -> Path:
        """Write the engine and its sidecar atomically (the old sidecar goes first, so no stale pair survives)."""
        engine = Path(engine)
        engine.parent.mkdir(parents=True, exist_ok=True)
        side = sidecar_path(engine)
        side.unlink(missing_ok=True)
        write_atomic(engine, bytes(data), overwrite=True)
        meta = {"format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "key": key.fields(),
                "key_digest": key.digest(), "engine_sha256": hashlib.sha256(data).hexdigest(),
                "engine_bytes": len(data)}
        write_atomic(side, json.dumps(meta, indent=1, sort_keys=True).encode(), overwrite=True)
        return engine

    def timing_cache_path(self, device: DeviceFacts) -> Path:
        """The builder's timing cache for one GPU model and TensorRT version (shared by all graphs)."""
        gpu = gpu_slug(device.gpu_name)
        cc = device.compute_capability.replace(".", "")
        return self.root / f"timing-{gpu}-sm{cc}-trt{device.tensorrt_version}.cache"

    def invalidate(self, engine: str | Path) -> None:
        """Remove an engine and its sidecar (e.g. one TensorRT refused to deserialize)."""
        engine = Path(engine)
        sidecar_path(engine).unlink(missing_ok=True)
        engine.unlink(missing_ok=True)
