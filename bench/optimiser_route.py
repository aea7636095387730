"""What skipping onnxscript's pattern rewriter changes in AdaSCALE's gradient graphs (issue 16, export time).

    python bench/optimiser_route.py [--models resnet50,vit_b_16] [--reps 7]

Per family of the reduced zoo (tests/zoo/zoo_models.py: random weights with realistic scales), the traced gradient
branch is exported twice with ``oodgate.export_onnx``: with torch.onnx's whole optimiser (``rewrite=True``, the route
before) and as oodgate exports it now (no pattern rewriter). Printed: export time of each, node counts, the largest
relative output difference on 3 random inputs, ONNX Runtime's time ratio (now / before; oodgate's session settings,
1 thread, interleaved, per-repetition ratios: median [q1–q3]) and TensorRT's ONNX parser on the new graph
(TensorRT-RTX where installed, else oodgate's static table). Needs torchvision (and timm for the timm families), as
tests/zoo does.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "zoo"))
sys.path.insert(0, str(ROOT))

from common import fmt_ratio, md_table, ort_cpu, ort_runner, ratio, time_interleaved  # noqa: E402

DEFAULT = "resnet50,efficientnet_b0,mobilenet_v3_large,convnext_tiny,vit_b_16,swin_t"


def compare(name: str, reps: int, folder: Path) -> list[str]:
    import torch
    import zoo_models as zoo

    from oodgate.detectors.gradient import trace_logits_and_input_gradient
    from oodgate.exporter import export_onnx
    from oodgate.runtime.trt_audit import check_graph

    model, size = zoo.build(name, reduced=True)
    example = torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(0))
    module = trace_logits_and_input_gradient(model, example)
    programs, seconds, paths = {}, {}, {}
    for route, rewrite in (("before", True), ("now", None)):
        t0 = time.perf_counter()
        programs[route] = export_onnx(module, example, input_names=["x"], rewrite=rewrite)
        seconds[route] = time.perf_counter() - t0
        paths[route] = folder / f"{name}-{route}.onnx"
        programs[route].save(str(paths[route]))
    sessions = {k: ort_cpu(path, threads=1) for k, path in paths.items()}
    x = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    runners = {k: ort_runner(sess, x) for k, sess in sessions.items()}
    outs = {k: run() for k, run in runners.items()}
    diff = max(float(np.abs(a.astype(np.float64) - b).max() / max(float(np.abs(a).max()), 1e-30))
               for a, b in zip(outs["before"], outs["now"]))
    times = time_interleaved(runners, reps=reps, what=f"{name}: ONNX Runtime, both routes")
    check = check_graph(str(paths["now"]), build=False)
    nodes = {k: collections.Counter(n.op_type for n in p.model_proto.graph.node) for k, p in programs.items()}
    ops = sorted(set().union(*nodes.values()))
    changed = ", ".join(f"{op} {nodes['before'][op]}→{nodes['now'][op]}" for op in ops
                        if nodes["before"][op] != nodes["now"][op]) or "none"
    return [name, f"{seconds['before']:.1f} s", f"{seconds['now']:.1f} s",
            f"{sum(nodes['before'].values())} → {sum(nodes['now'].values())}", changed, f"{diff:.1e}",
            fmt_ratio(ratio(times["now"], times["before"]), digits=3),
            f"{'pass' if check.passed else 'FAIL'} ({check.checker})"]


def _warm_up() -> None:
    """Both routes once on a tiny model: the exporter stack's lazy imports and set-up are not in the first row."""
    import torch

    from oodgate.detectors.gradient import trace_logits_and_input_gradient
    from oodgate.exporter import export_onnx

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 3)).eval()
    example = torch.randn(2, 3, 8, 8)
    module = trace_logits_and_input_gradient(tiny, example)
    for rewrite in (True, None):
        export_onnx(module, example, input_names=["x"], rewrite=rewrite)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT, help=f"reduced zoo families (default: {DEFAULT})")
    parser.add_argument("--reps", type=int, default=7, help="interleaved ONNX Runtime repetitions per family")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    _warm_up()
    header = ["family (reduced)", "export, whole optimiser", "export, no rewriter", "nodes", "ops changed",
              "max rel. output diff", "ORT time now / before, median [q1–q3]", "TensorRT parser"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compare(name, args.reps, Path(tmp)) for name in args.models.split(",") if name]
    print(md_table(header, rows), flush=True)


if __name__ == "__main__":
    main()
