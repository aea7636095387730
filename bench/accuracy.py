"""The real benchmark: every detector on Fashion-MNIST (ID) with the built-in fashion CNN vs real OOD images.

    python bench/accuracy.py            # writes docs/ACCURACY.md and docs/accuracy/ (metrics, plots)

Each registered detector is calibrated (statistics on Fashion-MNIST train images the classifier never saw,
threshold at TPR 95 % on other unseen train images), exported to ONNX, and the graph is evaluated with ONNX Runtime
CPU on the 10 000 test images against digits (near-OOD), textures, photos, faces and noise at 28x28 grayscale.
A detector that fails to fit or export is skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, machine_info, md_table, write_text

OOD_NOTES = {
    "digits": "scikit-learn's 8x8 digits upscaled (bilinear): MNIST-like, meant as the near-OOD set",
    "textures": "random crops of scikit-image's brick, grass, gravel and moon images",
    "photos": "random crops of scikit-image's natural photos (astronaut, camera, cat, coffee, ...)",
    "faces": "scikit-image's LFW faces (200, all of them)",
    "noise": "uniform random pixels",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit", type=int, default=5000, help="unseen train images the statistics are fitted on")
    parser.add_argument("--holdout", type=int, default=2000, help="unseen train images the threshold is fitted on")
    parser.add_argument("--test", type=int, default=10000, help="test images evaluated (first N)")
    parser.add_argument("--ood", type=int, default=1000, help="images per OOD set (faces has 200)")
    parser.add_argument("--methods", default=None, help="comma-separated detectors (default: all registered)")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where ACCURACY.md and accuracy/ go")
    args = parser.parse_args()

    import torch

    import oodgate
    from oodgate.data import fashion_mnist, fashion_mnist_available, ood_set
    from oodgate.detectors import available_detectors
    from oodgate.evaluation import evaluate_session, metrics_table, write_report
    from oodgate.models import load_model, read_card
    from oodgate.models.fashion_cnn import CARD
    from oodgate.runtime import Session

    if not fashion_mnist_available():
        print("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    t_start, card, bundle = time.perf_counter(), read_card(CARD), load_model("fashion-cnn")
    seen = int(card["train_images"])  # the classifier trained on train[:seen]; fit and threshold use later images
    train = fashion_mnist("train")
    if seen + args.fit + args.holdout > len(train):
        raise SystemExit(f"--fit + --holdout exceed the {len(train) - seen} train images the classifier never saw")
    fit_set = train.subset(np.arange(seen, seen + args.fit), name="fashion-mnist:train-fit")
    held = train.subset(np.arange(seen + args.fit, seen + args.fit + args.holdout), name="fashion-mnist:train-holdout")
    test = fashion_mnist("test", limit=args.test)
    oods = {name: ood_set(name, n=args.ood, size=(28, 28), channels="L", seed=0) for name in OOD_NOTES}
    methods = args.methods.split(",") if args.methods else available_detectors()
    print(f"fashion-cnn (test acc {card['test_accuracy']}); fit {len(fit_set)}, threshold {len(held)}, test "
          f"{len(test)}; OOD {', '.join(f'{k} {len(v)}' for k, v in oods.items())}; methods {', '.join(methods)}")
    evaluations, seconds, skipped = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="oodgate-accuracy-") as tmp:
        for method in methods:
            t = time.perf_counter()
            try:
                cal = oodgate.calibrate(bundle, fit_set, method=method, holdout=held, tpr=0.95, progress=False)
                oodgate.export(cal, graph := Path(tmp) / f"fashion-{method}.onnx")
                with Session(graph, providers="cpu", threads=args.threads) as sess:
                    evaluations.append(evaluate_session(sess, test, oods, batch_size=256, progress=False))
            except Exception as exc:  # noqa: BLE001 - one failing detector must not stop the benchmark
                skipped[method] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"  {method:<11} SKIPPED {skipped[method]}", flush=True)
                continue
            seconds[method] = time.perf_counter() - t
            mean = evaluations[-1].per_set()["mean"]
            print(f"  {method:<11} mean AUROC {100 * mean['auroc']:.2f}  FPR95 {100 * mean['fpr95_id_positive']:.2f}"
                  f"  ({seconds[method]:.1f} s)", flush=True)
    if not evaluations:
        print("no detector could be evaluated", file=sys.stderr)
        return 1
    best = max(evaluations, key=lambda e: e.per_set()["mean"]["auroc"]).method
    plotted = list(dict.fromkeys(m for m in ("energy", best) if m in seconds))
    out = args.docs / "accuracy"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # plots of methods no longer drawn would linger
        old.unlink()
    write_report(evaluations, out, plot_methods=plotted, overwrite=True,
                 title="Fashion-MNIST (ID) vs real OOD sets: every detector")
    total = time.perf_counter() - t_start
    write_text(args.docs / "ACCURACY.md", accuracy_markdown(evaluations, seconds, skipped, plotted, best, card, args,
                                                            total, metrics_table(evaluations)))
    print(f"wrote {args.docs / 'ACCURACY.md'} and {out}/ in {total:.0f} s")
    return 0


def accuracy_markdown(evaluations: list, seconds: dict[str, float], skipped: dict[str, str], plotted: list[str],
                      best: str, card: dict, args: argparse.Namespace, total: float, table: str) -> str:
    """docs/ACCURACY.md."""
    seen, m, ev0 = int(card["train_images"]), machine_info(), evaluations[0]
    sizes = ", ".join(f"{o.name} {len(o.scores)}" for o in ev0.ood_sets)
    rows = [[ev.method, f"{100 * ev.id_accuracy:.2f}", f"{ev.threshold:.5g}", f"{100 * np.mean(ev.id_set.is_ood):.2f}",
             *(f"{100 * ev.per_set()['mean'][k]:.2f}" for k in ("auroc", "fpr95_id_positive", "fpr95_ood_positive",
                                                                 "aupr_in", "aupr_out")), f"{seconds[ev.method]:.1f}"]
            for ev in evaluations]
    lines = [
        "# Accuracy: Fashion-MNIST (ID) vs real OOD images", "",
        "Produced by `python bench/accuracy.py` (this file and `docs/accuracy/` are written by it; do not edit by "
        f"hand). It ran in {total / 60:.1f} min on {m['CPU']} (shared with other work, {args.threads} thread(s)), "
        f"Python / PyTorch / ONNX Runtime {m['Python / PyTorch / ONNX Runtime']}, onnx / onnxscript / NumPy "
        f"{m['onnx / onnxscript / NumPy']}, oodgate {m['oodgate']}, on {m['date']}.", "",
        "## Setup", "",
        f"- **Classifier**: the built-in `fashion-cnn` (`oodgate/models/fashion_cnn.py`, SmallCNN width "
        f"{card['width']}, 28x28 grayscale), trained by `python -m oodgate.models.training fashion` on the first "
        f"{seen} Fashion-MNIST train images ({card['epochs']} epochs, {card['train_seconds']:.0f} s on CPU); test "
        f"accuracy {100 * card['test_accuracy']:.2f} % on all 10 000 test images.",
        f"- **Fit**: each detector's statistics on train images [{seen}, {seen + args.fit}) and its threshold τ "
        f"(keeps 95 % of ID) on train images [{seen + args.fit}, {seen + args.fit + args.holdout}), none of them seen "
        "by the classifier.",
        f"- **Evaluated**: the exported ONNX graph (backbone + detector + τ) run by ONNX Runtime CPU on the first "
        f"{len(ev0.id_set.scores)} Fashion-MNIST test images (ID) against {sizes} OOD images, all 28x28 grayscale "
        "(`oodgate.data.ood_set(name, n, size=(28, 28), channels='L', seed=0)`):",
        *(f"  - {name}: {note}" for name, note in OOD_NOTES.items()),
        "- **Metrics** (`oodgate.evaluation.metrics`, in %): AUROC; FPR@95%TPR classic = ID positive, share of OOD "
        "accepted at the threshold that keeps 95 % of ID (DICE, LINe, MOS, Energy papers); FPR95 OpenOOD = OOD "
        "positive, share of ID rejected at the threshold that catches 95 % of OOD (OpenOOD, AdaSCALE). ID acc is the "
        "graph's label output on the test images.", "",
        "## AUROC | FPR@95%TPR (classic) per OOD set, in %", "", table, "",
        "## Mean over the OOD sets, every metric, in %", "",
        md_table(["method", "ID acc", "τ", "ID rejected at τ", "AUROC", "FPR95 classic (ID+)", "FPR95 OpenOOD (OOD+)",
                  "AUPR-In", "AUPR-Out", "seconds"], rows), "",
        "`seconds`: calibrate + export + evaluate for that method.",
    ]
    if skipped:
        lines += ["", "Skipped (failed to fit or export):", "", *(f"- {k}: {v}" for k, v in skipped.items())]
    lines += ["", "## Plots", "",
              f"For {', '.join(f'`{p}`' for p in plotted)} (energy as the baseline, and the method with the best mean "
              f"AUROC: `{best}`). All numbers per set, the what-if thresholds per method and the plots: "
              "[accuracy/metrics.md](accuracy/metrics.md), [accuracy/metrics.json](accuracy/metrics.json), "
              "[accuracy/index.html](accuracy/index.html).", ""]
    for p in plotted:
        lines += [f"### {p}", "", f"![{p} ROC](accuracy/{p}_roc.png) ![{p} trade-off](accuracy/{p}_tradeoff.png)", "",
                  " ".join(f"![{p} {o.name}](accuracy/{p}_hist_{o.name}.png)" for o in ev0.ood_sets), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
