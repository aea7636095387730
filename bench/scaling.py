"""Question 5: how each method's cost scales with the batch size (1...256) and the number of classes (10...1000).

    python bench/scaling.py [--quick] [--threads 1]

Three tables, ONNX Runtime CPU, everything interleaved per batch / class count:

- head alone at ImageNet-ResNet-50 shape (C = 1000, D = 2048) vs batch size: time per image;
- head alone at D = 2048 vs the number of classes C = 10, 100, 1000, batch 32;
- whole graphs of the digits CNN (all methods, with the backbone) vs batch size, per image and / bare classifier.

The heads are fitted on synthetic features (``heads.py``); ``linear`` is the bare classifier's Linear alone. AdaSCALE's
head is timed from (h, h') — its gradient branch and second forward scale like the backbone (question 3).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from common import (METHODS, bare_graph_path, bench_model, fmt_time, graph_path, log, md_table, ort_cpu, ort_runner,
                    run_json_child, script_main, Section, set_threads, Stat, time_interleaved)
from heads import head_graph_path, head_inputs

#: ``line_where``: LINe's head as it was before issue 7 (Where + Mul + ReduceSum), to measure the rewrite in one run
HEAD_METHODS = ("linear", *METHODS, "line_where")
BATCHES = (1, 4, 16, 64, 256)
CLASSES = (10, 100, 1000)
D = 2048
#: heads whose peak memory is measured at C = 1000, D = 2048 (a child process each): the Linear, a typical head and
#: LINe, whose masked weights are (N, C, D) tensors
MEMORY_HEADS = ("linear", "energy", "line")
MEMORY_BATCHES = (1, 64, 256)


def _memory_child(path: str, method: str, batch: int, threads: int) -> dict:
    """Run in a fresh process: peak resident memory added by one run of the head graph at this batch."""
    from calibration_cost import _reset_peak, _rss_kib

    sess = ort_cpu(path, threads)
    feeds = head_inputs(method, 1000, D, batch)
    outs = [o.name for o in sess.get_outputs()]
    reset = _reset_peak()
    before, _ = _rss_kib()
    sess.run(outs, feeds)
    _, peak = _rss_kib()
    return {"method": method, "batch": batch, "peak_mib": max(0, peak - before) / 1024, "peak_reset": reset}


def _peak_memory(method: str, batch: int, threads: int) -> dict:
    path = head_graph_path(method, 1000, D)
    code = ("import json, sys; sys.path.insert(0, %r); from scaling import _memory_child; "
            "print(json.dumps(_memory_child(%r, %r, %d, %d)))" % (str(Path(__file__).parent), str(path), method,
                                                                   batch, threads))
    return run_json_child([sys.executable, "-c", code], f"memory child {method} batch {batch}")


def _head_runner(sess, feeds):  # noqa: ANN001, ANN202
    outs = [o.name for o in sess.get_outputs()]
    return lambda: sess.run(outs, feeds)


def run(args: argparse.Namespace) -> Section:
    t_start = time.perf_counter()
    set_threads(args.threads)
    batches = (1, 16, 64) if args.quick else BATCHES
    classes = (10, 1000) if args.quick else CLASSES
    reps = 3 if args.quick else 5
    digits_reps = 3 if args.quick else 15  # whole digits graphs take microseconds: more repetitions cost little
    data: dict = {"threads": args.threads, "batch": {}, "classes": {}, "digits": {}}

    # (a) heads vs batch, C = 1000
    c = 1000
    sessions = {m: ort_cpu(head_graph_path(m, c, D), args.threads) for m in HEAD_METHODS}
    per_image: dict[str, dict[int, float]] = {m: {} for m in HEAD_METHODS}
    for batch in batches:
        variants = {}
        for m, s in sessions.items():
            if m == "line_where" and batch > 64:
                continue  # the replaced form holds ~2x the new one's (N, C, D) memory: up to 64 is enough to compare
            variants[m] = _head_runner(s, head_inputs(m, c, D, batch))
        log(f"scaling: heads C={c} batch {batch}, {len(variants)} variants x {reps} reps")
        t = time_interleaved(variants, reps=reps if batch <= 64 else max(3, reps - 2))
        for m, v in t.items():
            per_image[m][batch] = Stat.of(v).median / batch
            data["batch"][f"{m}/b{batch}"] = Stat.of(v).as_dict()
    rows_a = [[m] + [fmt_time(per_image[m][b]) if b in per_image[m] else "not run" for b in batches]
              for m in HEAD_METHODS]
    del sessions

    # (b) heads vs classes, batch 32
    per_batch: dict[str, dict[int, float]] = {m: {} for m in HEAD_METHODS}
    for cc in classes:
        sess = {m: ort_cpu(head_graph_path(m, cc, D), args.threads) for m in HEAD_METHODS}
        variants = {m: _head_runner(s, head_inputs(m, cc, D, 32)) for m, s in sess.items()}
        log(f"scaling: heads C={cc} batch 32, {len(variants)} variants x {reps} reps")
        t = time_interleaved(variants, reps=reps)
        for m, v in t.items():
            per_batch[m][cc] = Stat.of(v).median
            data["classes"][f"{m}/c{cc}"] = Stat.of(v).as_dict()
        del sess
    rows_b = [[m] + [fmt_time(per_batch[m][cc]) for cc in classes] +
              [f"{per_batch[m][classes[-1]] / per_batch[m][classes[0]]:.0f}×"] for m in HEAD_METHODS]

    # (c) whole digits graphs vs batch
    bm = bench_model("digits-cnn")
    bare = ort_cpu(bare_graph_path(bm), args.threads)
    graphs = {m: ort_cpu(graph_path(bm, m), args.threads) for m in METHODS}
    digits_rows: dict[str, list[str]] = {m: [] for m in ("bare", *METHODS)}
    for batch in batches:
        x = bm.inputs(batch)
        variants = {"bare": ort_runner(bare, x), **{m: ort_runner(s, x) for m, s in graphs.items()}}
        log(f"scaling: digits graphs batch {batch}, {len(variants)} variants x {digits_reps} reps")
        t = time_interleaved(variants, reps=digits_reps)
        for m, v in t.items():
            med = Stat.of(v).median
            rel = "" if m == "bare" else f" ({np.median(v / t['bare']):.2f}×)"
            digits_rows[m].append(fmt_time(med / batch) + rel)
            data["digits"][f"{m}/b{batch}"] = Stat.of(v).as_dict()
    rows_c = [[m] + cells for m, cells in digits_rows.items()]
    del graphs, bare

    # (d) peak memory of one head run at C = 1000
    mem_rows = []
    for m in MEMORY_HEADS:
        cells = [m]
        for b in MEMORY_BATCHES:
            r = _peak_memory(m, b, args.threads)
            data.setdefault("memory", {})[f"{m}/b{b}"] = r
            cells.append(f"{r['peak_mib']:.0f} MiB" if r["peak_reset"] else f"≥ {r['peak_mib']:.0f} MiB")
        mem_rows.append(cells)
    floats = {b: b * c * D * 4 / 2**20 for b in MEMORY_BATCHES}

    body = f"""
