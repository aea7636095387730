"""The GPU check: PyTorch references on the GPU vs the ONNX graphs on CPU, and the GPU runtimes where installed.

    python bench/gpu_check.py                     # on an NVIDIA machine: writes bench/gpu_check.json and .md
    python bench/gpu_check.py --quick --device cpu --out /tmp/g.json   # the CPU-runnable parts (a smoke run)

Made to run within about 8 minutes on a machine with PyTorch + CUDA and ONNX Runtime for the CPU only. Per model
and detector: calibrate (CPU, the bench's small ID sets), export, then run on the same real images

- the PyTorch reference (oodgate's exported module, eager) on ``--device`` (TF32 off);
- for AdaSCALE also its autograd reference on ``--device`` (the gradient that the graph traces);
- the ONNX graph with ONNX Runtime on the CPU — compared with the references: the graph must give the same
  scores (|diff| <= atol + rtol |ref|), labels and accept/reject decisions (away from the threshold);
- where importable, the same graph on ONNX Runtime's CUDA and TensorRT execution providers and on oodgate's native
  TensorRT runner, compared likewise, with latency (batch 1) and throughput (batch 32) next to the GPU reference's.

Rows that would not fit ``--budget`` seconds are skipped and listed. Exit code 1 when a comparison fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import BENCH, CACHE, bench_model, calibration, fmt_time, graph_path, log, md_table, write_text

PLAN = {"digits-cnn": ("msp", "energy", "react", "ash_s", "scale", "dice", "line", "mos", "adascale_a",
                       "adascale_l"),
        "efficientnet-lite0": ("energy", "ash_s", "dice", "line", "mos", "adascale_a"),
        "resnet50-sized": ("energy", "line", "adascale_a")}
QUICK = {"digits-cnn": ("energy", "line")}
ATOL = RTOL = 1e-3


def _runtimes() -> dict[str, Any]:
    """The GPU paths this machine can run: ONNX Runtime EPs that are available, and the native TensorRT runner."""
    import onnxruntime as ort

    found = {}
    for name, spec in (("CUDAExecutionProvider", "cuda"), ("TensorrtExecutionProvider", "tensorrt")):
        if name in ort.get_available_providers():
            found[f"ORT {spec}"] = spec
    try:
        import tensorrt  # noqa: F401

        found["TensorRT (native)"] = "trt-native"
    except ImportError:
        pass
    return found


def _median_time(fn: Any, reps: int, sync: Any = None) -> float:
    fn()
    if sync:
        sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], threshold: float) -> dict[str, Any]:
    """Score / label / decision agreement of a run with a reference (decisions only away from the threshold)."""
    s, r = got["score"].astype(np.float64), ref["score"].astype(np.float64)
    diff = np.abs(s - r)
    within = diff <= ATOL + RTOL * np.abs(r)
    away = np.abs(r - threshold) > ATOL + RTOL * np.abs(r)
    decisions = (s < threshold) == (r < threshold)
    out = {"max_score_diff": float(diff.max()), "scores_within_tol": float(within.mean()),
           "labels_equal": float((got["label"] == ref["label"]).mean()),
           "decisions_equal_away_from_threshold": float(decisions[away].mean()) if away.any() else 1.0}
    out["ok"] = bool(out["scores_within_tol"] == 1.0 and out["labels_equal"] == 1.0
                     and out["decisions_equal_away_from_threshold"] == 1.0)
    return out


def _error(exc: Exception) -> dict[str, Any]:
    return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}


def check(model: str, method: str, device: str, runtimes: dict[str, str], reps: int) -> dict[str, Any]:
    """One (model, method) row of the plan: calibrate and export (cached), then ``compare_on_device``."""
    bm = bench_model(model)
    row = compare_on_device(calibration(bm, method), graph_path(bm, method), bm.inputs(32), device, runtimes, reps,
                            model=bm.model)
    return {"model": model, **row}


def compare_on_device(cal: Any, path: Path, x: np.ndarray, device: str, runtimes: dict[str, str], reps: int, *,
                      model: Any = None) -> dict[str, Any]:
    """The graph at ``path`` (ONNX Runtime CPU, and each GPU runtime) vs the calibration's PyTorch references on
    ``device``, on the preprocessed inputs x. A step that raises is recorded as a failed comparison with its error."""
    import torch

    from oodgate.exporter import build_graph_module, reference_outputs
    from oodgate.models import split_classifier
    from oodgate.runtime.session import Session

    split = split_classifier(model, head=cal.model_head) if model is not None else cal.model()
    row: dict[str, Any] = {"method": cal.method, "device": device, "n": len(x), "timings_s": {}}
    cpu = Session(path, providers="cpu").run_array(x)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    ref = None
    try:
        ref = reference_outputs(cal, x, model=model, device=device)
        row["onnx_cpu_vs_reference"] = compare(cpu, ref, cal.threshold)
        module = build_graph_module(cal, split).to(device).eval()
        xd = torch.from_numpy(x).to(device)

        def forward(n: int) -> Any:
            with torch.no_grad():
                return module(xd[:n])

        row["timings_s"]["reference b1"] = _median_time(lambda: forward(1), reps, sync)
        row["timings_s"]["reference b32"] = _median_time(lambda: forward(len(x)), max(3, reps // 3), sync)
        if cal.method.startswith("adascale"):
            _, score, label = cal.detector.reference(split.to(device), xd)
            auto = {"score": score.detach().cpu().numpy(), "label": label.detach().cpu().numpy()}
            row["onnx_cpu_vs_autograd_reference"] = compare(cpu, auto, cal.threshold)
    except Exception as exc:  # noqa: BLE001 - a reference that fails on the device is a finding, not a crash
        row["onnx_cpu_vs_reference"] = _error(exc)
    finally:  # the next method's export traces the model on the CPU
        split.to("cpu"), cal.detector.head().to("cpu")
        if model is not None:
            model.to("cpu")
    for label, spec in runtimes.items():
        try:
            with Session(path, providers=spec) as sess:
                row[f"{label} vs reference"] = compare(sess.run_array(x), ref if ref else cpu, cal.threshold)
                row["timings_s"][f"{label} b1"] = _median_time(lambda: sess.run_array(x[:1]), reps)
                row["timings_s"][f"{label} b32"] = _median_time(lambda: sess.run_array(x), max(3, reps // 3))
        except Exception as exc:  # noqa: BLE001
            row[f"{label} vs reference"] = _error(exc)
    return row


def machine(device: str) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "onnxruntime": ort.__version__,
            "ort_providers": ort.get_available_providers(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown(result: dict[str, Any]) -> str:
    """The check's results as markdown (run_all.py puts it in docs/BENCHMARKS.md)."""
    m = result["machine"]
    head = (f"`python bench/gpu_check.py` on {m.get('gpu', m['device'])} (PyTorch {m['torch']}, CUDA {m['cuda']}, "
            f"ONNX Runtime {m['onnxruntime']}), {result['date']}, {result['seconds'] / 60:.1f} min. Scores within "
            f"atol = rtol = {ATOL}; decisions compared away from the threshold.")
    rows, trows = [], []
    for r in result["rows"]:
        comps = {k: v for k, v in r.items() if k.endswith("reference")}
        rows.append([r["model"], r["method"], "; ".join(
            f"{k}: " + ("ok" if v.get("ok") else "**FAILED**") + (f" (max |Δscore| {v['max_score_diff']:.2g})"
                                                                  if "max_score_diff" in v else f" ({v.get('error')})")
            for k, v in comps.items())])
        trows.append([r["model"], r["method"], ", ".join(f"{k} {fmt_time(v)}" for k, v in r["timings_s"].items())])
    skipped = f"\n\nSkipped (budget): {', '.join(result['skipped'])}." if result["skipped"] else ""
    return (head + "\n\n" + md_table(["model", "method", "fidelity"], rows) + "\n\n"
            + md_table(["model", "method", "median times"], trows) + skipped)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="where the PyTorch references run (default cuda)")
    parser.add_argument("--quick", action="store_true", help="digits CNN, two detectors (a smoke run)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; rows that would not fit are skipped")
    parser.add_argument("--out", type=Path, default=BENCH / "gpu_check.json", help="results (JSON; .md next to it)")
    args = parser.parse_args()
    import torch

    from oodgate.exporter import default_reference_device

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("gpu_check: PyTorch sees no CUDA device: run it on an NVIDIA machine, or pass --device cpu",
                  file=sys.stderr)
            return 2
        default_reference_device()  # TF32 off: the reference stays FP32
    t0, rows, skipped = time.perf_counter(), [], []
    runtimes = _runtimes() if args.device.startswith("cuda") else {}
    log(f"gpu_check: device {args.device}, GPU runtimes: {', '.join(runtimes) or 'none'}")
    last = 0.0
    for model, methods in (QUICK if args.quick else PLAN).items():
        for method in methods:
            if time.perf_counter() - t0 + 2 * last > args.budget:
                skipped.append(f"{model} {method}")
                continue
            t1 = time.perf_counter()
            rows.append(check(model, method, args.device, runtimes, reps=5 if args.quick else 15))
            last = time.perf_counter() - t1
            log(f"gpu_check: {model} {method}: {last:.0f} s")
    import datetime as dt

    result = {"machine": machine(args.device), "rows": rows, "skipped": skipped, "seconds": time.perf_counter() - t0,
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cache": str(CACHE)}
    write_text(args.out, json.dumps(result, indent=1))
    write_text(args.out.with_suffix(".md"), markdown(result) + "\n")
    failed = [f"{r['model']} {r['method']}" for r in rows for k, v in r.items()
              if k.endswith("reference") and not v.get("ok")]
    print(markdown(result))
    if failed:
        print(f"gpu_check: comparisons failed for {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
