"""Question 1b: what ONNX Runtime session options and the exporter's optimiser change.

    python bench/session_options.py [--quick] [--threads 1] [--models efficientnet-lite0]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common import (CACHE, LIBRARY_SOURCES, BenchModel, Section, Stat, bench_model, cached_file, calibration,
                    example_input, fmt_ratio, fmt_stat_time, graph_path, key_of, md_table, method_sources, ort_runner,
                    ratio, script_main, source_hash, time_interleaved)


def _session(path: Path, *, threads: int, level: str = "ORT_ENABLE_ALL", spinning: bool = True) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level, opts.intra_op_num_threads = 3, threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _unoptimized_graph(bm: BenchModel, method: str) -> Path:
    """The method's graph module exported with ``optimize=False`` (torch.onnx's onnxscript optimiser off), cached."""
    from oodgate.exporter import build_graph_module, export_onnx
    from oodgate.runtime.metadata import INPUT_NAME, OUTPUT_NAMES

    cal = calibration(bm, method)
    key = key_of(cal.checksum(), source_hash([*LIBRARY_SOURCES, *method_sources(method)]), "noopt")
    return cached_file(CACHE / "graphs" / bm.name / f"{method}-noopt-{key}.onnx",
                       f"export {bm.name} {method} optimize=False",
                       lambda tmp: export_onnx(build_graph_module(cal, bm.split), example_input(bm), optimize=False,
                                               input_names=[INPUT_NAME], output_names=OUTPUT_NAMES).save(str(tmp)))


def run(args: argparse.Namespace) -> Section:
    name = args.models.split(",")[0] if args.models else "efficientnet-lite0"
    bm, method, other = bench_model(name), "energy", 2 if args.threads == 1 else 1
    path = graph_path(bm, method)
    sessions = {"oodgate default (ORT_ENABLE_ALL)": _session(path, threads=args.threads),
                **{lvl: _session(path, threads=args.threads, level=lvl)
                   for lvl in ("ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL")},
                "no intra-op spinning": _session(path, threads=args.threads, spinning=False),
                f"{other} intra-op thread(s)": _session(path, threads=other),
                "exported with optimize=False": _session(_unoptimized_graph(bm, method), threads=args.threads)}
    default = next(iter(sessions))
    rows, data, notes = [], {"model": name, "results": {}}, []
    for batch in (1, 8) if args.quick else (1, 32):
        t = time_interleaved({k: ort_runner(s, bm.inputs(batch)) for k, s in sessions.items()},
                             reps=3 if args.quick else {1: 9, 32: 5}[batch], what=f"session_options: {name} b{batch}")
        ratios = {k: ratio(t[k], t[default]) for k in sessions}
        for k, r in ratios.items():
            rows.append([batch if k == default else "", k, fmt_stat_time(Stat.of(t[k])),
                         "1" if k == default else fmt_ratio(r)])
            data["results"][f"b{batch}/{k}"] = {"time_s": Stat.of(t[k]).as_dict(), "ratio": r.as_dict()}
        best = min((k for k in sessions if k != default), key=lambda k: ratios[k].median)
        notes.append(f"batch {batch}: the fastest alternative is {best} at {ratios[best].median:.2f}× the default")
    body = f"""
{bm.label}, {method} graph, ONNX Runtime CPU, {args.threads} intra-op thread(s) unless the row says otherwise:
oodgate's default session (`ORT_ENABLE_ALL`) vs the other graph optimisation levels, no intra-op spinning, the other
thread count of a 2-core machine, and the same graph exported with `optimize=False` (torch.onnx's onnxscript
optimiser off). Interleaved; variant time / oodgate default time per repetition, median [q1–q3] (< 1: faster than
the default).

{md_table(["batch", "session / export variant", "time, median [q1–q3]", "/ oodgate default"], rows)}
"""
    return Section("session_options", "1b. ONNX Runtime session options and the exporter's optimiser", body, data,
                   notes=["**Session options.** " + "; ".join(notes) + "."])


if __name__ == "__main__":
    script_main(run, __doc__)
