"""What the speed benchmarks share: threads, the machine, interleaved timing, the three models, cached graphs.

Every figure is a ratio of times measured in one run: the compared variants are called in turn (rotating order)
within each repetition, and a ratio is taken per repetition, so load from other processes on a shared machine
hits both sides alike. Tables give the median over repetitions and the interquartile range [q1-q3].

Graphs are exported once and cached under ``bench/.cache/`` (gitignored), keyed by the calibration's checksum and
a hash of the exporter/detector sources; calibrations are cached by their settings and the same source hash. A
cold cache costs the exports (minutes for the 224x224 models); later runs only time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

#: bump when the set-up below (data, parameters, model weights) changes, to invalidate cached calibrations
SETUP_VERSION = 1
#: sources whose edits can change any calibration / any exported graph (hashed into the cache keys, with the
#: method's own files: an edit of one detector invalidates only that detector's cache entries)
CALIBRATION_SOURCES = ("oodgate/detectors/base.py", "oodgate/detectors/ops.py", "oodgate/calibration/__init__.py",
                       "oodgate/calibration/features.py", "oodgate/calibration/threshold.py", "oodgate/models",
                       "oodgate/data/preprocess.py", "bench/resnet.py")
GRAPH_SOURCES = ("oodgate/detectors/base.py", "oodgate/detectors/ops.py", "oodgate/exporter/export.py",
                 "oodgate/exporter/graph.py", "oodgate/models/split.py")
#: each method's own source files
METHOD_SOURCES = {
    "msp": ("msp.py",), "energy": ("energy.py",), "react": ("react.py",), "ash_p": ("ash.py",), "ash_s": ("ash.py",),
    "ash_b": ("ash.py",), "scale": ("scale.py",), "dice": ("dice.py", "clip.py"), "line": ("line.py", "clip.py"),
    "mos": ("mos.py", "mos_groups.py", "mos_train.py"), "adascale_a": ("adascale.py", "../exporter/gradient.py"),
    "adascale_l": ("adascale.py", "../exporter/gradient.py"),
}


def method_sources(method: str) -> list[str]:
    """The repository paths of a method's own source files."""
    return [str(Path("oodgate/detectors", f)).replace("detectors/../", "") for f in METHOD_SOURCES.get(method, ())]

SINGLE_PASS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line", "mos")
TWO_PASS = ("adascale_a", "adascale_l")
METHODS = SINGLE_PASS + TWO_PASS
MODELS = ("digits-cnn", "efficientnet-lite0", "resnet50-sized")


# -- threads and the machine -------------------------------------------------------------------------------------

def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads in PyTorch (ONNX Runtime sessions get the same number from ``ort_cpu``)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first inter-op parallel work
        torch.set_num_interop_threads(1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return math.nan


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"') + f" (kernel {platform.release()})"
    except OSError:
        pass
    return platform.platform()


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def gpu_present() -> str | None:
    """The NVIDIA GPU's name when one is visible (nvidia-smi), else None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, versions, date, commit and load: the facts every results table is stated with."""
    import onnx
    import onnxruntime
    import torch

    import oodgate

    try:
        import onnxscript
        onnxscript_version = onnxscript.__version__
    except ImportError:
        onnxscript_version = "not installed"
    return {
        "cpu": _cpu_model(), "logical_cores": os.cpu_count(), "ram_gib": round(_ram_gib(), 1), "os": _os_name(),
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__, "onnxscript": onnxscript_version, "numpy": np.__version__,
        "oodgate": oodgate.__version__, "commit": _git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(v, 2) for v in os.getloadavg()], "gpu": gpu_present(),
        "ort_providers": onnxruntime.get_available_providers(),
    }


# -- timing ------------------------------------------------------------------------------------------------------