ONNX Runtime CPU, {args.threads} intra-op thread(s), medians of {reps} interleaved repetitions (digits graphs:
{digits_reps}). Raw medians and quartiles are in `bench/.cache/results/scaling.json`.

**Head alone, C = 1000, D = 2048: time per image vs batch size**

{md_table(["head", *[f"batch {b}" for b in batches]], rows_a)}

`line_where` is LINe's head as oodgate built it before this issue (masked weights by Where, then Mul + ReduceSum);
`line` is the current one (Cast + Mul, one batched MatMul), same scores. `line_where` runs up to batch 64 only: it
holds about twice the (N, C, D) memory.

**Head alone, D = 2048, batch 32: time per batch vs number of classes**

{md_table(["head", *[f"C = {cc}" for cc in classes], f"C={classes[-1]} / C={classes[0]}"], rows_b)}

**Whole digits-CNN graphs: time per image vs batch size (and / bare classifier at that batch)**

{md_table(["graph", *[f"batch {b}" for b in batches]], rows_c)}

**Peak memory of one head run, C = 1000, D = 2048** (resident memory added by `session.run`, a fresh process per
cell; the session and its weights are loaded before the count starts)

{md_table(["head", *[f"batch {b}" for b in MEMORY_BATCHES]], mem_rows)}

LINe's weight mask depends on each sample's predicted class, so its graph forms (N, C, D) tensors: one of them is
{", ".join(f"{v:.0f} MiB at batch {b}" for b, v in floats.items())}. Serving LINe at ImageNet scale needs
memory for a few of them per batch — choose the batch size with this table.
"""
    return Section("scaling", "5. Scaling with batch size and number of classes", body, data, [],
                   time.perf_counter() - t_start)


if __name__ == "__main__":
    script_main(run, __doc__)
