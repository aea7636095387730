"""Run every speed benchmark (questions 1-5 of issue 7) and rewrite docs/BENCHMARKS.md.

    python bench/run_all.py              # full run, writes docs/BENCHMARKS.md
    python bench/run_all.py --quick      # smoke run (digits + EfficientNet, fewer reps), writes bench/.cache/
    python bench/run_all.py --only overhead,scaling
    python bench/run_all.py --jobs 1     # one question at a time (a machine with no core to spare)

Each question is also a script of its own (bench/overhead.py, session_options.py, ort_vs_eager.py,
adascale_floor.py, calibration_cost.py, scaling.py), run here in its own process, two at a time by default.
Graphs and calibrations are cached in bench/.cache/ (gitignored): the first run on a machine also calibrates and
exports them (about 45 graphs and 60 detector heads; torch.onnx.export takes up to half a minute per 224x224
graph on a 2-core machine, more for AdaSCALE's); later runs only time. An edit of a detector or of the exporter re-exports only the graphs it affects.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import (BUILT, ROOT, Section, load_results, log, machine_info, md_table, results_path, set_threads,
                    write_atomic_text)

QUESTIONS = ("overhead", "session_options", "ort_vs_eager", "adascale_floor", "calibration_cost", "scaling")
#: the order in which questions are started (the longest first, so that two lanes end close together)
LONGEST_FIRST = ("overhead", "ort_vs_eager", "adascale_floor", "scaling", "calibration_cost", "session_options")
#: questions that each peak at 11-14 GiB resident (measured, see the report's per-question line): never two at once
MEMORY_HEAVY = {"overhead", "scaling"}
BUDGET_S = 15 * 60


def _header(info: dict, args: argparse.Namespace, command: str) -> str:
    gpu = info["gpu"] or "none"
    return f"""# Benchmarks: what the OOD head costs, and how far oodgate is from the floor

Written by `{command}` (issue 7). Every number is a ratio or a time measured in one run on the machine below: compared
variants are called in turn within each repetition and ratios are taken per repetition, then summarised as
**median [q1–q3]** (interquartile range) over the repetitions. No figure here is a timed assertion in the tests.

