"""Question 5: how each method's cost scales with the batch size and the number of classes, and LINe's memory.

    python bench/scaling.py [--quick] [--threads 1]

ONNX Runtime CPU, interleaved per batch / class count: the heads alone at ImageNet-ResNet-50 shape (C = 1000,
D = 2048) vs batch size; the heads alone at D = 2048 vs C = 10, 100, 1000 (batch 32); the whole digits-CNN graphs vs
batch size. ``linear`` is the classifier's Linear alone, ``line_previous`` LINe's head before issue 16 (``heads.py``).
Peak memory of one run (a fresh process per cell): the heads at C = 1000, D = 2048, and the whole ResNet-50-sized
graphs (bare classifier and LINe) at batch 256 — LINe's masks depend on each sample's class, so its head works on
(N, C, D) comparisons; the target is LINe's graph within 2x the bare graph's peak.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import (CACHE, METHODS, Section, Stat, bare_graph_path, bench_model, fmt_time, graph_path, log, md_table,
                    ort_cpu, ort_runner, run_json_child, script_main, time_interleaved)
from heads import head_graph_path, head_inputs

HEADS = ("linear", *METHODS, "line_previous")
D = 2048
MEMORY_HEADS = ("linear", "energy", "line", "line_previous")
MEMORY_TARGET = 2.0


def memory_child(path: str, feeds: dict[str, str], threads: int) -> dict:
    """In a fresh process: peak resident memory that one run adds, the session and its inputs loaded first."""
    from common import peak_memory

    sess = ort_cpu(path, threads)
    arrays = {k: np.load(v) for k, v in feeds.items()}
    with peak_memory() as mem:
        sess.run(None, arrays)
    return {"peak_mib": mem["peak_mib"], "reset": bool(mem["reset"])}


def _peak(path, feeds: dict[str, np.ndarray], threads: int) -> float:  # noqa: ANN001
    files = {}
    for k, v in feeds.items():
        files[k] = str(CACHE / "memory-inputs" / f"{k}-{'x'.join(map(str, v.shape))}.npy")
        Path(files[k]).parent.mkdir(parents=True, exist_ok=True)
        np.save(files[k], v)
    return run_json_child(f"from scaling import memory_child; import json; print(json.dumps(memory_child("
                          f"{str(path)!r}, {files!r}, {threads})))", f"memory {Path(path).name}")["peak_mib"]


def _time_table(sessions: dict, feeds_of, keys, reps: int, what: str, per: str) -> tuple[dict, list]:
    """Time the sessions interleaved at each key (a batch or a class count); {method: {key: median}}, table rows."""
    out: dict[str, dict] = {m: {} for m in sessions(keys[0])}
    for k in keys:
        sess = sessions(k)
        log(f"scaling: {what} {per} {k}, {len(sess)} variants x {reps} reps")
        t = time_interleaved({m: ort_runner(s, feeds_of(m, k)) for m, s in sess.items()}, reps=reps)
        for m, v in t.items():
            out[m][k] = Stat.of(v).median
    return out, [[m] + [fmt_time(v[k] / (k if per == "batch" else 1)) for k in keys] for m, v in out.items()]


def run(args: argparse.Namespace) -> Section:
    batches = (1, 16, 64) if args.quick else (1, 4, 16, 64, 256)
    classes = (10, 1000)
    reps = 3 if args.quick else 5
    heads_c1000 = {m: ort_cpu(head_graph_path(m, 1000, D), args.threads) for m in HEADS}
    by_batch, rows_a = _time_table(lambda b: heads_c1000, lambda m, b: head_inputs(m, 1000, D, b), batches, reps,
                                   "heads C=1000", "batch")
    del heads_c1000
    by_class, rows_b = _time_table(
        lambda c: {m: ort_cpu(head_graph_path(m, c, D), args.threads) for m in HEADS},
        lambda m, c: head_inputs(m, c, D, 32), classes, reps, "heads batch 32", "classes")
    for row, m in zip(rows_b, by_class):
        row.append(f"{by_class[m][classes[-1]] / by_class[m][classes[0]]:.0f}×")
    bm = bench_model("digits-cnn")
    digits = {"bare": ort_cpu(bare_graph_path(bm), args.threads),
              **{m: ort_cpu(graph_path(bm, m), args.threads) for m in METHODS}}
    by_digits, rows_c = _time_table(lambda b: digits, lambda m, b: bm.inputs(b), batches, 3 if args.quick else 15,
                                    "digits graphs", "batch")
    for row, m in zip(rows_c, by_digits):
        row[1:] = [f"{cell} ({by_digits[m][b] / by_digits['bare'][b]:.2f}×)" for cell, b in zip(row[1:], batches)]
    mem_batches = (1, 64) if args.quick else (1, 64, 256)
    memory = {m: {b: _peak(head_graph_path(m, 1000, D), head_inputs(m, 1000, D, b), args.threads)
                  for b in mem_batches} for m in MEMORY_HEADS}
    mem_rows = [[m, *[f"{memory[m][b]:.0f} MiB" for b in mem_batches]] for m in MEMORY_HEADS]
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
    notes = [f"**LINe's head, before and after issue 16 (same run).** At C = 1000, D = 2048 the current head is "
             + ", ".join(f"{s:.1f}× as fast as the previous one at batch {b}" for b, s in speed.items())
             + f"; one head run adds {memory['line'][big]:.0f} MiB at batch {big} (previous head "
             f"{memory['line_previous'][big]:.0f} MiB; the Linear alone {memory['linear'][big]:.0f} MiB). Whole "
             f"ResNet-50-sized graph at batch {big}: LINe {whole['line']:.0f} MiB, bare {whole['bare']:.0f} MiB. "
             f"LINe's head alone still costs {by_batch['line'][batches[-1]] / by_batch['linear'][batches[-1]]:.0f}× "
             f"the Linear at batch {batches[-1]}: its per-sample masks make the last layer N masked products (a "
             "multiply and a ThresholdedRelu over N·C·D values, then a batched MatMul) instead of one GEMM."]
    body = f"""
ONNX Runtime CPU, {args.threads} intra-op thread(s), medians of {reps} interleaved repetitions (digits graphs:
{3 if args.quick else 15}). Raw numbers: `bench/.cache/results/scaling.json`.

**Head alone, C = 1000, D = 2048: time per image vs batch size**

{md_table(["head", *[f"batch {b}" for b in batches]], rows_a)}

**Head alone, D = 2048, batch 32: time per batch vs number of classes**

{md_table(["head", *[f"C = {c}" for c in classes], f"C={classes[-1]} / C={classes[0]}"], rows_b)}

**Whole digits-CNN graphs: time per image vs batch size (and / bare classifier at that batch)**

{md_table(["graph", *[f"batch {b}" for b in batches]], rows_c)}

**Peak memory one run adds** (resident memory, a fresh process per cell, session loaded before the count): heads at
C = 1000, D = 2048; whole ResNet-50-sized graphs at batch {big}.

{md_table(["head", *[f"batch {b}" for b in mem_batches]], mem_rows)}

{md_table(["whole graph, resnet50-sized", f"batch {big}"], [[w, f"{v:.0f} MiB"] for w, v in whole.items()])}
"""
    return Section("scaling", "5. Scaling with batch size and number of classes; LINe's memory", body, data, targets,
                   notes)


if __name__ == "__main__":
    script_main(run, __doc__)
