"""Question 6: where oodgate.export spends its time, per stage, for a single-pass and an AdaSCALE graph.

    python bench/export_time.py [--quick] [--models resnet50-sized] [--methods energy,adascale_a]   # default: energy

Each export runs in a fresh process, as `oodgate export` does (so the first-export costs — lazy imports of the
exporter stack, dynamo's set-up — are in it). The stages are timed by wrapping the functions that do them (inclusive
wall times; a stage called inside another is subtracted from it): the gradient branch's tracing (AdaSCALE),
torch.export's capture, the decompositions, the translation to ONNX, the onnxscript optimiser, serialisation
(save / load), onnx.checker, and the ONNX Runtime check against PyTorch. What no stage claims is "other" (imports,
module set-up, metadata).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import (CACHE, Section, bench_model, calibration, chosen_models, fmt_time, md_table, run_json_child,
                    script_main)

#: (stage, module path, attribute) wrapped in the child; order = how the table lists them
STAGES = (
    ("gradient branch: trace (make_fx) + self-check", "oodgate.detectors.gradient", "trace_logits_and_input_gradient"),
    ("gradient branch: trace (make_fx) + self-check", "oodgate.detectors.adascale", "trace_logits_and_input_gradient"),
    ("torch.export capture", "torch.export", "export"),
    ("decompositions", "torch.export.exported_program.ExportedProgram", "run_decompositions"),
    ("translation to ONNX", "torch.onnx._internal.exporter._core", "_exported_program_to_onnx_program"),
    ("onnxscript optimiser", "torch.onnx._internal.exporter._onnx_program.ONNXProgram", "optimize"),
    ("serialisation (save, load)", "torch.onnx._internal.exporter._onnx_program.ONNXProgram", "save"),
    ("serialisation (save, load)", "onnx", "save"),
    ("serialisation (save, load)", "onnx", "load"),
    ("onnx.checker (full_check)", "onnx.checker", "check_model"),
    ("ONNX Runtime check vs PyTorch", "oodgate.exporter.export", "check_against_reference"),
)
TARGETS = {"single-pass": 10.0, "adascale": 30.0}


def _resolve(path: str) -> Any:
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def child(model: str, method: str) -> dict:
    """Export (model, method) once with every stage timed; returns seconds per stage (exclusive) and the total."""
    inclusive: dict[str, float] = defaultdict(float)
    stack: list[list[float]] = []  # per active wrapped call: [time spent in nested wrapped calls]

    def wrap(stage: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack.append([0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                nested = stack.pop()[0]
                inclusive[stage] += spent - nested
                if stack:
                    stack[-1][0] += spent
        return timed

    bm = bench_model(model)
    cal = calibration(bm, method)
    from oodgate.exporter import export

    for stage, owner, attr in STAGES:
        target = _resolve(owner)
        if hasattr(target, attr):  # (a name imported into a second module is wrapped there too)
            setattr(target, attr, wrap(stage, getattr(target, attr)))
    out = CACHE / "export-time" / f"{model}-{method}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export(cal, out, model=bm.model, overwrite=True)
    total = time.perf_counter() - t0
    stages = dict(inclusive)
    stages["other (imports, module set-up, metadata)"] = total - sum(stages.values())
    return {"model": model, "method": method, "total_s": total, "stages_s": stages,
            "graph_mib": out.stat().st_size / 2**20}


def run(args: argparse.Namespace) -> Section:
    models = (chosen_models(args, quick=("digits-cnn",)) if args.models or args.quick
              else ["digits-cnn", "resnet50-sized"])
    methods = [m.strip() for m in args.methods.split(",")]
    results, rows, targets, notes = [], [], [], []
    for model in models:
        for method in methods:
            calibration(bench_model(model), method)  # calibrate here so the child only exports
            r = run_json_child(f"from export_time import child; import json; print(json.dumps(child({model!r}, "
                               f"{method!r})))", f"export_time {model} {method}")
            results.append(r)
            kind = "adascale" if method.startswith("adascale") else "single-pass"
            top = sorted(r["stages_s"].items(), key=lambda kv: -kv[1])
            rows.append([model, method, fmt_time(r["total_s"]), f"{r['graph_mib']:.0f} MiB",
                         ", ".join(f"{k} {fmt_time(v)}" for k, v in top if v >= 0.05 * r["total_s"])])
            if model == "resnet50-sized":
                targets.append([f"6. export ≤ {TARGETS[kind]:.0f} s — {model} {method}", fmt_time(r["total_s"]),
                                r["total_s"] <= TARGETS[kind]])
            notes.append(f"{model} {method}: {fmt_time(r['total_s'])}, of which {top[0][0]} "
                         f"{100 * top[0][1] / r['total_s']:.0f} % and {top[1][0]} "
                         f"{100 * top[1][1] / r['total_s']:.0f} %.")
    before = _before_table(results)
    body = f"""
`oodgate.export` of a calibration, one fresh process per row (as the CLI runs it), {args.threads} thread(s); stage
times are exclusive (a stage inside another is subtracted from it). Stages of ≥ 5 % of the total are listed; all of
them are in `bench/.cache/results/export_time.json`.

{md_table(["model", "method", "export time", "graph", "stages (≥ 5 %)"], rows)}

Per stage (seconds):

{md_table(["stage", *[f"{r['model']} {r['method']}" for r in results]],
          [[s, *[f"{r['stages_s'].get(s, 0.0):.1f}" for r in results]]
           for s in dict.fromkeys([*(st for st, _, _ in STAGES), "other (imports, module set-up, metadata)"])])}
{before}"""
    return Section("export_time", "6. Export time: where oodgate.export spends it", body, {"results": results},
                   targets, ["**Export time.** " + " ".join(notes)])


def _before_table(results: list[dict]) -> str:
    """Before / after, when bench/export_time_before.json (the same measurement of the previous exporter) exists."""
    path = Path(__file__).with_name("export_time_before.json")
    if not path.is_file():
        return ""
    old = json.loads(path.read_text())
    rows = []
    for r in results:
        b = next((x for x in old["data"]["results"] if (x["model"], x["method"]) == (r["model"], r["method"])), None)
        if b:
            ser = [x["stages_s"].get("serialisation (save, load)", 0.0) for x in (b, r)]
            rows.append([r["model"], r["method"], fmt_time(b["total_s"]), fmt_time(r["total_s"]),
                         f"{r['total_s'] / b['total_s']:.2f}×", f"{fmt_time(ser[0])} → {fmt_time(ser[1])}"])
    if not rows:
        return ""
    return (f"\n**Before / after** — before: `bench/export_time_before.json`, the same measurement of "
            f"{old['measured_with']}, load average {old['load_average_during']}; after: this run. On a shared "
            "machine the totals move with the load; the serialisation stage is the part this issue changed.\n\n"
            + md_table(["model", "method", "before", "after", "after / before", "serialisation stage"], rows) + "\n")


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", default="energy", help="methods exported (default energy: under load an AdaSCALE "
                        "export of the ResNet-50-sized CNN takes many minutes; add adascale_a to measure it)")


if __name__ == "__main__":
    script_main(run, __doc__, _args)
