"""When does Ray pay off for batch scoring? The digits DICE graph scores the same images (digits 'test', repeated)
three ways, measured in one run: a plain loop over one Session, a two-process pool (multiprocessing, one Session
per process) and Ray Data (score_dataset: 2 actors holding a Session, Parquet output) on a local Ray bound to
127.0.0.1. Wall times include each way's start-up (Ray's is also given alone); all three give the same scores.

    python bench/ray_scale.py [--images 8000]

Writes its table into docs/SERVING.md (between the bench/ray_scale.py markers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when ray is imported: loopback only

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import cpu_name  # noqa: E402
from serve import DOC, prepare_graph, write_marked_block  # noqa: E402

BEGIN, END = "<!-- bench/ray_scale.py: begin -->", "<!-- bench/ray_scale.py: end -->"


def _score_part(args: tuple[str, list]) -> list[float]:
    from oodgate.runtime import Session

    graph, images = args
    with Session(graph, providers="cpu", threads=1) as sess:
        return sess.run(images, batch_size=64).scores.tolist()


def main() -> None:
    import multiprocessing as mp

    import numpy as np

    from oodgate.data import digits
    from oodgate.runtime import Session

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8000)
    args = parser.parse_args()
    graph = str(prepare_graph())
    base = list(digits("test").images)
    images = [base[i % len(base)] for i in range(args.images)]
    rows = []

    t0 = time.perf_counter()
    with Session(graph, providers="cpu", threads=1) as sess:
        ref = sess.run(images, batch_size=64).scores
    rows.append(("plain loop, 1 process", time.perf_counter() - t0, None))

    t0 = time.perf_counter()
    half = len(images) // 2
    with mp.get_context("spawn").Pool(2) as pool:
        parts = pool.map(_score_part, [(graph, images[:half]), (graph, images[half:])])
    pool_scores = np.asarray(parts[0] + parts[1], np.float32)
    rows.append(("process pool, 2 processes", time.perf_counter() - t0, None))

    import ray

    from oodgate.serving.ray_scoring import read_scores, score_dataset

    out = Path(tempfile.mkdtemp()) / "scores"
    t0 = time.perf_counter()
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
             object_store_memory=200 * 1024 * 1024)
    t_init = time.perf_counter() - t0
    try:
        ds = ray.data.from_items([{"id": i, "image": im} for i, im in enumerate(images)])
        score_dataset(ds, graph, out, keep=("id",), actors=2, cpus_per_actor=0.5, batch_size=256)
    finally:
        ray.shutdown()
    rows.append(("Ray Data, 2 actors (0.5 CPU each)", time.perf_counter() - t0, t_init))
    got = read_scores(out)
    shutil.rmtree(out.parent, ignore_errors=True)
    ray_scores = got["score"][np.argsort(got["id"])]
    agree = (np.allclose(pool_scores, ref, rtol=1e-6, atol=1e-6), np.allclose(ray_scores, ref, rtol=1e-6, atol=1e-6))

    base_t = rows[0][1]
    lines = [f"Measured by `python bench/ray_scale.py --images {args.images}` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {cpu_name()}, {os.cpu_count()} logical cores, "
             f"load average {[round(v, 2) for v in os.getloadavg()]} at the end (a shared machine); Ray "
             f"{ray.__version__}. {args.images} digits images (8x8, decoded in memory), digits DICE graph, one ONNX "
             f"Runtime thread per worker. Scores equal the plain loop's: pool {agree[0]}, Ray {agree[1]}.", "",
             "| way | wall time (start-up included) | images/s | vs plain loop |", "|---|---:|---:|---:|"]
    for name, seconds, init in rows:
        extra = f" (Ray start {init:.1f} s)" if init is not None else ""
        lines.append(f"| {name} | {seconds:.1f} s{extra} | {args.images / seconds:,.0f} | {base_t / seconds:.2f}x |")
    text = "\n".join(lines)
    write_marked_block(DOC, BEGIN, END, text)
    print(text)


if __name__ == "__main__":
    main()
