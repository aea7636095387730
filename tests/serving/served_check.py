"""Run in the PyTriton environment (bench/pytriton_env.sh): serve a graph on 127.0.0.1, query it with tritonclient
over HTTP and gRPC (single requests and concurrent ones, so that the dynamic batcher joins them), save what the
server answered to an .npz for the test to compare with a local Session. Bounded: a fixed number of requests,
every call with a timeout, the server stops when the block ends.

usage: python served_check.py GRAPH INPUTS.npy OUT.npz
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from oodgate.serving.pytriton_host import OUTPUT_DTYPES, serve_graph

TIMEOUT_S = 30


def query_http(url: str, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.http as http

    client = http.InferenceServerClient(url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S)
    try:
        inp = http.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        res = client.infer(name, [inp], outputs=[http.InferRequestedOutput(k, binary_data=True) for k in OUTPUT_DTYPES])
        return {k: res.as_numpy(k) for k in OUTPUT_DTYPES}
    finally:
        client.close()


def query_grpc(url: str, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    try:
        inp = grpc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer(name, [inp], outputs=[grpc.InferRequestedOutput(k) for k in OUTPUT_DTYPES],
                           client_timeout=TIMEOUT_S)
        return {k: res.as_numpy(k) for k in OUTPUT_DTYPES}
    finally:
        client.close()


def listening_sockets() -> list[str] | None:
    """Local addresses of the TCP/UDP sockets that this process, the Triton server and its Python backend stubs
    listen on (from `ss -lntup`), for the loopback-only check; None without ss."""
    try:
        out = subprocess.run(["ss", "-lntupH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    mine = f"pid={os.getpid()},"
    return [line.split()[4] for line in out.splitlines()
            if line.split() and ("tritonserver" in line or "triton_python" in line or mine in line)]


def main() -> None:
    graph, inputs_path, out_path = sys.argv[1:4]
    x = np.load(inputs_path).astype(np.float32)
    got: dict[str, np.ndarray] = {}
    with serve_graph(graph, name="gate", max_batch_size=8, max_queue_delay_us=2000) as served:
        import tritonclient.http as http

        meta_client = http.InferenceServerClient(served.http, connection_timeout=TIMEOUT_S)
        meta = meta_client.get_model_config("gate")
        meta_client.close()
        # batched requests of up to max_batch_size images each
        chunks = [x[i:i + served.max_batch_size] for i in range(0, len(x), served.max_batch_size)]
        for proto, query in (("http", query_http), ("grpc", query_grpc)):
            parts = [query(getattr(served, proto), "gate", c) for c in chunks]
            for k in OUTPUT_DTYPES:
                got[f"{proto}_batch/{k}"] = np.concatenate([p[k] for p in parts])
        # one request per image from 8 concurrent clients: the dynamic batcher joins them
        with ThreadPoolExecutor(8) as pool:
            singles = list(pool.map(lambda i: query_grpc(served.grpc, "gate", x[i:i + 1]), range(len(x))))
            singles_http = list(pool.map(lambda i: query_http(served.http, "gate", x[i:i + 1]), range(len(x))))
        for k in OUTPUT_DTYPES:
            got[f"grpc_single/{k}"] = np.concatenate([s[k] for s in singles])
            got[f"http_single/{k}"] = np.concatenate([s[k] for s in singles_http])
        sockets = listening_sockets()
        addresses = {"http": served.http, "grpc": served.grpc}
    np.savez(out_path, **got)
    print("RESULT " + json.dumps({"listening": sockets, "addresses": addresses, "max_batch_size": meta.get("max_batch_size"),
                      "dynamic_batching": "dynamic_batching" in meta}))


if __name__ == "__main__":
    main()
