"""Question 2: the oodgate graph under ONNX Runtime vs the PyTorch-eager reference of the same detector.

    python bench/ort_vs_eager.py [--quick] [--threads 1] [--models ...]
"""

from __future__ import annotations

import argparse

from common import (GRAPHS, SINGLE_PASS, Section, Stat, bench_model, calibration, chosen_models, eager_runner,
                    fmt_ratio, fmt_time, graph_path, md_table, ort_cpu, ort_runner, ratio, script_main,
                    time_interleaved, verdict)

TARGET = 1.3
#: eager calls of the 224x224 models at batch 32 take seconds, and the single-pass heads are a small share of them
#: (question 1): there the cheapest head (Energy), a TopK one (ASH-S), the costliest (LINe) and MOS stand for all
FEW = ("energy", "ash_s", "line", "mos")
METHODS_BY = {("efficientnet-lite0", 32): FEW, ("resnet50-sized", 1): FEW, ("resnet50-sized", 32): ("energy",)}
REPS = {("digits-cnn", 1): 11, ("digits-cnn", 32): 11, ("efficientnet-lite0", 1): 9, ("efficientnet-lite0", 32): 3,
        ("resnet50-sized", 1): 7, ("resnet50-sized", 32): 3}


def run(args: argparse.Namespace) -> Section:
    batches = (1, 8) if args.quick else (1, 32)
    data: dict = {"results": {}}
    rows, targets = [], []
    for name in chosen_models(args):
        bm = bench_model(name)
        for batch in batches:
            methods = [m for m in METHODS_BY.get((name, batch), SINGLE_PASS) if m in GRAPHS[name]]
            x = bm.inputs(batch)
            variants = {}
            for m in methods:
                variants[f"ort:{m}"] = ort_runner(ort_cpu(graph_path(bm, m), args.threads), x)
                variants[f"eager:{m}"] = eager_runner(bm, calibration(bm, m), x)
            t = time_interleaved(variants, reps=3 if args.quick else REPS.get((name, batch), 5),
                                 what=f"ort_vs_eager: {name} batch {batch}")
            speedups = []
            for i, m in enumerate(methods):
                sp, o, e = ratio(t[f"eager:{m}"], t[f"ort:{m}"]), Stat.of(t[f"ort:{m}"]), Stat.of(t[f"eager:{m}"])
                speedups.append(sp.median)
                cols = ([fmt_time(o.median), fmt_time(e.median)] if batch == 1 else
                        [f"{batch / o.median:.1f} img/s", f"{batch / e.median:.1f} img/s"])
                rows.append([bm.name if i == 0 else "", f"{batch} ({'latency' if batch == 1 else 'throughput'})"
                             if i == 0 else "", m, *cols, fmt_ratio(sp), verdict(sp.median >= TARGET)])
                data["results"][f"{name}/b{batch}/{m}"] = {"ort_s": o.as_dict(), "eager_s": e.as_dict(),
                                                           "speedup": sp.as_dict()}
            targets.append([f"2. ORT ≥ {TARGET}× PyTorch eager — {name}, batch {batch}",
                            f"{min(speedups):.2f}×–{max(speedups):.2f}×", min(speedups) >= TARGET])
    body = f"""
ONNX Runtime CPU (oodgate graph) vs PyTorch eager — what OpenOOD / pytorch-ood users run: the same backbone and head
as torch modules under `torch.no_grad()` (for the single-pass detectors the very module oodgate exports),
{args.threads} intra-op thread(s) each, interleaved. Batch 1: latency per call (median); batch {batches[1]}:
throughput (images/s from the median time). Speed-up = eager time / ONNX Runtime time per repetition, median
[q1–q3]. Where eager calls take seconds, or whole graphs are not exported for every detector (`bench/common.py`
GRAPHS), a few stand for all. AdaSCALE (autograd reference vs traced graph) is in question 3.

{md_table(["model", "batch", "method", "ONNX Runtime", "PyTorch eager", "speed-up (eager / ORT)",
           f"target ≥ {TARGET}×"], rows)}
"""
    return Section("ort_vs_eager", "2. ONNX Runtime graph vs the PyTorch-eager reference", body, data, targets)


if __name__ == "__main__":
    script_main(run, __doc__)
