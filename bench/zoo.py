"""The model zoo: torchvision/timm families x every oodgate method, full size (224x224), written to docs/ZOO.md.

    python bench/zoo.py [--reduced] [--models resnet50,vit_b_16] [--methods energy,adascale_a] [--n 16] [--n-discontinuous 32]
                        [--budget-min 40] [--write-only]

Per cell (model x method): calibrate on real Fashion-MNIST images (upsampled, RGB), export() (which runs the
noise-floor check), then on N real ID + N real OOD images (scikit-image photos/textures): max |diff| of ONNX
Runtime to the float64 PyTorch reference and PyTorch float32's own (the noise floor), the parity verdict
(oodgate.exporter.reference.parity, float64 criterion, with AUROC/FPR95 drift), export time, graph size, ORT CPU
ms/img (batch 1, median of 5) and the TensorRT audit. Models have random weights with realistic scales (BN
statistics from real images, head trained on real features: tests/zoo/zoo_models.py); no download.

Resumable: every finished cell is cached in bench/.cache/zoo/<model>/<method>.json (keyed by the source hash of
oodgate + this file), so an interrupted run continues where it stopped; --budget-min stops starting new cells.
docs/ZOO.md lists exactly the cells that were run, with the machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "zoo"))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine_info, source_hash, write_text  # noqa: E402

from oodgate.evaluation.parity import DISCONTINUOUS_METHODS as DISCONTINUOUS  # noqa: E402 - judged by drift

METHODS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line", "mos", "adascale_a",
           "adascale_l")
CACHE = ROOT / "bench" / ".cache" / "zoo"
DOC = ROOT / "docs" / "ZOO.md"


def source_key() -> str:
    """Hash of oodgate's sources and of this bench's files: a cache entry is valid for one version."""
    return source_hash(["oodgate", "bench/zoo.py", "tests/zoo/zoo_models.py"])[:16]


def machine() -> str:
    m = machine_info()
    return (f"{m['CPU']} (load average {m['load']} when written), Python / PyTorch / ONNX Runtime "
            f"{m['Python / PyTorch / ONNX Runtime']}")


def run_cell(name: str, method: str, *, reduced: bool, n: int, folder: Path, built: tuple | None = None) -> dict:
    """Calibrate, export and measure one cell; returns the row (status 'ok' / 'FAIL' with the error).

    ``built``: (model, side, build seconds) of ``zoo.build(name)``, shared by the cells of one family (the model is
    not changed by a cell: calibrate/export work on copies).
    """
    import importlib

    import onnxruntime as ort
    import torch

    import zoo_models as zoo
    from oodgate import calibrate
    from oodgate.data import ImageSet, Preprocess
    from oodgate.evaluation.parity import compare_to_floor
    from oodgate.exporter import export
    from oodgate.runtime.trt_audit import audit_graph, has_errors

    compare_with_reference = importlib.import_module("oodgate.evaluation.parity").parity
    row: dict = {"model": name, "method": method, "reduced": reduced, "n": n}
    if built is None:
        t0 = time.perf_counter()
        model, size = zoo.build(name, reduced=reduced)
        built = (model, size, time.perf_counter() - t0)
    model, size, row["build_s"] = built
    pre = Preprocess(channels="RGB", resize=(size, size), mean=zoo.MEAN, std=zoo.STD)
    ids, labels = zoo.id_images(200 + n, size, offset=2000)
    fit = ImageSet("fashion-mnist rgb", ids[:200], labels[:200])
    test_id = zoo.normalise(ids[200:])
    test_ood = zoo.normalise(zoo.ood_images(n, size, seed=5))
    t0 = time.perf_counter()
    cal = calibrate(model, fit, method=method, preprocess=pre, progress=False, batch_size=32)
    row["calibrate_s"] = time.perf_counter() - t0
    path = folder / f"{name}-{method}.onnx"
    t0 = time.perf_counter()
    result = export(cal, path, model=model, overwrite=True)
    row["export_s"] = time.perf_counter() - t0
    row["graph_mb"] = (path.stat().st_size + (result.external_data.stat().st_size if result.external_data else 0)) / 1e6
    # what oodgate.exporter.reference.parity (`oodgate parity`) does, with the two references kept for the row
    everything = np.concatenate([test_id, test_ood])
    t0 = time.perf_counter()
    ref32, ref64 = _references(cal, model, everything, name)
    row["reference_s"] = time.perf_counter() - t0
    report = compare_with_reference(path, test_id, reference=ref32, reference_name="pytorch-cpu",
                                    reference_hash=cal.checksum(), ood_inputs=test_ood, reference64=ref64,
                                    batch_size=8)
    rt = report.runtimes[0]
    row["parity"] = "pass" if report.passed else "FAIL"
    row["floor"] = rt.floor
    row["drift"] = rt.drift["delta"] if rt.drift else None
    row["drift64"] = rt.drift.get("floor") if rt.drift else None  # AdaSCALE: judged against float64
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: everything})))
    for output in ("logits", "score"):
        cmp = compare_to_floor(output, got[output], ref32[output], ref64[output])
        row[f"{output}_vs64"], row[f"{output}_torch_vs64"], row[f"{output}_scale"] = (
            cmp.graph_error, cmp.torch_error, cmp.scale)
    times = []
    x1 = everything[:1]
    sess.run(None, {sess.get_inputs()[0].name: x1})
    for _ in range(5):
        t = time.perf_counter()
        sess.run(None, {sess.get_inputs()[0].name: x1})
        times.append(time.perf_counter() - t)
    row["ort_ms"] = 1e3 * float(np.median(times))
    findings = audit_graph(str(path))
    row["trt_audit"] = "pass" if not has_errors(findings) else "; ".join(
        f"{f.op}: {f.message}" for f in findings if f.severity == "error")[:200]
    row["status"] = "ok" if row["parity"] == "pass" and row["trt_audit"] == "pass" else "FAIL"
    path.unlink(missing_ok=True)
    if result.external_data:
        result.external_data.unlink(missing_ok=True)
    del torch
    return row


#: backbone outputs per family, by (dtype, input bytes): see _Memo
_MEMO: dict[str, dict] = {}


def _memo_module():  # noqa: ANN202 - a torch module class, defined once torch is imported
    import torch

    class Memo(torch.nn.Module):
        """A backbone whose output on an input it has seen (same dtype, same bytes) is returned from ``_MEMO``.

        Exact for a deterministic eval-mode backbone: the single-pass cells of one family share its weights, so the
        float32 and float64 PyTorch references of their exported modules differ only in the head, and the (slow,
        float64) backbone is computed once per family instead of once per method. The store is global, so that the
        float64 reference's deepcopy shares it.
        """

        def __init__(self, inner: torch.nn.Module, family: str) -> None:
            super().__init__()
            self.inner, self.family = inner, family

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import hashlib

            data = x.detach().contiguous().numpy()
            key = (str(x.dtype), tuple(x.shape), hashlib.sha256(data.tobytes()).hexdigest())
            store = _MEMO.setdefault(self.family, {})
            if key not in store:
                store[key] = self.inner(x).detach().clone()
            return store[key].clone()

    return Memo


def _references(cal, model, inputs: np.ndarray, family: str) -> tuple[dict, dict]:  # noqa: ANN001
    """PyTorch float32 and float64 outputs of the exported module of ``cal`` (oodgate.exporter.reference), with a
    single-pass detector's backbone memoised per family (``_memo_module``)."""
    from oodgate.detectors.base import FeatureScorer
    from oodgate.exporter.graph import build_graph_module
    from oodgate.exporter.reference import module_outputs
    from oodgate.models.split import split_classifier

    split = split_classifier(model, head=cal.model_head)
    cal.check_model(split)
    graph = build_graph_module(cal, split)
    if isinstance(graph.scorer, FeatureScorer):
        graph.scorer.backbone = _memo_module()(graph.scorer.backbone, family)
    return (module_outputs(graph, inputs, batch_size=8),
            module_outputs(graph, inputs, batch_size=8, float64=True))


