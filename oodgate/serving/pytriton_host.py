"""Hosting an oodgate graph over the Triton protocol (HTTP + gRPC) with PyTriton's bundled Triton server and its
dynamic batcher. No torch; pytriton is imported inside the functions (it pins numpy<2: give it its own
environment, see bench/pytriton_env.sh).
"""

from __future__ import annotations

import os
import socket
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import OodgateError
from ..runtime.session import Session
from .triton import default_model_name

#: the outputs clients receive, one row per request item: logits (C,), score/is_ood/label (1,) as in config.pbtxt
OUTPUT_DTYPES = {"logits": np.float32, "score": np.float32, "is_ood": np.bool_, "label": np.int64}


@dataclass(frozen=True)
class ServedGraph:
    """Where a hosted graph answers: model name, HTTP and gRPC addresses (host:port)."""

    name: str
    http: str
    grpc: str
    max_batch_size: int


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def infer_function(session: Session) -> Callable[..., dict[str, np.ndarray]]:
    """PyTriton's batched callable for ``session``: input (N, C, H, W) -> the graph's four outputs, per-item
    scalars as (N, 1), with the exact dtypes of config.pbtxt (label int64, is_ood bool)."""
    from pytriton.decorators import batch

    input_name = session.info.input_name

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        out = session.run_array(inputs[input_name])
        return {k: np.asarray(out[k], dtype=dt).reshape(len(out[k]), -1) for k, dt in OUTPUT_DTYPES.items()}

    return infer


def _with_libpython(env: dict[str, str]) -> dict[str, str]:
    """LD_LIBRARY_PATH with this interpreter's libpython folder: Triton's Python backend stub links against
    libpython, which a non-system Python (pyenv, conda) keeps outside the loader's default path."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not any(Path(libdir).glob("libpython3*.so*")):
        return env
    paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir not in paths:
        env["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])
    return env


@contextmanager
def serve_graph(graph: str | Path, *, name: str | None = None, host: str = "127.0.0.1", http_port: int = 0,
                grpc_port: int = 0, max_batch_size: int = 32, max_queue_delay_us: int = 100, instances: int = 1,
                providers: str = "cpu", threads: int | None = 1, verbose: bool = False) -> Iterator[ServedGraph]:
    """Serve ``graph`` with PyTriton on ``host`` (default loopback only) until the block ends.

    Each of ``instances`` model instances holds its own Session; Triton's dynamic batcher joins requests up to
    ``max_batch_size`` within ``max_queue_delay_us``. Ports 0 pick free ones. Metrics, SageMaker and Vertex AI
    endpoints stay off.
    """
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        raise OodgateError("serving with PyTriton needs nvidia-pytriton, which pins numpy<2: create its own "
                           "environment with bench/pytriton_env.sh and run there") from None
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise OodgateError(f"instances={instances!r}: give a positive number of model instances")
    sessions = [Session(graph, providers=providers, threads=threads) for _ in range(instances)]
    info = sessions[0].info
    name = default_model_name(graph) if name is None else name
    http_port = http_port or free_port(host)
    grpc_port = grpc_port or free_port(host)
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          allow_metrics=False, allow_gpu_metrics=False, allow_cpu_metrics=False,
                          log_verbose=1 if verbose else 0, exit_timeout_secs=5)
    n_classes = len(info.class_names) if info.class_names else None
    logits_dim = n_classes if n_classes else -1
    saved = dict(os.environ)
    os.environ.update(_with_libpython(dict(os.environ)))
    try:
        with Triton(config=config) as triton:
            triton.bind(
                model_name=name,
                infer_func=[infer_function(s) for s in sessions],
                inputs=[Tensor(name=info.input_name, dtype=np.float32, shape=tuple(info.input_shape))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(logits_dim,)),
                         Tensor(name="score", dtype=np.float32, shape=(1,)),
                         Tensor(name="is_ood", dtype=np.bool_, shape=(1,)),
                         Tensor(name="label", dtype=np.int64, shape=(1,))],
                config=ModelConfig(max_batch_size=max_batch_size,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us)),
                strict=True,
            )
            triton.run()
            yield ServedGraph(name, f"{host}:{http_port}", f"{host}:{grpc_port}", max_batch_size)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for s in sessions:
            s.close()