def time_interleaved(variants: dict[str, Callable[[], Any]], *, reps: int, block_s: float = 0.05,
                     warmup: int = 2) -> dict[str, np.ndarray]:
    """Seconds per call of each variant in each of ``reps`` repetitions, the variants called in turn.

    Each variant is warmed up (one call when a call takes longer than ``block_s``, else ``warmup`` calls), then
    timed in blocks of ``number`` calls (``number`` chosen so that a block takes about ``block_s``; 1 for slow
    calls). Within a repetition every variant runs one block; the starting variant rotates from one repetition to
    the next.
    """
    names = list(variants)
    number = {}
    for name in names:
        fn = variants[name]
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
        if once < block_s:
            for _ in range(warmup - 1):
                fn()
            t0 = time.perf_counter()
            fn()
            once = time.perf_counter() - t0
        number[name] = max(1, min(1000, int(block_s / max(once, 1e-7))))
    out = {name: np.zeros(reps) for name in names}
    for r in range(reps):
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            fn, n = variants[name], number[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out[name][r] = (time.perf_counter() - t0) / n
    return out


@dataclass(frozen=True)
class Stat:
    """Median and interquartile range of repeated measurements (or of per-repetition ratios)."""

    median: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> "Stat":
        v = np.asarray(values, dtype=np.float64)
        return cls(float(np.median(v)), float(np.percentile(v, 25)), float(np.percentile(v, 75)), int(v.size))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "n": self.n}


def ratio(num: np.ndarray, den: np.ndarray) -> Stat:
    """Per-repetition ratios num/den (paired: both measured in the same repetition), summarised."""
    return Stat.of(np.asarray(num) / np.asarray(den))


def fmt_ratio(s: Stat, digits: int = 2) -> str:
    return f"{s.median:.{digits}f}× [{s.q1:.{digits}f}–{s.q3:.{digits}f}]"


def fmt_time(seconds: float) -> str:
    """A time in the unit that keeps 3 significant digits readable."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_stat_time(s: Stat) -> str:
    return f"{fmt_time(s.median)} [{fmt_time(s.q1)}–{fmt_time(s.q3)}]"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Section:
    """One question's results: markdown for BENCHMARKS.md, raw numbers, and the targets it missed."""

    key: str
    title: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        return f"## {self.title}\n\n{self.body.strip()}\n"


def results_path(key: str) -> Path:
    return CACHE / "results" / f"{key}.json"


