"""Run every speed benchmark and rewrite docs/BENCHMARKS.md from the numbers of this one run.

    python bench/run_all.py              # full run, writes docs/BENCHMARKS.md
    python bench/run_all.py --quick      # smoke run (digits + EfficientNet, fewer reps), writes bench/.cache/
    python bench/run_all.py --only overhead,scaling
    python bench/run_all.py --jobs 1     # one question at a time (a machine with no core to spare)

Each question is a script of its own (bench/<question>.py), run here in its own process, two at a time by default
(the memory-heavy ones never together). Graphs and calibrations are cached in bench/.cache/ (gitignored): a first run
on a machine also calibrates and exports them (each built once, by the first question that needs it); later runs only
time. bench/gpu_check.py (run on a
GPU machine) writes bench/gpu_check.json, which this report quotes when it exists.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import BENCH, BUILT, ROOT, Section, log, machine_info, md_table, results_path, verdict, write_text

#: in the order they are started (the longest first, so that two lanes end close together)
QUESTIONS = ("overhead", "export_time", "scaling", "calibration_cost", "ort_vs_eager", "adascale_floor",
             "session_options")
MEMORY_HEAVY = {"overhead", "scaling"}
BUDGET_S = 15 * 60


def _run_questions(chosen: list[str], args: argparse.Namespace) -> None:
    """Each question in its own process, ``--jobs`` at a time in start order, never two memory-heavy ones together."""
    pending, running, cond = list(chosen), set(), threading.Condition()
    free = lambda q: q not in MEMORY_HEAVY or not running & MEMORY_HEAVY  # noqa: E731

    def lane() -> None:
        while True:
            with cond:
                cond.wait_for(lambda: not pending or any(map(free, pending)))
                if not pending:
                    return
                q = next(filter(free, pending))
                pending.remove(q), running.add(q)
            results_path(q).unlink(missing_ok=True)
            log(f"== {q}")
            cmd = [sys.executable, str(BENCH / f"{q}.py"), "--threads", str(args.threads)] + ["--quick"] * args.quick
            code = subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
            log(f"== {q} " + (f"failed (exit code {code}): no results; see the log above" if code else "done"))
            with cond:
                running.discard(q)
                cond.notify_all()

    lanes = [threading.Thread(target=lane) for _ in range(args.jobs)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()


def _header(info: dict, args: argparse.Namespace, command: str) -> str:
    rows = [[k, v] for k, v in info.items() if k not in ("GPU", "load")] + [
        ["threads", f"{args.threads} intra-op thread(s) for PyTorch and ONNX Runtime alike; 1 inter-op thread"],
        ["processes", f"{args.jobs} question(s) at a time, one process each"],
        ["load average (1/5/15 min)", f"{info['load']} at the start, {machine_info()['load']} at the end — the machine "
         "is shared, so absolute times are those of a loaded machine; ratios compare variants interleaved within one "
         "process"], ["GPU", info["GPU"]]]
    return (f"# Benchmarks: what the OOD head costs, and how far oodgate is from the floor\n\nWritten by `{command}`. "
            "Every number is a ratio or a time measured in this one run on the machine below: compared variants are "
            "called in turn within each repetition and ratios are taken per repetition, then summarised as "
            "**median [q1–q3]** over the repetitions. No figure here is a timed assertion in the tests; the notes "
            "under each section are computed from its numbers.\n\n" + md_table(["", ""], rows))


def _gpu_section() -> str:
    path = BENCH / "gpu_check.json"
    if not path.is_file():
        return ("## GPU\n\nNo GPU was lent to this run's machine and `bench/gpu_check.py` has not been run on one, so "
                "there is no GPU figure here: none of the numbers were measured on, or extrapolated to, a GPU.")
    from gpu_check import markdown

    return "## GPU (from bench/gpu_check.json)\n\n" + markdown(json.loads(path.read_text()))


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
    if args.only and (bad := set(args.only.split(",")) - set(QUESTIONS)):
        parser.error(f"unknown question(s) {sorted(bad)}: use {', '.join(QUESTIONS)}")
    chosen = [q for q in QUESTIONS if not args.only or q in args.only.split(",")]
    out = args.out or (BENCH / ".cache" / "BENCHMARKS-quick.md" if args.quick else ROOT / "docs" / "BENCHMARKS.md")
    t0, info = time.perf_counter(), machine_info()
    if not args.from_results:
        _run_questions(chosen, args)
    sections: dict[str, Section] = {}
    for q in (q for q in chosen if results_path(q).is_file()):
        sections[q], built = Section.load(q)
        for k, v in built.items() if not args.from_results else ():
            BUILT[k] += v
    failed, chosen = [q for q in chosen if q not in sections], [q for q in chosen if q in sections]
    elapsed = time.perf_counter() - t0
    targets = [t for q in chosen for t in sections[q].targets]
    cache = ("graph cache warm: nothing exported" if not BUILT["exports"] else
             f"{BUILT['exports']} graphs exported and {BUILT['calibrations']} calibrations fitted by the questions in "
             f"this run: {BUILT['export_seconds'] / 60:.1f} + {BUILT['calibration_seconds'] / 60:.1f} min of process "
             "time")
    if not args.from_results:
        targets.append([f"`run_all.py` under {BUDGET_S // 60} minutes on this machine",
                        f"{elapsed / 60:.1f} min ({cache})", elapsed < BUDGET_S])
    parts = [_header(info, args, " ".join(["python bench/run_all.py", *sys.argv[1:]])),
             ("Assembled from the questions' saved results (`--from-results`): the run that made them did not "
              "finish, so there is no run time here. " if args.from_results else
              f"Run time of this command: **{elapsed / 60:.1f} min** ({cache}). ")
             + "Per question (its own process; wall time, peak resident memory): "
             + ", ".join(f"{q} {sections[q].seconds / 60:.1f} min, {sections[q].peak_gib:.1f} GiB" for q in chosen)
             + ".", "## Targets\n\n" + md_table(["target", "result", "verdict"],
                                                [[t, r, verdict(ok)] for t, r, ok in targets]),
             *[sections[q].markdown() for q in chosen], _gpu_section(),
             "## Serving\n\nServing over the Triton protocol (PyTriton, 8 concurrent clients: req/s, p50/p99) and "
             "batch scoring with Ray Data vs a process pool are measured by `bench/serve.py` and "
             "`bench/ray_scale.py`; their tables, with the machine, are in [SERVING](SERVING.md)."]
    if failed:
        parts.insert(2, f"**Failed in this run** (no results; see its log): {', '.join(failed)}.")
    write_text(out, "\n\n".join(p.strip() for p in parts) + "\n")
    log(f"wrote {out} ({elapsed / 60:.1f} min)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