| | |
|---|---|
| CPU | {info['cpu']}, {info['logical_cores']} logical cores |
| RAM | {info['ram_gib']} GiB |
| OS | {info['os']} |
| Python / PyTorch / ONNX Runtime | {info['python']} / {info['torch']} / {info['onnxruntime']} |
| onnx / onnxscript / NumPy | {info['onnx']} / {info['onnxscript']} / {info['numpy']} |
| oodgate | {info['oodgate']} (commit {info['commit']}) |
| date | {info['date']} |
| threads | {args.threads} intra-op thread(s) for PyTorch (`torch.set_num_threads`) and ONNX Runtime (`intra_op_num_threads`) alike; 1 inter-op thread |
| processes | {args.jobs} question(s) at a time, one process each{" (on a 2-core machine: each question has a core, and a neighbour that competes for memory bandwidth and cache — absolute times are those of a loaded machine; ratios compare variants interleaved within one process)" if args.jobs > 1 else ""} |
| ONNX Runtime session | oodgate's `ort_session`: CPUExecutionProvider, `ORT_ENABLE_ALL` graph optimisation |
| load average at start | {' / '.join(str(v) for v in info['load_average'])} (1/5/15 min; the machine is shared, so timings are noisy — hence the interleaving) |
| GPU | {gpu} |
"""


def _gpu_section(info: dict) -> str:
    if info["gpu"]:
        return (f"## GPU\n\nA GPU ({info['gpu']}) was visible, but this run timed the CPU only; GPU tables are to be "
                "added by a run on that machine.\n")
    return ("## GPU\n\nNo GPU was available for this task (no NVIDIA device on the machine, no GPU machine lent to it), "
            "so there is no GPU table: none of the numbers here were measured on, or extrapolated to, a GPU.\n")


def _targets_table(sections: dict[str, Section], elapsed: float, args: argparse.Namespace) -> str:
    rows = []
    if "overhead" in sections:
        res = sections["overhead"].data["results"]
        target = sections["overhead"].data.get("target", 1.03)
        for key, r in res.items():
            model, batch = key.split("/b")
            single = {m: v for m, v in r["methods"].items() if v["single_pass"]}
            met = [m for m, v in single.items() if v["target_met"] is True]
            noise = [m for m, v in single.items() if v["target_met"] is None]
            missed = [m for m, v in single.items() if v["target_met"] is False]
            worst = max(single, key=lambda m: single[m]["ratio"]["median"])
            text = f"{len(met)}/{len(single)} met"
            if noise:
                text += f"; within noise: {', '.join(noise)}"
            if missed:
                text += f"; missed: {', '.join(missed)}"
            text += f" (highest {worst} {single[worst]['ratio']['median']:.3f}×)"
            rows.append([f"1. single-pass overhead ≤ {target}× — {model}, batch {batch}", text,
                         "**missed**" if missed else ("met" if not noise else "met / not resolved")])
    if "ort_vs_eager" in sections:
        res = sections["ort_vs_eager"].data["results"]
        groups: dict[str, list[float]] = {}
        for key, r in res.items():
            model, batch, _ = key.split("/")
            groups.setdefault(f"{model}, batch {batch[1:]}", []).append(r["speedup"]["median"])
        for g, v in groups.items():
            rows.append([f"2. ORT ≥ 1.3× PyTorch eager — {g}", f"{min(v):.2f}×–{max(v):.2f}×",
                         "met" if min(v) >= 1.3 else "**missed**"])
    if "adascale_floor" in sections:
        res = sections["adascale_floor"].data["results"]
        for key, r in res.items():
            model, batch = key.split("/b")
            sp = [r[g + " ratios"]["eager_reference_speedup"]["median"] for g in ("graph A", "graph L")]
            rows.append([f"2. ORT ≥ 1.3× PyTorch eager — AdaSCALE, {model}, batch {batch} (question 3)",
                         f"A {sp[0]:.2f}×, L {sp[1]:.2f}×", "met" if min(sp) >= 1.3 else "**missed**"])
        for key, r in res.items():
            model, batch = key.split("/b")
            a = r["graph A ratios"]["vs_eager_floor"]["median"]
            la = r["graph L ratios"]["vs_eager_floor"]["median"]
            rows.append([f"3. AdaSCALE graph ≤ 1.1× eager floor — {model}, batch {batch}", f"A {a:.2f}×, L {la:.2f}×",
                         "met" if max(a, la) <= 1.1 else "**missed**"])
    if "calibration_cost" in sections:
        d = sections["calibration_cost"].data
        g = d["line_graph"]
        loop, closed = d["fits"]["line-stats-loop"], d["fits"]["line-stats-closed"]
        rows.append([f"4. LINe closed form = per-image loop (asserted), {d['n']:,} samples",
                     f"{loop['seconds'] / closed['seconds']:.0f}× faster, max relative difference "
                     f"{loop['max_rel_diff']:.1e}, same neuron masks", "met"])
        rows.append(["4. LINe masks O(C·D), not C×C×D, at 1000 × 2048", f"{g['constant_elements'] / g['c_times_d']:.2f}"
                     " × C·D constants in the graph (asserted ≤ 4)", "met"])
    rows.append(["`run_all.py` under 15 minutes on this machine", f"{elapsed / 60:.1f} min"
                 + (" (cache warm)" if not BUILT["exports"] else f" (including {BUILT['exports']} exports, "
                    f"{BUILT['export_seconds'] / 60:.1f} min)"), "met" if elapsed < BUDGET_S else "**missed**"])
    return md_table(["target", "result", "verdict"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer models/batches/repetitions")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and ORT (default 1)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="questions run at a time, one process each (default 2: one per core of a 2-core machine "
                             "at --threads 1; use 1 on a machine with one core to spare)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(QUESTIONS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default docs/BENCHMARKS.md; --quick: bench/.cache/)")
    args = parser.parse_args()
    chosen = QUESTIONS if not args.only else tuple(q.strip() for q in args.only.split(","))
    bad = [q for q in chosen if q not in QUESTIONS]
    if bad:
        parser.error(f"unknown question(s) {bad}: use {', '.join(QUESTIONS)}")
    out = args.out or (ROOT / "bench" / ".cache" / "BENCHMARKS-quick.md" if args.quick else ROOT / "docs" /
                       "BENCHMARKS.md")
    command = "python bench/run_all.py" + (" --quick" if args.quick else "") + (
        f" --threads {args.threads}" if args.threads != 1 else "") + (f" --only {args.only}" if args.only else "")
    t0 = time.perf_counter()
    set_threads(args.threads)
    info = machine_info()
    sections: dict[str, Section] = {}
    peaks: dict[str, float] = {}
    # one process per question, at most --jobs at a time (longest first). Each question is single-threaded by
    # default, so two of them use the two cores of the development machine without sharing a thread pool; every
    # ratio is still taken between variants interleaved within one process
    pending = [q for q in LONGEST_FIRST if q in chosen]
    running: dict[int, tuple[str, subprocess.Popen]] = {}
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            busy = {name for name, _ in running.values()}
            q = next((q for q in pending if not (q in MEMORY_HEAVY and busy & MEMORY_HEAVY)), None)
            if q is None:
                break
            pending.remove(q)
            cmd = [sys.executable, str(ROOT / "bench" / f"{q}.py"), "--threads", str(args.threads)]
            if args.quick:
                cmd.append("--quick")
            results_path(q).unlink(missing_ok=True)
            log(f"== {q}")
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            running[proc.pid] = (q, proc)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        q, proc = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        peaks[q] = usage.ru_maxrss / 2**20  # KiB -> GiB
        if code != 0 or not results_path(q).is_file():
            log(f"{q} failed (exit code {code}): no results; see the log above")
            failed.append(q)
            continue
        sec, built = load_results(q)
        for k, v in built.items():
            BUILT[k] = BUILT.get(k, 0) + v
        sections[q] = sec
        log(f"== {q} done in {sec.seconds:.0f} s (peak memory {peaks[q]:.1f} GiB)")
    if failed:
        return 1
    sections = {q: sections[q] for q in chosen}
    elapsed = time.perf_counter() - t0
    from notes import closing_notes

    parts = [_header(info, args, command),
             f"Run time of this command: **{elapsed / 60:.1f} min** "
             + ("(graph cache warm: nothing exported)." if not BUILT["exports"] else
                f"({BUILT['exports']} graphs exported in this run, {BUILT['export_seconds'] / 60:.1f} min of it; "
                "a warm cache skips that)."),
             "Per question (its own process; wall time, peak resident memory): "
             + ", ".join(f"{q} {s.seconds / 60:.1f} min, {peaks[q]:.1f} GiB" for q, s in sections.items()) + ".",
             "## Targets\n\n" + _targets_table(sections, elapsed, args),
             *[s.markdown() for s in sections.values()],
             _gpu_section(info),
             closing_notes(sections, args.jobs)]
    write_atomic_text(out, "\n\n".join(p.strip() for p in parts) + "\n")
    log(f"wrote {out} ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
