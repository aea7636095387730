"""Question 5: how each method's cost scales with the batch size and the number of classes, and LINe's memory.

    python bench/scaling.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import (CACHE, METHODS, Section, Stat, bare_graph_path, bench_model, fmt_time, graph_path, md_table,
                    ort_cpu, ort_runner, peak_memory, run_json_child, script_main, time_interleaved)
from heads import head_graph_path, head_inputs

HEADS = ("linear", *METHODS, "line_previous")
D = 2048
MEMORY_HEADS = ("linear", "energy", "line", "line_previous")
MEMORY_TARGET = 2.0


def memory_child(path: str, feeds: dict[str, str], threads: int) -> dict:
    """In a fresh process: peak resident memory that one run adds, the session and its inputs loaded first."""
    sess = ort_cpu(path, threads)
    arrays = {k: np.load(v) for k, v in feeds.items()}
    with peak_memory() as mem:
        sess.run(None, arrays)
    return {"peak_mib": mem["peak_mib"], "reset": bool(mem["reset"])}


def _peak(path: Path, feeds: dict[str, np.ndarray], threads: int) -> float:
    files = {k: str(CACHE / "memory-inputs" / f"{k}-{'x'.join(map(str, v.shape))}.npy") for k, v in feeds.items()}
    for k, v in feeds.items():
        Path(files[k]).parent.mkdir(parents=True, exist_ok=True)
        np.save(files[k], v)
    return run_json_child("scaling", f"memory_child({str(path)!r}, {files!r}, {threads})",
                          f"memory {path.name}")["peak_mib"]


def _medians(sessions, feeds_of, keys, reps: int, what: str) -> dict[str, dict]:  # noqa: ANN001
    """{variant: {key: median seconds}}, the sessions (or sessions(key)) timed interleaved at each key (a batch or a
    class count)."""
    out: dict[str, dict] = {}
    for k in keys:
        sess = sessions(k) if callable(sessions) else sessions
        t = time_interleaved({m: ort_runner(s, feeds_of(m, k)) for m, s in sess.items()}, reps=reps,
                             what=f"scaling: {what} {k}")
        for m, v in t.items():
            out.setdefault(m, {})[k] = Stat.of(v).median
    return out


def run(args: argparse.Namespace) -> Section:
    batches, classes = ((1, 16, 64) if args.quick else (1, 4, 16, 64, 256)), (10, 1000)
    reps, digit_reps = (3, 3) if args.quick else (5, 15)
    by_batch = _medians({m: ort_cpu(head_graph_path(m, 1000, D), args.threads) for m in HEADS},
                        lambda m, b: head_inputs(m, 1000, D, b), batches, reps, "heads C=1000, batch")
    by_class = _medians(lambda c: {m: ort_cpu(head_graph_path(m, c, D), args.threads) for m in HEADS},
                        lambda m, c: head_inputs(m, c, D, 32), classes, reps, "heads batch 32, classes")
    bm = bench_model("digits-cnn")
    digits = {"bare": ort_cpu(bare_graph_path(bm), args.threads),
              **{m: ort_cpu(graph_path(bm, m), args.threads) for m in METHODS}}
    by_digits = _medians(digits, lambda m, b: bm.inputs(b), batches, digit_reps, "digits graphs, batch")
    mem_batches = (1, 64) if args.quick else (1, 64, 256)
    memory = {m: {b: _peak(head_graph_path(m, 1000, D), head_inputs(m, 1000, D, b), args.threads)
                  for b in mem_batches} for m in MEMORY_HEADS}
    big = mem_batches[-1]
    rn = bench_model("digits-cnn" if args.quick else "resnet50-sized")
    whole = {w: _peak(bare_graph_path(rn) if w == "bare" else graph_path(rn, w), {"input": rn.inputs(big)},
                      args.threads) for w in ("bare", "line")}
    mem_ratio = whole["line"] / max(whole["bare"], 1.0)
    speed = {b: by_batch["line_previous"][b] / by_batch["line"][b] for b in batches}
    data = {"batch": by_batch, "classes": by_class, "digits": by_digits, "memory_heads": memory,
            "memory_graphs": whole, "line_speedup_vs_previous": speed}
    targets = [[f"LINe graph peak memory ≤ {MEMORY_TARGET:.0f}× the bare graph's — {rn.name}, batch {big}",
                f"{whole['line']:.0f} MiB vs {whole['bare']:.0f} MiB ({mem_ratio:.2f}×)", mem_ratio <= MEMORY_TARGET]]
    notes = ["**LINe's head, before and after issue 16 (same run).** At C = 1000, D = 2048 the current head is "
             + ", ".join(f"{s:.1f}× as fast as the previous one at batch {b}" for b, s in speed.items())
             + f"; one head run adds {memory['line'][big]:.0f} MiB at batch {big} (previous head "
             f"{memory['line_previous'][big]:.0f} MiB; the Linear alone {memory['linear'][big]:.0f} MiB). Whole "
             f"{rn.name} graph at batch {big}: LINe {whole['line']:.0f} MiB, bare {whole['bare']:.0f} MiB. "
             f"LINe's head alone still costs {by_batch['line'][batches[-1]] / by_batch['linear'][batches[-1]]:.0f}× "
             f"the Linear at batch {batches[-1]}: its per-sample masks make the last layer N masked products (a "
             "multiply and a ThresholdedRelu over N·C·D values, then a batched MatMul) instead of one GEMM."]
    body = f"""
ONNX Runtime CPU, {args.threads} intra-op thread(s), medians of {reps} interleaved repetitions (digits graphs:
{digit_reps}); `linear` is the classifier's Linear alone, `line_previous` LINe's head before issue 16, both fitted on
synthetic features (`bench/heads.py`). Raw numbers: `bench/.cache/results/scaling.json`.

**Head alone, C = 1000, D = 2048 (ImageNet-ResNet-50 shape): time per image vs batch size**

{md_table(["head", *[f"batch {b}" for b in batches]], [[m, *(fmt_time(v[b] / b) for b in batches)]
                                                        for m, v in by_batch.items()])}

**Head alone, D = 2048, batch 32: time per batch vs number of classes**

{md_table(["head", *[f"C = {c}" for c in classes], f"C={classes[-1]} / C={classes[0]}"],
          [[m, *(fmt_time(v[c]) for c in classes), f"{v[classes[-1]] / v[classes[0]]:.0f}×"]
           for m, v in by_class.items()])}

**Whole digits-CNN graphs: time per image vs batch size (and / bare classifier at that batch)**

{md_table(["graph", *[f"batch {b}" for b in batches]],
          [[m, *(f"{fmt_time(v[b] / b)} ({v[b] / by_digits['bare'][b]:.2f}×)" for b in batches)]
           for m, v in by_digits.items()])}

**Peak memory one run adds** (resident memory, a fresh process per cell, session loaded before the count): heads at
C = 1000, D = 2048; whole {rn.name} graphs (bare classifier and LINe) at batch {big} — LINe's masks depend on each
sample's class, so its head works on (N, C, D) comparisons; the target is LINe's graph within {MEMORY_TARGET:.0f}× the
bare graph's peak.

{md_table(["head", *[f"batch {b}" for b in mem_batches]], [[m, *(f"{v[b]:.0f} MiB" for b in mem_batches)]
                                                          for m, v in memory.items()])}

{md_table([f"whole graph, {rn.name}", f"batch {big}"], [[w, f"{v:.0f} MiB"] for w, v in whole.items()])}
"""
    return Section("scaling", "5. Scaling with batch size and number of classes; LINe's memory", body, data, targets,
                   notes)


if __name__ == "__main__":
    script_main(run, __doc__)
