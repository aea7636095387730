"""The demo on the embedded default: calibrate detectors on digits, export, run with ONNX Runtime, compare."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.sets import ImageSet, available_ood_sets, digits, ood_set
from .evaluation.evaluate import Evaluation, evaluate_session, metrics_table

#: single-pass detectors shown by default (MOS and AdaSCALE are added when present)
DEMO_METHODS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line")
DEMO_OOD_SETS = ("fashion-mnist", "textures", "photos", "faces", "sklearn-photos", "noise")
#: OOD images are made at the digits' native 8x8 size, so that they go through the same upscaling as ID images
DEMO_OOD_SIZE = (8, 8)


@dataclass
class DemoResult:
    """What the demo produced: evaluations per method, parity verdicts, files written."""

    evaluations: list[Evaluation] = field(default_factory=list)
    parity: dict[str, str] = field(default_factory=dict)
    graphs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def parity_passed(self) -> bool:
        return bool(self.parity) and all(v.startswith("PASS") for v in self.parity.values())


def demo_ood_sets(n: int = 300, seed: int = 0) -> dict[str, ImageSet]:
    """The offline OOD sets present on this machine, at the digits' native size."""
    present = set(available_ood_sets())
    return {name: ood_set(name, n=n, size=DEMO_OOD_SIZE, channels="L", seed=seed)
            for name in DEMO_OOD_SETS if name in present}


def run_demo(out_dir: str | Path, methods: list[str] | None = None, *, n_ood: int = 300, overwrite: bool = False,
             log: Callable[[str], None] = print, progress: bool | None = None) -> DemoResult:
    """Calibrate each method on digits (fit: 'train', threshold: 'calib'), export, evaluate on 'test' vs OOD."""
    from .calibration.calibrate import calibrate
    from .detectors.registry import available_detectors
    from .exporter.export import export
    from .exporter.reference import parity
    from .models.registry import load_model
    from .models.split import split_classifier
    from .runtime.session import Session

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    known = available_detectors()
    methods = list(methods or [m for m in (*DEMO_METHODS, "mos", "adascale_a") if m in known])
    bundle = load_model("digits-cnn")
    split = split_classifier(bundle.model)
    fit_set, calib_set, test_set = digits("train"), digits("calib"), digits("test")
    oods = demo_ood_sets(n_ood)
    parity_inputs = bundle.preprocess(np.concatenate([test_set.images[:48], *(o.images[:8] for o in oods.values())]))
    result = DemoResult()
    log(f"digits CNN: fit on {len(fit_set)} 'train' digits, threshold on {len(calib_set)} 'calib' digits, "
        f"evaluated on {len(test_set)} 'test' digits vs {', '.join(oods)} ({n_ood} each)")
    for method in methods:
        t = time.perf_counter()
        cal = calibrate(bundle, fit_set, method=method, holdout=calib_set, progress=progress)
        cal.save(out / f"digits-{method}.oodcal", overwrite=overwrite)
        graph = out / f"digits-{method}.onnx"
        export(cal, graph, model=split, overwrite=overwrite)
        with Session(graph, providers="cpu") as sess:
            result.evaluations.append(evaluate_session(sess, test_set, oods))
        rep = parity(graph, parity_inputs, calibration=cal, model=split, providers=["cpu"])
        worst = max((o.max_abs_diff for r in rep.runtimes for o in r.outputs if o.output == "score"), default=0.0)
        result.parity[method] = f"{'PASS' if rep.passed else 'FAIL'} (max |score diff| {worst:.2g})"
        result.graphs[method] = graph
        log(f"  {method:<10} tau={cal.threshold:<10.5g} exported {graph.name}  parity {result.parity[method]}  "
            f"({time.perf_counter() - t:.1f} s)")
    result.seconds = time.perf_counter() - t0
    return result


def demo_report(result: DemoResult) -> str:
    """The demo's metrics table and parity verdict as Markdown."""
    lines = ["# Demo: detectors on the embedded digits CNN", "",
             "Produced by `oodgate demo --report docs/DIGITS.md`. The digits CNN (99.5 % test accuracy) is fitted on "
             "1000 'train' digits, the threshold on 400 'calib' digits; ID = 397 'test' digits; each OOD set has "
             f"300 images made at the digits' native 8x8 size. Scores come from the exported graphs run by ONNX "
             "Runtime (CPU).", "",
             "AUROC and FPR@95%TPR (classic: ID positive), in %:", "",
             metrics_table(result.evaluations), "",
             "Parity ONNX Runtime vs PyTorch (atol 1e-4, rtol 1e-4): " +
             ("PASS" if result.parity_passed else "FAIL"),
             *(f"- {m}: {v}" for m, v in result.parity.items())]
    return "\n".join(lines)