def save_results(section: Section) -> Path:
    """Write the section (markdown, raw numbers, what was built) to bench/.cache/results/<key>.json; run_all.py
    assembles docs/BENCHMARKS.md from these files (they are not committed)."""
    path = results_path(section.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_text(path, json.dumps({"key": section.key, "title": section.title, "body": section.body,
                                        "seconds": section.seconds, "misses": section.misses, "built": BUILT,
                                        "data": section.data}, indent=1, default=str))
    return path


def load_results(key: str) -> tuple[Section, dict[str, Any]]:
    """The Section saved by ``save_results`` and what its process built."""
    raw = json.loads(results_path(key).read_text())
    return (Section(raw["key"], raw["title"], raw["body"], raw["data"], raw["misses"], raw["seconds"]),
            raw.get("built", {}))


#: what this process had to build (a cold cache costs exports; run_all reports it)
BUILT = {"exports": 0, "export_seconds": 0.0, "calibrations": 0, "calibration_seconds": 0.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stopwatch(what: str, kind: str | None = None) -> Iterator[None]:
    """Log how long the block took; ``kind`` 'export' / 'calibration' also counts it in BUILT."""
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    if kind:
        BUILT[f"{kind}s"] += 1
        BUILT[f"{kind}_seconds"] += seconds
    log(f"{what}: {seconds:.1f} s")


# -- cache keys --------------------------------------------------------------------------------------------------

def source_hash(paths: Sequence[str]) -> str:
    """sha256 over the .py files under ``paths`` (relative to the repository root), in sorted order."""
    digest = hashlib.sha256()
    for rel in paths:
        p = ROOT / rel
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            digest.update(str(f.relative_to(ROOT)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _versions_key() -> list[str]:
    import onnx
    import torch

    try:
        import onnxscript
        osv = onnxscript.__version__
    except ImportError:
        osv = "-"
    return [torch.__version__, onnx.__version__, osv]


# -- the models ---------------------------------------------------------------------------------------------------

@dataclass
class BenchModel:
    """A classifier set up for the benchmarks: the model, its split, preprocessing, ID data and timing inputs."""

    name: str
    label: str
    model: Any  # torch.nn.Module
    split: Any  # oodgate SplitModel
    preprocess: Any  # oodgate Preprocess
    id_set: Any  # ImageSet with labels (true ones for digits; the model's own predictions for photo crops)
    data_spec: str
    timing_images: np.ndarray  # preprocessed float32 (M, C, H, W)
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.timing_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.split.num_classes)

    @property
    def num_features(self) -> int:
        return int(self.split.num_features)

    def inputs(self, batch: int) -> np.ndarray:
        """A contiguous float32 batch of real preprocessed images (repeated when the batch is larger)."""
        m = len(self.timing_images)
        idx = np.arange(batch) % m
        return np.ascontiguousarray(self.timing_images[idx])


def _pseudo_labelled(images: Any, split: Any, preprocess: Any, name: str) -> Any:
    """The images labelled with the model's own predictions (MOS needs labels; photo crops have none)."""
    import torch

    from oodgate.data.sets import ImageSet

    preds = []
    with torch.no_grad():
        for x, _ in images.batches(preprocess, 16):
            preds.append(split(torch.from_numpy(x)).argmax(1).numpy())
    return ImageSet(name, images.images, np.concatenate(preds).astype(np.int64))


def _photo_sets(n_fit: int, n_timing: int) -> tuple[Any, Any]:
    from oodgate.data import ood_set

    fit = ood_set("photos", n_fit, size=(224, 224), channels="RGB", seed=0)
    timing = ood_set("photos", n_timing, size=(224, 224), channels="RGB", seed=1)
    return fit, timing


IMAGENET_MOS = {"groups": "imagenet-taxonomy", "steps": 200}


def load_bench_model(name: str, *, n_fit: int = 40) -> BenchModel:
    """One of MODELS, with its calibration data and timing inputs."""
    import torch

    from oodgate.data import Preprocess, digits
    from oodgate.models import load_model, split_classifier

    if name == "digits-cnn":
        bundle = load_model("digits-cnn")
        split = split_classifier(bundle.model)
        test = digits("test")
        x = np.concatenate([b for b, _ in test.batches(bundle.preprocess, 256)])
        return BenchModel(name, "digits CNN (1×16×16, D=64, C=10)", bundle.model, split, bundle.preprocess,
                          digits("calib"), "digits:calib", x)
    if name == "efficientnet-lite0":
        bundle = load_model("efficientnet-lite0")
        split = split_classifier(bundle.model)
        fit, timing = _photo_sets(n_fit, 32)
        x = np.concatenate([b for b, _ in timing.batches(bundle.preprocess, 32)])
        id_set = _pseudo_labelled(fit, split, bundle.preprocess, "photos-224")
        return BenchModel(name, "EfficientNet-Lite0 (3×224×224, D=1280, C=1000)", bundle.model, split,
                          bundle.preprocess, id_set, f"photos-224:{n_fit}:seed0", x, {"mos": dict(IMAGENET_MOS)})
    if name == "resnet50-sized":
        from resnet import calibrate_batch_norm, resnet50_sized

        pre = Preprocess(channels="RGB", resize=256, crop=(224, 224), mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225))
        fit, timing = _photo_sets(n_fit, 32)
        weights = CACHE / "models" / f"resnet50-sized-{key_of(SETUP_VERSION, source_hash(['bench/resnet.py']))}.pt"
        model = resnet50_sized(seed=0)
        if weights.is_file():
            model.load_state_dict(torch.load(weights, weights_only=True))
        else:
            from oodgate.data import ood_set

            bn_images = ood_set("photos", 16, size=(224, 224), channels="RGB", seed=2)
            calibrate_batch_norm(model, torch.from_numpy(next(bn_images.batches(pre, 16))[0]))
            weights.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), weights)
        model.eval()
        split = split_classifier(model)
        x = np.concatenate([b for b, _ in timing.batches(pre, 32)])
        id_set = _pseudo_labelled(fit, split, pre, "photos-224")
        return BenchModel(name, "ResNet-50-sized CNN, random weights (3×224×224, D=2048, C=1000)", model, split, pre,
                          id_set, f"photos-224:{n_fit}:seed0", x, {"mos": dict(IMAGENET_MOS)})
    raise ValueError(f"unknown benchmark model {name!r}: use one of {MODELS}")


