"""Run every speed benchmark and rewrite docs/BENCHMARKS.md from the numbers of this one run.

    python bench/run_all.py              # full run, writes docs/BENCHMARKS.md
    python bench/run_all.py --quick      # smoke run (digits + EfficientNet, fewer reps), writes bench/.cache/
    python bench/run_all.py --only overhead,scaling
    python bench/run_all.py --jobs 1     # one question at a time (a machine with no core to spare)

Each question is a script of its own (bench/<question>.py), run here in its own process, two at a time by default
(the memory-heavy ones never together). Graphs and calibrations are cached in bench/.cache/ (gitignored): the first
run on a machine also calibrates and exports them; later runs only time. bench/gpu_check.py (run on a GPU machine)
writes bench/gpu_check.json, which this report quotes when it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import (BUILT, ROOT, Section, load_results, log, machine_info, md_table, results_path, verdict,
                    write_text)

#: in the order they are started (the longest first, so that two lanes end close together)
QUESTIONS = ("overhead", "export_time", "scaling", "calibration_cost", "ort_vs_eager", "adascale_floor",
             "session_options")
MEMORY_HEAVY = {"overhead", "scaling"}
BUDGET_S = 15 * 60
#: the serving benchmarks write their own document (bench/serve.py, bench/ray_scale.py)
SERVING = """## Serving

Serving over the Triton protocol (PyTriton, 8 concurrent clients: req/s, p50/p99) and batch scoring with Ray Data
vs a process pool are measured by `bench/serve.py` and `bench/ray_scale.py`; their tables, with the machine, are
in [SERVING](SERVING.md)."""


def _header(info: dict, args: argparse.Namespace, command: str, load_end: list[float]) -> str:
    rows = [["CPU", f"{info['cpu']}, {info['logical_cores']} logical cores"], ["RAM", f"{info['ram_gib']} GiB"],
            ["OS", info["os"]],
            ["Python / PyTorch / ONNX Runtime", f"{info['python']} / {info['torch']} / {info['onnxruntime']}"],
            ["onnx / onnxscript / NumPy", f"{info['onnx']} / {info['onnxscript']} / {info['numpy']}"],
            ["oodgate", f"{info['oodgate']} (commit {info['commit']})"], ["date", info["date"]],
            ["threads", f"{args.threads} intra-op thread(s) for PyTorch and ONNX Runtime alike; 1 inter-op thread"],
            ["processes", f"{args.jobs} question(s) at a time, one process each"],
            ["load average (1/5/15 min)", f"{' / '.join(map(str, info['load_average']))} at the start, "
             f"{' / '.join(f'{v:.2f}' for v in load_end)} at the end — the machine is shared, so absolute times "
             "are those of a loaded machine; ratios compare variants interleaved within one process"],
            ["GPU", info["gpu"] or "none"]]
    return (f"# Benchmarks: what the OOD head costs, and how far oodgate is from the floor\n\nWritten by `{command}`. "
            "Every number is a ratio or a time measured in this one run on the machine below: compared variants are "
            "called in turn within each repetition and ratios are taken per repetition, then summarised as "
            "**median [q1–q3]** over the repetitions. No figure here is a timed assertion in the tests; the notes "
            "under each section are computed from its numbers.\n\n" + md_table(["", ""], rows))


def _gpu_section() -> str:
    path = ROOT / "bench" / "gpu_check.json"
    if not path.is_file():
        return ("## GPU\n\nNo GPU was lent to this run's machine and `bench/gpu_check.py` has not been run on one, so "
                "there is no GPU figure here: none of the numbers were measured on, or extrapolated to, a GPU.")
    from gpu_check import markdown

    return "## GPU (from bench/gpu_check.json)\n\n" + markdown(json.loads(path.read_text()))


def cache_items(quick: bool, chosen: list[str]) -> list[list]:
    """What the questions will need built (graphs, heads, calibrations), most expensive first: prebuilt in --jobs
    processes before the timing starts, so that a cold cache's exports are shared evenly between the cores."""
    from common import GRAPHS, METHODS

    models = ("digits-cnn", "efficientnet-lite0") if quick else ("digits-cnn", "efficientnet-lite0", "resnet50-sized")
    items: list[list] = [["graph", "resnet50-sized", "adascale_a"]] if not quick else []
    items += [["gradient", m] for m in models[::-1] if "adascale_floor" in chosen]
    for model in models[::-1]:
        items += [["graph", model, m] for m in GRAPHS[model] if ["graph", model, m] not in items]
        items.append(["bare", model])
    shapes = {(1000, 1280), (1000, 2048), (10, 2048), (10, 64)}
    items += [["head", m, c, d] for c, d in sorted(shapes, reverse=True) for m in ("linear", *METHODS,
                                                                                  "line_previous")]
    return items


def build(items: list[list]) -> None:
    """Build the cache items in this process (called in a child by run_all)."""
    from adascale_floor import gradient_graph_path
    from common import bare_graph_path, bench_model, graph_path
    from heads import head_graph_path

    for kind, *rest in items:
        try:
            if kind == "graph":
                graph_path(bench_model(rest[0]), rest[1])
            elif kind == "bare":
                bare_graph_path(bench_model(rest[0]))
            elif kind == "gradient":
                gradient_graph_path(bench_model(rest[0]))
            else:
                head_graph_path(*rest)
        except Exception as exc:  # noqa: BLE001 - the question that needs it fails and says why; build the rest
            log(f"building {kind} {rest} failed: {type(exc).__name__}: {exc}")
    from common import BUILT

    print(json.dumps(BUILT))