SIGNED_FEATURES = """## Methods that assume non-negative features, on signed ones

ReAct, ASH-P/S/B, SCALE, DICE, LINe and AdaSCALE-A/L were designed for ReLU-pooled features (ResNet-style, h >= 0):
they clip large activations (ReAct), prune all but the top-k entries of h and rescale by the ratio of sums (ASH,
SCALE, AdaSCALE's r), or rank weight x activation contributions (DICE, LINe). On ViT / Swin / ConvNeXt the split's
h is a LayerNorm output (zero-mean per sample, about half of it negative), and on EfficientNet / MobileNetV3 a
SiLU / Hardswish output (slightly negative entries). The graphs are still exact (the parity above), but the math
then means: ReAct clips only the positive tail (negative entries pass unchanged); ASH/SCALE's top-k keeps the
largest *signed* entries; the sum s1 of a LayerNorm output is near zero (its per-sample mean is that of the
LayerNorm's bias), so SCALE's / ASH-S's exp(s1/s2) is about 1 and ASH-B's constant s1/k about 0, while AdaSCALE's r
uses relu(h); DICE/LINe rank signed weight x activation contributions. Whether that still separates ID from OOD is an
empirical question per model: `oodgate.calibrate` warns (``FeatureSignWarning``, and a line in the calibration's
summary) when more than 1 % of the ID features are negative for one of these methods; compare against MSP / Energy /
MOS, which make no assumption on h.
"""


