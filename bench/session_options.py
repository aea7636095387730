"""What ONNX Runtime session options and the exporter's optimiser change (the knobs question 1 asks to try).

    python bench/session_options.py [--quick] [--threads 1] [--models efficientnet-lite0]

For one model's Energy graph (and the bare classifier as a check), time oodgate's default session (``ort_session``:
``ORT_ENABLE_ALL``) against other graph optimisation levels, against disabling intra-op spinning, against twice the
threads, and against the same graph exported with ``optimize=False`` (torch.onnx's onnxscript optimiser off). All
interleaved; ratio = variant / oodgate default per repetition (< 1 = faster than the default).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import (CACHE, GRAPH_SOURCES, bench_model, cached_file, calibration, fmt_ratio, fmt_stat_time, graph_path,
                    key_of, log, md_table, method_sources, ort_runner, quiet_onnx_export, ratio, script_main, Section,
                    set_threads, source_hash, Stat, time_interleaved, _versions_key)

REPS = {1: 9, 32: 5}


def _session(path, *, threads: int, level: str = "ORT_ENABLE_ALL", spinning: bool = True):  # noqa: ANN001, ANN202
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _unoptimized_export(bm, method: str):  # noqa: ANN001, ANN202
    """The same oodgate graph module exported with torch.onnx's optimiser off (optimize=False), cached."""
    import torch

    from oodgate.exporter.graph import INPUT_NAME, OUTPUT_NAMES, build_graph_module

    cal = calibration(bm, method)
    key = key_of(cal.checksum(), source_hash([*GRAPH_SOURCES, *method_sources(method)]), _versions_key(), "noopt")
    def write(tmp: Path) -> None:
        example = torch.randn((2, *bm.input_shape), generator=torch.Generator().manual_seed(1234))
        quiet_onnx_export(build_graph_module(cal, bm.split), (example,), tmp, input_names=[INPUT_NAME],
                          output_names=OUTPUT_NAMES, optimize=False)

    return cached_file(CACHE / "graphs" / bm.name / f"{method}-noopt-{key}.onnx",
                       f"export {bm.name} {method} optimize=False", write)


def run(args: argparse.Namespace) -> Section:
    t_start = time.perf_counter()
    set_threads(args.threads)
    name = (args.models.split(",")[0] if getattr(args, "models", None) else "efficientnet-lite0")
    bm = bench_model(name)
    method = "energy"
    path = graph_path(bm, method)
    other = 2 if args.threads == 1 else 1  # the other sensible count on a 2-core machine
    sessions = {
        "oodgate default (ORT_ENABLE_ALL)": _session(path, threads=args.threads),
        "ORT_ENABLE_EXTENDED": _session(path, threads=args.threads, level="ORT_ENABLE_EXTENDED"),
        "ORT_ENABLE_BASIC": _session(path, threads=args.threads, level="ORT_ENABLE_BASIC"),
        "ORT_DISABLE_ALL": _session(path, threads=args.threads, level="ORT_DISABLE_ALL"),
        "no intra-op spinning": _session(path, threads=args.threads, spinning=False),
        f"{other} intra-op thread(s)": _session(path, threads=other),
        "exported with optimize=False": _session(_unoptimized_export(bm, method), threads=args.threads),
    }
    default = next(iter(sessions))
    rows, data = [], {"model": name, "method": method, "threads": args.threads, "results": {}}
    for batch in (1, 8) if args.quick else (1, 32):
        reps = 3 if args.quick else REPS[batch]
        x = bm.inputs(batch)
        variants = {k: ort_runner(s, x) for k, s in sessions.items()}
        log(f"session_options: {name} {method} batch {batch}, {len(variants)} variants x {reps} reps")
        t = time_interleaved(variants, reps=reps)
        for k in sessions:
            r = ratio(t[k], t[default])
            rows.append([batch if k == default else "", k, fmt_stat_time(Stat.of(t[k])),
                         "1" if k == default else fmt_ratio(r)])
            data["results"][f"b{batch}/{k}"] = {"time_s": Stat.of(t[k]).as_dict(), "ratio": r.as_dict()}
    body = f"""
{bm.label}, {method} graph, ONNX Runtime CPU, {args.threads} intra-op thread(s) unless the row says otherwise;
variant time / oodgate default time per repetition, median [q1–q3] (< 1: faster than the default).

{md_table(["batch", "session / export variant", "time, median [q1–q3]", "/ oodgate default"], rows)}
"""
    return Section("session_options", "1b. ONNX Runtime session options and the exporter's optimiser", body, data, [],
                   time.perf_counter() - t_start)


if __name__ == "__main__":
    script_main(run, __doc__)