# -- calibrations and graphs (cached) ----------------------------------------------------------------------------

def calibration(bm: BenchModel, method: str) -> Any:
    """The method calibrated on the model's ID set (threshold at TPR 95 % on a 25 % hold-out), cached on disk."""
    from oodgate import OodgateError, calibrate, load_calibration

    params = bm.method_params.get(method, {})
    key = key_of(SETUP_VERSION, bm.name, method, params, bm.data_spec,
                 source_hash([*CALIBRATION_SOURCES, *method_sources(method)]))
    path = CACHE / "calibrations" / bm.name / f"{method}-{key}.oodcal"
    if path.is_file():
        try:
            cal = load_calibration(path)
        except OodgateError as exc:  # e.g. a newer calibration file format: calibrate again
            log(f"cached calibration {path.name} unreadable ({exc}); calibrating again")
        else:
            cal._model = bm.split
            return cal
    with stopwatch(f"calibrate {bm.name} {method}", "calibration"):
        cal = calibrate(bm.model, bm.id_set, method=method, holdout=0.25, preprocess=bm.preprocess, batch_size=16,
                        progress=False, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    cal.save(path, overwrite=True)
    return cal


def cached_file(path: Path, what: str, write: Callable[[Path], Any], kind: str | None = "export") -> Path:
    """``path`` when it is cached; else ``write(tmp)`` under a stopwatch (counted as ``kind`` in BUILT) and the
    temporary file renamed into place: two benchmark processes building the same file never see half of it."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
    try:
        with stopwatch(what, kind):
            write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def quiet_onnx_export(module: Any, args: tuple, path: Path, *, input_names: Sequence[str],
                      output_names: Sequence[str], optimize: bool = True) -> None:
    """torch.onnx.export as oodgate exports its graphs (dynamo, opset 18, dynamic batch on every input), chatter
    silenced, saved to ``path``."""
    import logging
    import warnings

    import torch

    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=18, input_names=list(input_names),
                                    output_names=list(output_names),
                                    dynamic_shapes=tuple({0: batch} for _ in input_names), verbose=False,
                                    optimize=optimize)
    program.save(str(path))


def run_json_child(cmd: Sequence[str], what: str) -> dict:
    """Run a child process whose last line of output is JSON, and return that (a clear error if it failed)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def graph_path(bm: BenchModel, method: str) -> Path:
    """The exported oodgate graph of (model, method): oodgate.export of the cached calibration, cached."""
    from oodgate.exporter import export

    cal = calibration(bm, method)
    key = key_of(cal.checksum(), source_hash([*GRAPH_SOURCES, *method_sources(method)]), _versions_key())
    return cached_file(CACHE / "graphs" / bm.name / f"{method}-{key}.onnx", f"export {bm.name} {method}",
                       lambda tmp: export(cal, tmp, model=bm.model, overwrite=True))


def bare_graph_path(bm: BenchModel) -> Path:
    """The bare classifier (backbone + its Linear, logits only) exported exactly as oodgate exports its graphs:
    ``oodgate.exporter.export_onnx`` (torch.onnx dynamo, opset 18, dynamic batch, optimize=True)."""
    import torch

    from oodgate.exporter import export_onnx
    from oodgate.runtime.metadata import INPUT_NAME, OUTPUT_NAMES

    key = key_of(model_digest(bm), bm.input_shape, source_hash(["oodgate/exporter/onnx_export.py"]), _versions_key())
    example = torch.randn((2, *bm.input_shape), generator=torch.Generator().manual_seed(1234))
    return cached_file(CACHE / "graphs" / bm.name / f"bare-{key}.onnx", f"export {bm.name} bare classifier",
                       lambda tmp: export_onnx(bm.split.eval(), example, opset=18, input_names=[INPUT_NAME],
                                               output_names=list(OUTPUT_NAMES)).save(str(tmp)))


def ort_cpu(path: Path | str, threads: int) -> Any:
    """An ONNX Runtime CPU session made by oodgate's own ``ort_session`` (the settings users get)."""
    from oodgate.runtime.session import ort_session

    return ort_session(str(path), ["CPUExecutionProvider"], threads=threads)


def ort_runner(sess: Any, x: np.ndarray) -> Callable[[], Any]:
    """A no-argument callable running the session on x (all outputs, as Session.run_array does)."""
    name = sess.get_inputs()[0].name
    outputs = [o.name for o in sess.get_outputs()]
    feeds = {name: x}
    return lambda: sess.run(outputs, feeds)


def eager_runner(bm: BenchModel, cal: Any, x: np.ndarray) -> Callable[[], Any]:
    """The PyTorch-eager reference of the same detector on x: backbone + head under no_grad (single pass);
    AdaSCALE's reference (autograd input gradient, stable sort, second forward)."""
    import torch

    from oodgate.exporter.graph import build_graph_module

    xt = torch.from_numpy(x)
    det = cal.detector
    if getattr(det, "needs_backbone", False):
        split = bm.split
        return lambda: det.reference(split, xt)
    module = build_graph_module(cal, bm.split).eval()

    def run() -> Any:
        with torch.no_grad():
            return module(xt)

    return run


def eager_floor_runner(bm: BenchModel, x: np.ndarray, eps: float = 0.5) -> Callable[[], Any]:
    """AdaSCALE's floor in PyTorch eager: forward, backward of the predicted-class logit to the input, and a
    second forward of the perturbed input (no selection, no head)."""
    import torch

    split = bm.split
    xt = torch.from_numpy(x)

    def run() -> Any:
        xg = xt.detach().requires_grad_(True)
        z = split.head(split.backbone(xg))
        picked = z.gather(1, z.detach().argmax(dim=1, keepdim=True)).sum()
        (g,) = torch.autograd.grad(picked, xg)
        with torch.no_grad():
            return split.backbone(xt + eps * torch.sign(g))

    return run


def write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def script_main(run: Callable[[Any], "Section"], doc: str | None) -> None:
    """A question's script run alone: parse the common arguments, run, save the results, print the section."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(parser)
    sec = run(parser.parse_args())
    save_results(sec)
    print(sec.markdown())


def model_digest(bm: BenchModel) -> str:
    """sha256 over the classifier's state (names and values): part of the cache key of graphs traced from it."""
    digest = hashlib.sha256()
    for k, v in bm.split.state_dict().items():
        digest.update(k.encode())
        digest.update(v.detach().numpy().tobytes())
    return digest.hexdigest()


def common_args(parser: Any, *, default_threads: int = 1) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer models, batches and repetitions (a smoke run)")
    parser.add_argument("--threads", type=int, default=default_threads,
                        help="intra-op threads for PyTorch and ONNX Runtime alike (default 1: with 2, a busy neighbour "
                             "on the other core stalls every parallel section; measured A/A spreads of 0.5-1.4x)")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {', '.join(MODELS)}")


def chosen_models(args: Any, quick_default: Sequence[str] = ("digits-cnn", "efficientnet-lite0")) -> list[str]:
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in names if m not in MODELS]
        if bad:
            raise SystemExit(f"unknown model(s) {bad}: use {', '.join(MODELS)}")
        return names
    return list(quick_default) if args.quick else list(MODELS)


_MODEL_CACHE: dict[str, BenchModel] = {}


def bench_model(name: str) -> BenchModel:
    """load_bench_model, once per process (run_all shares the models between questions)."""
    if name not in _MODEL_CACHE:
        with stopwatch(f"load {name}"):
            _MODEL_CACHE[name] = load_bench_model(name)
    return _MODEL_CACHE[name]