def _size(row: dict) -> str:
    return "reduced" if row.get("reduced") else "224"


def _fmt(v: float | None, spec: str = ".2g") -> str:
    return "–" if v is None else format(v, spec)


def write_doc(rows: list[dict], key: str, args: argparse.Namespace) -> None:
    import zoo_models as zoo

    lines = [
        "# The model zoo", "",
        "Written by `python bench/zoo.py` (size 224: full-size torchvision/timm models at 224x224; reduced: the CI "
        f"configs of tests/zoo/zoo_models.py, run with `--reduced`) on: {machine()}.",
        f"Source key {key}. Random weights with realistic scales (BatchNorm statistics re-estimated on real images, "
        "the final Linear trained on real Fashion-MNIST features; no download), 10 classes. Each cell: "
        "calibrate on 200 real ID images, `export()` (noise-floor check), then `oodgate parity` (float64 criterion) "
        "and the measurements on n real ID + n real OOD images (scikit-image photos/textures; the **n** column; "
        "AdaSCALE's cells use more, its drift check needs AUROC steps finer than its 0.5-point tolerance).",
        "",
        "Columns: **status** ok = export passed its check, parity passed and the TensorRT audit passed; "
        "**logits / score vs f64** = max |ONNX Runtime - float64 PyTorch| and, after the slash, PyTorch float32's "
        "own max |float32 - float64| (the noise floor); **ΔAUROC / ΔFPR95** = drift of ORT against the PyTorch "
        "float32 reference on the ID vs OOD images, in points; **AdaSCALE drift vs f64** = ORT's largest |ΔAUROC| or "
        "|ΔFPR95| against float64 / PyTorch float32's own (the noise floor) / the bound 0.5 + 4 x that (AdaSCALE's "
        "parity verdict, with decisions away from τ; its per-sample scores are discontinuous); **ORT ms** = ONNX Runtime CPU, batch 1, median of 5 "
        "(on a shared, loaded machine: compare within a column only).", "",
        "Only the cells listed here were run; a family or method missing from the table was not run. "
        "**source key**: hash of oodgate's sources and of this benchmark when the cell ran; "
        + ("every cell here has the same one (one version of the code)."
           if len({r.get("key") for r in rows}) == 1 else
           "this table mixes versions of the code — rerun `python bench/zoo.py` to refresh all.")
        + " The reduced matrix (CI) is tests/zoo.", "",
        "| model | size | method | status | n | logits vs f64 / torch f32 | score vs f64 / torch f32 | ΔAUROC / "
        "ΔFPR95 (pt) | AdaSCALE drift vs f64 (pt) | export s | graph MB | ORT ms | TRT audit | source key |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") not in ("ok", "FAIL") or "error" in r:
            lines.append(f"| {r['model']} | {_size(r)} | {r['method']} | FAIL | {r.get('n', '')} | "
                         f"{r.get('error', '?')[:160]} | | | | | | | | {r.get('key', '')} |")
            continue
        drift = r.get("drift") or {}
        fpr = max((v for k, v in drift.items() if k.startswith("fpr95")), key=abs, default=0.0)
        d = (f"{100 * drift.get('auroc', 0):+.2f} / {100 * fpr:+.2f}" if drift else "–")
        f64 = r.get("drift64")
        d64 = (f"{100 * f64['worst']:.2f} / {100 * f64['noise']:.2f} / {100 * f64['bound']:.2f}" if f64 else "–")
        lines.append(
            f"| {r['model']} | {_size(r)} | {r['method']} | {r['status']} | {r['n']} | {_fmt(r['logits_vs64'])} / {_fmt(r['logits_torch_vs64'])}"
            f" | {_fmt(r['score_vs64'])} / {_fmt(r['score_torch_vs64'])} | {d} | {d64} | {r['export_s']:.1f} | "
            f"{r['graph_mb']:.1f} | {r['ort_ms']:.1f} | {r['trt_audit']} | {r.get('key', '')} |")
    lines += ["", "## Penultimate features per family", "",
              "What the split (`oodgate.models.split_classifier`) hands the detectors as h:", "",
              "| family | h | h >= 0 |", "|---|---|---|"]
    for f in zoo.FAMILIES.values():
        lines.append(f"| {f.name} ({f.source}) | {f.features} | {'yes' if f.nonnegative else 'no'} |")
    lines += ["", SIGNED_FEATURES]
    write_text(DOC, "\n".join(lines) + "\n")
    print(f"wrote {DOC}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="the CI configs instead of full size")
    parser.add_argument("--models", default="", help="comma-separated families (default: all)")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: all)")
    parser.add_argument("--n", type=int, default=16, help="ID and OOD test images each (single-pass methods)")
    parser.add_argument("--n-discontinuous", type=int, default=32,
                        help="ID and OOD test images each for AdaSCALE (judged by AUROC/FPR95 drift)")
    parser.add_argument("--budget-min", type=float, default=40.0, help="start no new cell after this many minutes")
    parser.add_argument("--write-only", action="store_true",
                        help="write docs/ZOO.md from every cached cell (whatever source key), run nothing")
    args = parser.parse_args()
    import torch

    import zoo_models as zoo

    torch.set_num_threads(int(os.environ.get("OODGATE_BENCH_THREADS", "1")))
    models = [m for m in (args.models.split(",") if args.models else zoo.FAMILIES) if m]
    methods = [m for m in (args.methods.split(",") if args.methods else METHODS) if m]
    key = source_key()
    tag = "reduced" if args.reduced else "full"
    start = time.perf_counter()
    rows = []
    if args.write_only:  # every cached cell, full size first, then the reduced configs
        for size_tag in ("full", "reduced"):
            for name in models:
                for method in methods:
                    cached = CACHE / size_tag / name / f"{method}.json"
                    if cached.is_file():
                        entry = json.loads(cached.read_text())
                        rows.append({**entry["row"], "key": entry.get("key"), "reduced": size_tag == "reduced"})
        write_doc(rows, key, args)
        return
    feature_cache = importlib.import_module("oodgate.detectors.base").feature_cache
    # the single-pass methods of every family first, then AdaSCALE's (slower) cells: a run stopped by its budget
    # leaves whole rows of the cheap methods
    passes = [[m for m in methods if m not in DISCONTINUOUS], [m for m in methods if m in DISCONTINUOUS]]
    with tempfile.TemporaryDirectory() as tmp:
        for name, cells in ((name, cells) for cells in passes for name in models if cells):
            built = None  # one build per family, and its calibration features shared by the single-pass methods
            _MEMO.clear()
            with feature_cache():
                for method in cells:
                    cached = CACHE / tag / name / f"{method}.json"
                    if cached.is_file():
                        entry = json.loads(cached.read_text())
                        if entry.get("key") == key:
                            rows.append({**entry["row"], "key": entry.get("key")})
                            continue
                    if (time.perf_counter() - start) / 60 > args.budget_min:
                        continue
                    if built is None:
                        t0 = time.perf_counter()
                        model, size = zoo.build(name, reduced=args.reduced)
                        built = (model, size, time.perf_counter() - t0)
                    row = _run(name, method, args, Path(tmp), built)
                    write_text(cached, json.dumps({"key": key, "row": row}, default=float))
                    rows.append({**row, "key": key})
                    print(f"{name:<22} {method:<11} {row['status']:<5} {row['cell_s']:.0f}s "
                          f"{row.get('error', '')}", flush=True)
    rows.sort(key=lambda r: (models.index(r["model"]), methods.index(r["method"])))
    write_doc(rows, key, args)


def _run(name: str, method: str, args: argparse.Namespace, folder: Path, built: tuple) -> dict:
    """One cell, a failure recorded as its result."""
    t0 = time.perf_counter()
    try:
        n = args.n_discontinuous if method in DISCONTINUOUS else args.n
        row = run_cell(name, method, reduced=args.reduced, n=n, folder=folder, built=built)
    except Exception as exc:  # noqa: BLE001 - a failing cell is a result
        row = {"model": name, "method": method, "status": "FAIL",
               "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
        traceback.print_exc()
    row["cell_s"] = time.perf_counter() - t0
    return row


if __name__ == "__main__":
    main()
