"""Question 6: where oodgate.export spends its time, per stage, for a single-pass and an AdaSCALE graph.

    python bench/export_time.py [--quick] [--models resnet50-sized] [--methods energy,adascale_a]   # default: energy
"""

from __future__ import annotations

import argparse
import pkgutil
import time
from collections import defaultdict
from typing import Any, Callable

from common import (CACHE, Section, bench_model, calibration, chosen_models, fmt_time, md_table, run_json_child,
                    script_main)

#: (stage, owner, attribute) wrapped in the child; order = how the table lists them. A name imported into a second
#: module is wrapped there too.
STAGES = (
    ("gradient branch: trace (make_fx) + self-check", "oodgate.detectors.gradient", "trace_logits_and_input_gradient"),
    ("gradient branch: trace (make_fx) + self-check", "oodgate.detectors.adascale", "trace_logits_and_input_gradient"),
    ("TorchScript trace + export", "oodgate.exporter.onnx_export", "_torchscript"),
    ("batch axis made dynamic + ORT run at batch 1, 3", "oodgate.exporter.batch_axis", "generalise_batch"),
    ("batch axis made dynamic + ORT run at batch 1, 3", "oodgate.exporter.batch_axis", "runs_at_other_batches"),
    ("torch.export capture", "torch.export", "export"),
    ("decompositions", "torch.export.exported_program.ExportedProgram", "run_decompositions"),
    ("translation to ONNX", "torch.onnx._internal.exporter._core", "_exported_program_to_onnx_program"),
    ("onnxscript optimiser", "torch.onnx._internal.exporter._onnx_program.ONNXProgram", "optimize"),
    ("onnxscript optimiser", "oodgate.exporter.onnx_export", "optimise_without_rewrites"),
    ("serialisation (save, load)", "torch.onnx._internal.exporter._onnx_program.ONNXProgram", "save"),
    ("serialisation (save, load)", "onnx", "save"),
    ("serialisation (save, load)", "onnx", "load"),
    ("onnx.checker (full_check)", "onnx.checker", "check_model"),
    ("ONNX Runtime check vs PyTorch", "oodgate.exporter.export", "check_against_reference"),
)
OTHER = "other (imports, module set-up, metadata)"
TARGETS = {"single-pass": 10.0, "adascale": 30.0}


