"""Question 3: AdaSCALE's graph vs its floor (forward + backward-to-input + forward) and vs the eager reference.

    python bench/adascale_floor.py [--quick] [--threads 1] [--models ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common import (CACHE, GRAPHS, BenchModel, Section, Stat, bare_graph_path, bench_model, cached_file, calibration,
                    chosen_models, eager_runner, example_input, fmt_ratio, fmt_stat_time, fmt_time, graph_path, key_of,
                    md_table, ort_cpu, ort_runner, ratio, script_main, source_hash, time_interleaved, verdict)

TARGET = 1.1
#: the 224x224 models at batch 8 / 4, not 32: their eager variants take seconds per call there
BATCHES = {"digits-cnn": (1, 32), "efficientnet-lite0": (1, 8), "resnet50-sized": (1, 4)}
REPS = {("digits-cnn", 1): 11, ("digits-cnn", 32): 9, ("efficientnet-lite0", 1): 7, ("efficientnet-lite0", 8): 3,
        ("resnet50-sized", 1): 5, ("resnet50-sized", 4): 3}


def gradient_graph_path(bm: BenchModel) -> Path:
    """oodgate's traced (logits, input gradient of the predicted logit) graph of the classifier, cached."""
    from oodgate.detectors.gradient import export_gradient_onnx, trace_logits_and_input_gradient

    key = key_of(bm.digest(), bm.input_shape, source_hash(["oodgate/detectors/gradient.py", "oodgate/exporter"]))
    example = example_input(bm, seed=0)
    return cached_file(CACHE / "graphs" / bm.name / f"gradient-{key}.onnx", f"trace + export {bm.name} gradient",
                       lambda tmp: export_gradient_onnx(trace_logits_and_input_gradient(bm.split, example), example,
                                                        tmp, input_names=("input",)))


def op_profile(path: Path, x: np.ndarray, threads: int, runs: int = 3) -> dict[str, float]:
    """Share of kernel time per ONNX op type (ONNX Runtime's profiler, ``runs`` runs after one warm-up)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level, opts.enable_profiling = threads, 3, True
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        sess.run(None, {sess.get_inputs()[0].name: x})
    trace = Path(sess.end_profiling())
    totals: dict[str, float] = {}
    for ev in json.loads(trace.read_text()):
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            totals[ev["args"]["op_name"]] = totals.get(ev["args"]["op_name"], 0.0) + float(ev["dur"])
    trace.unlink(missing_ok=True)
    total = sum(totals.values()) or 1.0
    return {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def eager_floor_runner(bm: BenchModel, x: np.ndarray, eps: float) -> Callable[[], Any]:
    """AdaSCALE's floor in PyTorch eager: forward, backward of the predicted-class logit to the input, and a
    second forward of the perturbed input (no selection, no head)."""
    import torch

    split, xt = bm.split, torch.from_numpy(x)

    def run() -> Any:
        xg = xt.detach().requires_grad_(True)
        z = split.head(split.backbone(xg))
        (g,) = torch.autograd.grad(z.gather(1, z.detach().argmax(dim=1, keepdim=True)).sum(), xg)
        with torch.no_grad():
            return split.backbone(xt + eps * torch.sign(g))

    return run


def ort_floor_runner(grad_sess: Any, bare_sess: Any, x: np.ndarray, eps: float) -> Callable[[], Any]:
    """The same floor in ONNX Runtime: oodgate's gradient graph, then the bare graph on x + eps * sign(g)."""
    g_in, b_in = grad_sess.get_inputs()[0].name, bare_sess.get_inputs()[0].name
    return lambda: bare_sess.run(None, {b_in: x + np.float32(eps) * np.sign(grad_sess.run(None, {g_in: x})[1])})


