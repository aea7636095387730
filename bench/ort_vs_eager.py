"""Question 2: the oodgate graph under ONNX Runtime vs the PyTorch-eager reference of the same detector.

    python bench/ort_vs_eager.py [--quick] [--threads 1] [--models ...]

The eager reference is what OpenOOD / pytorch-ood users run: the same backbone and the same detector head as torch
modules, called under ``torch.no_grad()`` (for the single-pass detectors it is the very module oodgate exports).
Latency = batch 1, throughput = batch 32; PyTorch and ONNX Runtime use the same number of intra-op threads. Target:
ONNX Runtime >= 1.3x faster on CPU. AdaSCALE (autograd reference vs traced graph) is in ``adascale_floor.py``.
"""

from __future__ import annotations

import argparse
import time

from common import (SINGLE_PASS, bench_model, calibration, chosen_models, eager_runner, fmt_ratio, fmt_time,
                    graph_path, log, md_table, ort_cpu, ort_runner, ratio, script_main, Section, set_threads, Stat,
                    time_interleaved, verdict)

TARGET = 1.3
#: eager calls of the 224x224 models at batch 32 take seconds on one core, and the single-pass heads are a small
#: share of them (question 1), so a few detectors stand for the rest there: the cheapest head (Energy), the
#: costliest (LINe), a TopK one (ASH-S) and the retrained one (MOS)
METHODS_BY = {("efficientnet-lite0", 32): ("energy", "ash_s", "line", "mos"),
              ("resnet50-sized", 1): ("energy", "ash_s", "line", "mos"), ("resnet50-sized", 32): ("energy",)}
REPS = {("digits-cnn", 1): 11, ("digits-cnn", 32): 11, ("efficientnet-lite0", 1): 9, ("efficientnet-lite0", 32): 3,
        ("resnet50-sized", 1): 7, ("resnet50-sized", 32): 3}


def run(args: argparse.Namespace) -> Section:
    t_start = time.perf_counter()
    set_threads(args.threads)
    batches = (1, 8) if args.quick else (1, 32)
    data: dict = {"threads": args.threads, "results": {}}
    rows, misses = [], []
    for name in chosen_models(args):
        bm = bench_model(name)
        for batch in batches:
            methods = METHODS_BY.get((name, batch), SINGLE_PASS)
            sessions = {m: ort_cpu(graph_path(bm, m), args.threads) for m in methods}
            cals = {m: calibration(bm, m) for m in methods}
            reps = 3 if args.quick else REPS.get((name, batch), 5)
            x = bm.inputs(batch)
            variants = {}
            for m in methods:
                variants[f"ort:{m}"] = ort_runner(sessions[m], x)
                variants[f"eager:{m}"] = eager_runner(bm, cals[m], x)
            log(f"ort_vs_eager: {name} batch {batch}, {len(variants)} variants x {reps} reps")
            t = time_interleaved(variants, reps=reps)
            for i, m in enumerate(methods):
                speedup = ratio(t[f"eager:{m}"], t[f"ort:{m}"])
                ort_s, eager_s = Stat.of(t[f"ort:{m}"]), Stat.of(t[f"eager:{m}"])
                ok = speedup.median >= TARGET
                if not ok:
                    misses.append(f"{name} batch {batch} {m}: {speedup.median:.2f}×")
                if batch == 1:
                    ort_col, eager_col = fmt_time(ort_s.median), fmt_time(eager_s.median)
                else:
                    ort_col, eager_col = f"{batch / ort_s.median:.1f} img/s", f"{batch / eager_s.median:.1f} img/s"
                rows.append([bm.name if i == 0 else "", f"{batch} ({'latency' if batch == 1 else 'throughput'})"
                             if i == 0 else "", m, ort_col, eager_col, fmt_ratio(speedup), verdict(ok)])
                data["results"][f"{name}/b{batch}/{m}"] = {"ort_s": ort_s.as_dict(), "eager_s": eager_s.as_dict(),
                                                           "speedup": speedup.as_dict(), "reps": reps}
            del variants, sessions
    body = f"""
ONNX Runtime CPU (oodgate graph) vs PyTorch eager (same backbone and detector head, `torch.no_grad()`), both on
{args.threads} intra-op thread(s), interleaved. Batch 1: latency per call (median); batch {batches[1]}: throughput
(images/s, from the median time). Speed-up = eager time / ONNX Runtime time per repetition, median [q1–q3].
Target ≥ {TARGET}×. Where eager calls take seconds (the 224×224 models at batch 32, the ResNet-50-sized CNN) a few
detectors stand for all: Energy (cheapest head), ASH-S (TopK), LINe (costliest head), MOS (retrained head) — Energy
alone for the ResNet-50-sized CNN at batch 32; the backbone is most of every other single-pass graph there
(question 1). AdaSCALE is in question 3.

{md_table(["model", "batch", "method", "ONNX Runtime", "PyTorch eager", "speed-up (eager / ORT)",
           f"target ≥ {TARGET}×"], rows)}
"""
    return Section("ort_vs_eager", "2. ONNX Runtime graph vs the PyTorch-eager reference", body, data, misses,
                   time.perf_counter() - t_start)


if __name__ == "__main__":
    script_main(run, __doc__)