def stage_timer() -> tuple[dict[str, float], Callable[[str, Any], Any]]:
    """(exclusive seconds per stage, wrap): ``wrap(stage, fn)`` times fn's calls as ``stage``, less the time spent in
    other wrapped calls inside them."""
    exclusive: dict[str, float] = defaultdict(float)
    nested: list[float] = []  # per active wrapped call: the time spent in wrapped calls inside it

    def wrap(stage: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            nested.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                exclusive[stage] += spent - nested.pop()
                if nested:
                    nested[-1] += spent
        return timed

    return exclusive, wrap


#: the exporter's routes compared: oodgate's (TorchScript where exact, else dynamo at a static batch made dynamic)
#: and the one before issue 16 (torch.onnx dynamo with a symbolic batch and its whole optimiser, for every graph)
ROUTES = {"now": {}, "before": {"engine": "dynamo", "static_first": False, "rewrite": True}}


def child(model: str, method: str, route: str = "now") -> dict:
    """Export (model, method) once with every stage timed; returns seconds per stage (exclusive) and the total."""
    exclusive, wrap = stage_timer()
    bm = bench_model(model)
    cal = calibration(bm, method)
    import importlib

    from oodgate.exporter import export

    export_module = importlib.import_module("oodgate.exporter.export")  # the module (the package's `export` is the
    # function)
    if ROUTES[route]:
        plain = export_module.export_onnx
        export_module.export_onnx = lambda *a, **k: plain(*a, **{**k, **ROUTES[route]})
    for stage, owner, attr in STAGES:
        if hasattr(target := pkgutil.resolve_name(owner), attr):
            setattr(target, attr, wrap(stage, getattr(target, attr)))
    out = CACHE / "export-time" / f"{model}-{method}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    export(cal, out, model=bm.model, overwrite=True)
    total = time.perf_counter() - t0
    return {"model": model, "method": method, "route": route, "total_s": total,
            "graph_mib": out.stat().st_size / 2**20, "stages_s": {**exclusive, OTHER: total - sum(exclusive.values())}}


def run(args: argparse.Namespace) -> Section:
    models = chosen_models(args, quick=("digits-cnn",)) if args.models or args.quick else ["digits-cnn",
                                                                                           "resnet50-sized"]
    results, rows, targets, notes = [], [], [], []
    for model in models:
        for method in args.methods.split(","):
            calibration(bench_model(model), method)  # calibrate here so that the child only exports
            r = run_json_child("export_time", f"child({model!r}, {method!r})", f"export_time {model} {method}")
            results.append(r)
            r["before"] = run_json_child("export_time", f"child({model!r}, {method!r}, 'before')",
                                         f"export_time {model} {method} (route before issue 16)")
            total, kind = r["total_s"], "adascale" if method.startswith("adascale") else "single-pass"
            top = sorted(r["stages_s"].items(), key=lambda kv: -kv[1])
            rows.append([model, method, fmt_time(total), f"{r['graph_mib']:.0f} MiB",
                         ", ".join(f"{k} {fmt_time(v)}" for k, v in top if v >= 0.05 * total)])
            if model == "resnet50-sized":
                targets.append([f"6. export ≤ {TARGETS[kind]:.0f} s — {model} {method}", fmt_time(total),
                                total <= TARGETS[kind]])
            notes.append(f"{model} {method}: {fmt_time(total)}, of which " + " and ".join(
                f"{k} {100 * v / total:.0f} %" for k, v in top[:2]) + ".")
    stages = dict.fromkeys([*(s for s, _, _ in STAGES), OTHER])
    body = f"""
`oodgate.export` of a calibration, one fresh process per row (as `oodgate export` runs it, so the first-export
costs — lazy imports of the exporter stack, dynamo's set-up — are in it), {args.threads} thread(s). The stages are
timed by wrapping the functions that do them; stage times are exclusive (a stage inside another is subtracted from
it); what no stage claims is "other". Stages of ≥ 5 % of the total are listed; all of them are in
`bench/.cache/results/export_time.json`.

{md_table(["model", "method", "export time", "graph", "stages (≥ 5 %)"], rows)}

Per stage (seconds):

{md_table(["stage", *[f"{r['model']} {r['method']}" for r in results]],
          [[s, *[f"{r['stages_s'].get(s, 0.0):.1f}" for r in results]] for s in stages])}
{_before_table(results)}"""
    return Section("export_time", "6. Export time: where oodgate.export spends it", body, {"results": results},
                   targets, ["**Export time.** " + " ".join(notes)])


def _before_table(results: list[dict]) -> str:
    """Before / after in this run: the same export through the route before issue 16 (dynamo, symbolic batch)."""
    rows = [[r["model"], r["method"], fmt_time(r["before"]["total_s"]), fmt_time(r["total_s"]),
             f"{r['total_s'] / r['before']['total_s']:.2f}×",
             ", ".join(f"{k} {fmt_time(v)}" for k, v in sorted(r["before"]["stages_s"].items(), key=lambda kv: -kv[1])
                       if v >= 0.1 * r["before"]["total_s"])] for r in results]
    return ("\n**Before / after, in this run** — before: the same `oodgate.export` with every graph through torch.onnx's "
            "dynamo exporter with a symbolic batch axis and torch.onnx's whole optimiser (the route before issue 16: "
            "`export_onnx(..., engine=\"dynamo\", static_first=False, rewrite=True)`), a fresh process each; after: "
            "the rows above.\n\n"
            + md_table(["model", "method", "before", "after", "after / before", "before: stages (≥ 10 %)"], rows) + "\n")


if __name__ == "__main__":
    script_main(run, __doc__, lambda p: p.add_argument(
        "--methods", default="energy,adascale_a", help="methods exported (default energy,adascale_a)"))