def run(args: argparse.Namespace) -> Section:
    data: dict = {"results": {}, "gradient_profile": {}}
    rows, floors, profile_rows, targets, notes = [], [], [], [], []
    for name in chosen_models(args):
        bm = bench_model(name)
        graphs = {g: ort_cpu(graph_path(bm, m), args.threads)
                  for g, m in (("graph A", "adascale_a"), ("graph L", "adascale_l")) if m in GRAPHS[name]}
        cal_a, grad_path = calibration(bm, "adascale_a"), gradient_graph_path(bm)
        grad_sess, bare_sess = ort_cpu(grad_path, args.threads), ort_cpu(bare_graph_path(bm), args.threads)
        eps = float(cal_a.params["eps"])
        shares = data["gradient_profile"][name] = op_profile(grad_path, bm.inputs(4), args.threads)
        profile_rows.append([bm.name, ", ".join(f"{op} {100 * v:.0f} %" for op, v in list(shares.items())[:5])])
        for batch in (1, 8) if args.quick else BATCHES[name]:
            x = bm.inputs(batch)
            t = time_interleaved({**{g: ort_runner(s, x) for g, s in graphs.items()},
                                  "eager floor": eager_floor_runner(bm, x, eps),
                                  "ORT floor": ort_floor_runner(grad_sess, bare_sess, x, eps),
                                  "eager reference": eager_runner(bm, cal_a, x), "bare": ort_runner(bare_sess, x),
                                  "eager forward": eager_runner(bm, calibration(bm, "energy"), x)},
                                 reps=3 if args.quick else REPS.get((name, batch), 5),
                                 what=f"adascale_floor: {name} batch {batch}")
            res: dict = {k: Stat.of(v).as_dict() for k, v in t.items()}
            for g in graphs:
                r = {"vs_eager_floor": ratio(t[g], t["eager floor"]), "vs_ort_floor": ratio(t[g], t["ORT floor"]),
                     "eager_reference_speedup": ratio(t["eager reference"], t[g]), "vs_bare": ratio(t[g], t["bare"])}
                rows.append([bm.name if g == "graph A" else "", batch if g == "graph A" else "", g,
                             fmt_stat_time(Stat.of(t[g])), fmt_ratio(r["vs_eager_floor"]),
                             verdict(r["vs_eager_floor"].median <= TARGET), fmt_ratio(r["vs_ort_floor"]),
                             fmt_ratio(r["eager_reference_speedup"]), fmt_ratio(r["vs_bare"], 1)])
                res[g + " ratios"] = {k: v.as_dict() for k, v in r.items()}
            worst = max(res[g + " ratios"]["vs_eager_floor"]["median"] for g in graphs)
            speedup = min(res[g + " ratios"]["eager_reference_speedup"]["median"] for g in graphs)
            targets += [[f"3. AdaSCALE graph ≤ {TARGET}× eager floor — {name}, batch {batch}",
                         f"{worst:.2f}× (worse of A, L)", worst <= TARGET],
                        [f"2. ORT ≥ 1.3× PyTorch eager — AdaSCALE, {name}, batch {batch} (question 3)",
                         f"{speedup:.2f}× (worse of A, L)", speedup >= 1.3]]
            med = {k: v["median"] for k, v in res.items() if "median" in v}
            parts = res["parts_s"] = {"eager forward": med["eager forward"],
                                      "eager backward": med["eager floor"] - 2 * med["eager forward"],
                                      "ORT forward": med["bare"], "ORT backward": med["ORT floor"] - 2 * med["bare"]}
            floors.append([bm.name, batch, fmt_time(med["eager floor"]), fmt_time(med["ORT floor"]),
                           *(fmt_time(v) for v in parts.values())])
            data["results"][f"{name}/b{batch}"] = res
            notes.append(f"{name} batch {batch}: backward / forward {parts['ORT backward'] / parts['ORT forward']:.1f}"
                         f"× in ONNX Runtime, {parts['eager backward'] / parts['eager forward']:.1f}× in eager")
    body = f"""
AdaSCALE needs, per sample, the input gradient of the predicted-class logit and a second forward pass of a perturbed
input, so no implementation can cost less than forward + backward-to-input + forward. Timed, interleaved, on
{args.threads} intra-op thread(s): the exported AdaSCALE-A/-L graphs (ONNX Runtime CPU); the *eager floor* (that
minimum in PyTorch eager: no selection, no head); the *ORT floor* (oodgate's traced gradient graph, then the bare
classifier graph on x + eps·sign(g)); the *eager reference* (oodgate's autograd AdaSCALE-A, what a PyTorch user runs);
and the eager / ORT forwards alone, to split the floors into forward and backward. Ratios per repetition, median
[q1–q3]. Target: graph ≤ {TARGET}× the eager floor. The 224×224 models are timed at batch 1 and 8
(EfficientNet-Lite0) or 4 (ResNet-50-sized): at batch 32 their eager variants take many seconds per call here.

{md_table(["model", "batch", "graph", "graph time, median [q1–q3]", "graph / eager floor", f"target ≤ {TARGET}×",
           "graph / ORT floor", "speed-up vs eager reference", "graph / bare classifier"], rows)}

**Where the time goes** (medians of the same repetitions; a backward pass = floor − 2 forwards, so approximate):

{md_table(["model", "batch", "eager floor", "ORT floor", "eager forward", "eager backward", "ORT forward",
           "ORT backward"], floors)}

Kernel time of oodgate's gradient graph (forward + backward to the input) by ONNX op type, ONNX Runtime's profiler,
batch 4 (ConvTranspose: the convolutions' input gradients; Where: the ReLU/ReLU6 masks):

{md_table(["model", "largest shares"], profile_rows)}
"""
    return Section("adascale_floor", "3. AdaSCALE: graph vs its floor and vs the eager reference", body, data,
                   targets, ["**AdaSCALE's backward.** " + "; ".join(notes) + "."])


if __name__ == "__main__":
    script_main(run, __doc__)