def _prebuild(jobs: int, quick: bool, chosen: list[str]) -> float:
    """Build the cache in ``jobs`` processes; adds what they built to BUILT; returns the wall time."""
    t0, items = time.perf_counter(), cache_items(quick, chosen)
    procs = [subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); "
                               f"from run_all import build; build({items[i::jobs]!r})"], stdout=subprocess.PIPE,
                              text=True) for i in range(jobs)]
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit("building the benchmark cache failed: see the log above")
        for k, v in json.loads(out.strip().splitlines()[-1]).items():
            BUILT[k] += v
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer models/batches/repetitions")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and ORT (default 1)")
    parser.add_argument("--jobs", type=int, default=2, help="questions run at a time, one process each (default 2)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(QUESTIONS)}")
    parser.add_argument("--from-results", action="store_true",
                        help="no run: assemble the report from the questions' saved results (an interrupted run)")
    parser.add_argument("--out", type=Path, default=None, help="report path (default docs/BENCHMARKS.md; --quick: "
                                                               "bench/.cache/BENCHMARKS-quick.md)")
    args = parser.parse_args()
    chosen = [q for q in QUESTIONS if not args.only or q in args.only.split(",")]
    if args.only and (bad := set(args.only.split(",")) - set(QUESTIONS)):
        parser.error(f"unknown question(s) {sorted(bad)}: use {', '.join(QUESTIONS)}")
    out = args.out or (ROOT / "bench" / ".cache" / "BENCHMARKS-quick.md" if args.quick else ROOT / "docs" /
                       "BENCHMARKS.md")
    command = " ".join(["python bench/run_all.py", *sys.argv[1:]])
    t0 = time.perf_counter()
    info = machine_info()
    sections: dict[str, Section] = {}
    peaks: dict[str, float] = {}
    pending, running, failed = ([] if args.from_results else list(chosen)), {}, []
    if args.from_results:
        build_s = 0.0
        for q in chosen:
            if results_path(q).is_file():
                sections[q], built = load_results(q)
                peaks[q] = float("nan")
            else:
                failed.append(q)
    else:
        log(f"== building what is not cached yet, {args.jobs} process(es)")
        build_s = _prebuild(args.jobs, args.quick, chosen)
    while pending or running:
        while pending and len(running) < args.jobs:
            busy = {q for q, _ in running.values()} & MEMORY_HEAVY
            q = next((q for q in pending if not (q in MEMORY_HEAVY and busy)), None)
            if q is None:
                break
            pending.remove(q)
            results_path(q).unlink(missing_ok=True)
            log(f"== {q}")
            cmd = [sys.executable, str(ROOT / "bench" / f"{q}.py"), "--threads", str(args.threads)]
            proc = subprocess.Popen(cmd + (["--quick"] if args.quick else []), stdout=subprocess.DEVNULL)
            running[proc.pid] = (q, proc)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        q, _ = running.pop(pid)
        peaks[q] = usage.ru_maxrss / 2**20  # KiB -> GiB
        if os.waitstatus_to_exitcode(status) != 0 or not results_path(q).is_file():
            log(f"{q} failed (exit code {os.waitstatus_to_exitcode(status)}): no results; see the log above")
            failed.append(q)
            continue
        sections[q], built = load_results(q)
        for k, v in built.items():
            BUILT[k] += v
        log(f"== {q} done in {sections[q].seconds:.0f} s (peak memory {peaks[q]:.1f} GiB)")
    chosen = [q for q in chosen if q in sections]
    elapsed = time.perf_counter() - t0
    targets = [t for q in chosen for t in sections[q].targets]
    cache = ("graph cache warm: nothing exported" if not BUILT["exports"] else
             f"{BUILT['exports']} graphs exported and {BUILT['calibrations']} calibrations fitted in this run: "
             f"{BUILT['export_seconds'] / 60:.1f} + {BUILT['calibration_seconds'] / 60:.1f} min of process time, "
             f"{build_s / 60:.1f} min of wall time before the timing started")
    if not args.from_results:
        targets.append([f"`run_all.py` under {BUDGET_S // 60} minutes on this machine",
                        f"{elapsed / 60:.1f} min ({cache})", elapsed < BUDGET_S])
    parts = [_header(info, args, command, [round(v, 2) for v in os.getloadavg()]),
             ("Assembled from the questions' saved results (`--from-results`): the run that made them did not "
              "finish, so there is no run time here. " if args.from_results else
              f"Run time of this command: **{elapsed / 60:.1f} min** ({cache}). ")
             + "Per question (its own process; wall time, peak resident memory): "
             + ", ".join(f"{q} {sections[q].seconds / 60:.1f} min, {peaks[q]:.1f} GiB" for q in chosen) + ".",
             "## Targets\n\n" + md_table(["target", "result", "verdict"],
                                          [[t, r, verdict(ok)] for t, r, ok in targets]),
             *[sections[q].markdown() for q in chosen], _gpu_section(), SERVING]
    if failed:
        parts.insert(2, f"**Failed in this run** (no results; see its log): {', '.join(failed)}.")
    write_text(out, "\n\n".join(p.strip() for p in parts) + "\n")
    log(f"wrote {out} ({elapsed / 60:.1f} min)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
