"""Question 1b: what ONNX Runtime session options and the exporter's optimiser change.

    python bench/session_options.py [--quick] [--threads 1] [--models efficientnet-lite0]

One model's Energy graph under oodgate's default session (``ORT_ENABLE_ALL``) vs the other graph optimisation
levels, no intra-op spinning, the other thread count of a 2-core machine, and the same graph exported with
``optimize=False`` (torch.onnx's onnxscript optimiser off). Interleaved; ratio = variant / default per repetition.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (CACHE, LIBRARY_SOURCES, Section, Stat, bench_model, cached_file, calibration, export_graph,
                    fmt_ratio, fmt_stat_time, graph_path, key_of, log, md_table, method_sources, ort_runner, ratio,
                    script_main, source_hash, time_interleaved)


def _session(path: Path, *, threads: int, level: str = "ORT_ENABLE_ALL", spinning: bool = True):  # noqa: ANN202
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _unoptimized_graph(bm, method: str) -> Path:  # noqa: ANN001
    import torch

    from oodgate.exporter.graph import build_graph_module
    from oodgate.runtime.metadata import INPUT_NAME, OUTPUT_NAMES

    cal = calibration(bm, method)
    key = key_of(cal.checksum(), source_hash([*LIBRARY_SOURCES, *method_sources(method)]), "noopt")
    example = (torch.randn((2, *bm.input_shape), generator=torch.Generator().manual_seed(1234)),)
    return cached_file(CACHE / "graphs" / bm.name / f"{method}-noopt-{key}.onnx",
                       f"export {bm.name} {method} optimize=False",
                       lambda tmp: export_graph(build_graph_module(cal, bm.split), example, tmp,
                                                input_names=[INPUT_NAME], output_names=OUTPUT_NAMES, optimize=False))


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
        reps = 3 if args.quick else {1: 9, 32: 5}[batch]
        log(f"session_options: {name} batch {batch}, {len(sessions)} variants x {reps} reps")
        t = time_interleaved({k: ort_runner(s, bm.inputs(batch)) for k, s in sessions.items()}, reps=reps)
        for k in sessions:
            r = ratio(t[k], t[default])
            rows.append([batch if k == default else "", k, fmt_stat_time(Stat.of(t[k])),
                         "1" if k == default else fmt_ratio(r)])
            data["results"][f"b{batch}/{k}"] = {"time_s": Stat.of(t[k]).as_dict(), "ratio": r.as_dict()}
        best = min((k for k in sessions if k != default), key=lambda k: data["results"][f"b{batch}/{k}"]["ratio"]
                   ["median"])
        notes.append(f"batch {batch}: the fastest alternative is {best} at "
                     f"{data['results'][f'b{batch}/{best}']['ratio']['median']:.2f}× the default")
    body = f"""
{bm.label}, {method} graph, ONNX Runtime CPU, {args.threads} intra-op thread(s) unless the row says otherwise;
variant time / oodgate default time per repetition, median [q1–q3] (< 1: faster than the default).

{md_table(["batch", "session / export variant", "time, median [q1–q3]", "/ oodgate default"], rows)}
"""
    return Section("session_options", "1b. ONNX Runtime session options and the exporter's optimiser", body, data,
                   notes=["**Session options.** " + "; ".join(notes) + "."])


if __name__ == "__main__":
    script_main(run, __doc__)
