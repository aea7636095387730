"""Serving over the Triton protocol: requests/s and latency percentiles of the digits DICE graph hosted by PyTriton
(its bundled Triton server, dynamic batching) on 127.0.0.1, from 8 concurrent clients sending one image per
request, over gRPC and HTTP. Bounded: each client stops after --requests requests or --seconds seconds, whichever
comes first; the server stops when the measurement ends.

    python bench/serve.py            # exports the graph if needed (torch), then runs the server in the PyTriton env
    python bench/serve.py --quick    # fewer requests

PyTriton pins numpy<2, so the server and the clients run in bench/.cache/pytriton-venv (bench/pytriton_env.sh).
Writes its table into docs/SERVING.md (between the bench/serve.py markers) and bench/.cache/serve.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
VENV = Path(os.environ.get("OODGATE_PYTRITON_VENV", CACHE / "pytriton-venv"))
DOC = ROOT / "docs" / "SERVING.md"
BEGIN, END = "<!-- bench/serve.py: begin -->", "<!-- bench/serve.py: end -->"
CLIENTS = 8
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import cpu_name, write_text  # noqa: E402


def write_marked_block(path: Path, begin: str, end: str, text: str) -> None:
    """Replace the text between the markers ``begin``/``end`` in ``path`` (appended when absent), atomically."""
    doc = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + ("\n\n" if doc else "") + block + "\n"
    write_text(path, doc)


def prepare_graph() -> Path:
    """The digits DICE graph (calibrated on digits 'calib'), exported once into bench/.cache/serve/."""
    path = CACHE / "serve" / "digits-dice.onnx"
    if not path.is_file():
        from oodgate import calibrate
        from oodgate.data import digits
        from oodgate.exporter import export

        path.parent.mkdir(parents=True, exist_ok=True)
        export(calibrate("digits-cnn", digits("calib"), method="dice", progress=False), path)
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def client_loop(proto: str, url: str, name: str, x, requests: int, deadline: float, out: list[float],
                errors: list[str]) -> None:
    """One client: send one-image requests until ``requests`` are done or ``deadline`` passes; record latencies."""
    import numpy as np

    if proto == "grpc":
        import tritonclient.grpc as tc
        client = tc.InferenceServerClient(url)
    else:
        import tritonclient.http as tc
        client = tc.InferenceServerClient(url, connection_timeout=30, network_timeout=30)
    try:
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outputs = [tc.InferRequestedOutput(k) for k in ("score", "is_ood", "label")]
        for _ in range(requests):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            res = client.infer(name, [inp], outputs=outputs)
            out.append(time.perf_counter() - t0)
            if res.as_numpy("label").dtype != np.int64:
                errors.append("label is not int64")
                break
    except Exception as exc:  # noqa: BLE001 - reported in the results, the run goes on
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        client.close()


def measure(served, x, proto: str, requests: int, seconds: float) -> dict:
    url = served.grpc if proto == "grpc" else served.http
    warm: list[float] = []
    client_loop(proto, url, served.name, x, 20, time.perf_counter() + 10, warm, [])
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    threads = [threading.Thread(target=client_loop, args=(proto, url, served.name, x, requests, deadline,
                                                          latencies[i], errors)) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    wall = time.perf_counter() - t0
    flat = [v for lat in latencies for v in lat]
    return {"protocol": proto, "requests": len(flat), "seconds": round(wall, 2),
            "req_per_s": round(len(flat) / wall, 1) if wall else 0.0,
            "p50_ms": round(1000 * percentile(flat, 50), 2) if flat else None,
            "p99_ms": round(1000 * percentile(flat, 99), 2) if flat else None, "errors": errors[:3]}


def child(args: argparse.Namespace) -> None:
    """In the PyTriton env: serve, check one answer against the local Session, measure each protocol."""
    import numpy as np

    from oodgate.runtime import Session
    from oodgate.serving.pytriton_host import serve_graph

    rows = []
    with Session(args.graph, providers="cpu") as sess:
        x = np.load(args.input).astype(np.float32)  # one digits 'test' image, preprocessed by the parent
        local = sess.run_array(x)
        single = []
        t_end = time.perf_counter() + 3
        while time.perf_counter() < t_end and len(single) < 3000:  # the in-process floor: no protocol, no batching
            t0 = time.perf_counter()
            sess.run_array(x)
            single.append(time.perf_counter() - t0)
    for delay in args.delays:
        with serve_graph(args.graph, name="gate", max_batch_size=32, max_queue_delay_us=delay,
                         instances=args.instances) as served:
            import tritonclient.grpc as grpc

            c = grpc.InferenceServerClient(served.grpc)
            inp = grpc.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            res = c.infer("gate", [inp])
            assert np.allclose(res.as_numpy("score")[:, 0], local["score"], rtol=1e-6, atol=1e-6)
            assert res.as_numpy("label")[0, 0] == local["label"][0] and res.as_numpy("label").dtype == np.int64
            c.close()
            for proto in ("grpc", "http"):
                row = measure(served, x, proto, args.requests, args.seconds)
                row.update(max_queue_delay_us=delay, instances=args.instances)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    facts = {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "python": platform.python_version(),
             "numpy": np.__version__, "load_average": [round(v, 2) for v in os.getloadavg()],
             "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "local_session_batch1_p50_ms": round(1000 * statistics.median(single), 3),
             "local_session_batch1_req_per_s": round(len(single) / sum(single), 1)}
    try:
        import onnxruntime
        import pytriton
        import tritonclient
        facts.update(onnxruntime=onnxruntime.__version__, pytriton=getattr(pytriton, "__version__", "0.7"),
                     tritonclient=getattr(tritonclient, "__version__", "?"))
    except ImportError:
        pass
    Path(args.json).write_text(json.dumps({"rows": rows, "machine": facts}, indent=1))




def table(result: dict, command: str) -> str:
    m = result["machine"]
    lines = [f"Measured by `{command}` on {m['date']}: {m['cpu']}, {m['logical_cores']} logical cores, load average "
             f"{m['load_average']} at the end (a shared machine); Python {m['python']}, numpy {m['numpy']}, ONNX "
             f"Runtime {m.get('onnxruntime', '?')}, nvidia-pytriton {m.get('pytriton', '?')}. Digits DICE graph, "
             f"input (1, 16, 16); {CLIENTS} concurrent clients (threads of one process), one image per request, "
             "server and clients on 127.0.0.1 of the same 2 cores; max_batch_size 32.", "",
             "| protocol | max_queue_delay | instances | requests | req/s | p50 | p99 | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['protocol']} | {r['max_queue_delay_us']} µs | {r['instances']} | {r['requests']} | "
                     f"{r['req_per_s']:,.0f} | {r['p50_ms']} ms | {r['p99_ms']} ms | {'; '.join(r['errors']) or '—'} |")
    lines += ["", f"For scale: the same graph run in-process by one Session, batch 1, no protocol: "
                  f"{m['local_session_batch1_req_per_s']:,.0f} req/s (p50 {m['local_session_batch1_p50_ms']} ms)."]
    return "\n".join(lines)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 requests per client, 5 s at most")
    parser.add_argument("--requests", type=int, default=2000, help="requests per client at most")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per protocol at most")
    parser.add_argument("--delays", type=int, nargs="+", default=[100, 1000], help="max_queue_delay_us values")
    parser.add_argument("--instances", type=int, default=1, help="model instances (each its own Session)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--graph", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.seconds = 500, 5.0
    if args.child:
        child(args)
        return
    python = VENV / "bin" / "python"
    if not python.is_file():
        sys.exit(f"no PyTriton environment at {VENV}: run bench/pytriton_env.sh first")
    graph = prepare_graph()
    import numpy as np

    from oodgate.data import digits
    from oodgate.runtime import Session

    with Session(graph, providers="cpu") as sess:
        np.save(CACHE / "serve" / "x.npy", sess.preprocess(digits("test").images[:1]))
    out = CACHE / "serve.json"
    cmd = [str(python), str(Path(__file__).resolve()), "--child", "--graph", str(graph), "--json", str(out),
           "--input", str(CACHE / "serve" / "x.npy"),
           "--requests", str(args.requests), "--seconds", str(args.seconds), "--instances", str(args.instances),
           "--delays", *map(str, args.delays)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    budget = 120 + len(args.delays) * 2 * (args.seconds + 60)
    proc = subprocess.run(cmd, env=env, timeout=budget, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the served benchmark failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    command = "python bench/serve.py" + (" --quick" if args.quick else "")
    text = table(result, command)
    write_marked_block(DOC, BEGIN, END, text)
    print(text)


if __name__ == "__main__":
    main()
