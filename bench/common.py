"""What the speed benchmarks share: threads, the machine, interleaved timing and its statistics, the three models,
their cached calibrations and graphs, and the small run/report plumbing of one question.

Every figure is a ratio of times measured in one run: the compared variants are called in turn (rotating order)
within each repetition and a ratio is taken per repetition, so load from other processes on a shared machine hits
both sides alike. Tables give the median over repetitions and the interquartile range [q1-q3]. Graphs and
calibrations are cached under ``bench/.cache/`` (gitignored), keyed by their inputs and a hash of the sources that
make them; a cold cache costs the exports, later runs only time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
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
CACHE = Path(os.environ.get("OODGATE_BENCH_CACHE", BENCH / ".cache"))  # tests point it at a temporary folder
for _p in (ROOT, BENCH):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

#: bump when the set-up below (data, parameters, model weights) changes, to invalidate cached calibrations
SETUP_VERSION = 2
#: sources whose edits can change any calibration / any graph (hashed into cache keys with the method's own file)
LIBRARY_SOURCES = ("oodgate/detectors/base.py", "oodgate/detectors/ops.py", "oodgate/calibration", "oodgate/exporter",
                   "oodgate/models", "oodgate/data/preprocess.py", "bench/resnet.py")
METHOD_FILES = {"ash_p": "ash", "ash_s": "ash", "ash_b": "ash", "adascale_a": "adascale", "adascale_l": "adascale"}
SINGLE_PASS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line", "mos")
TWO_PASS = ("adascale_a", "adascale_l")
METHODS = SINGLE_PASS + TWO_PASS
MODELS = ("digits-cnn", "efficientnet-lite0", "resnet50-sized")
#: whole graphs exported per model. A 224x224 graph takes a minute or more to export on a loaded 2-core CPU, so
#: there the cheapest head (Energy), the costliest (LINe) and AdaSCALE-A stand for the rest; every single-pass head
#: is still timed alone at the model's shape (question 1's head-only estimates)
GRAPHS = {"digits-cnn": METHODS,
          "efficientnet-lite0": ("energy", "line", "adascale_a"),
          "resnet50-sized": ("energy", "line", "adascale_a")}


def method_sources(method: str) -> list[str]:
    """The repository paths of a method's own source files (AdaSCALE's include its gradient tracer)."""
    base = METHOD_FILES.get(method, method)
    extra = ["oodgate/detectors/clip.py"] if method in ("dice", "line", "react") else []
    if base == "adascale":
        extra.append("oodgate/detectors/gradient.py")
    if base == "mos":
        extra += ["oodgate/detectors/mos_groups.py", "oodgate/detectors/mos_train.py"]
    return [p for p in [f"oodgate/detectors/{base}.py", *extra] if (ROOT / p).exists()]


# -- threads and the machine -------------------------------------------------------------------------------------

def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads in PyTorch (ONNX Runtime sessions get the same number from ``ort_cpu``)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first inter-op parallel work
        torch.set_num_interop_threads(1)


def _first_line(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(prefix, 1)[1].lstrip(" :=\t").strip('"')
    return None


def cpu_name() -> str:
    return _first_line("/proc/cpuinfo", "model name") or platform.processor() or "unknown"


def _run(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def gpu_present() -> str | None:
    """The NVIDIA GPU's name when one is visible (nvidia-smi), else None."""
    out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return out.splitlines()[0] if out else None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, versions, date, commit and load: the facts every results table is stated with."""
    import onnx
    import onnxruntime
    import torch

    import oodgate

    try:
        import onnxscript
        osv = onnxscript.__version__
    except ImportError:
        osv = "not installed"
    mem = _first_line("/proc/meminfo", "MemTotal")
    commit = _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    if _run(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " + uncommitted changes"
    return {
        "cpu": cpu_name(), "logical_cores": os.cpu_count(),
        "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "os": f"{_first_line('/etc/os-release', 'PRETTY_NAME=') or platform.platform()} (kernel {platform.release()})",
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__, "onnxscript": osv, "numpy": np.__version__, "oodgate": oodgate.__version__,
        "commit": commit, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(v, 2) for v in os.getloadavg()], "gpu": gpu_present(),
    }


# -- timing and statistics ---------------------------------------------------------------------------------------

def time_interleaved(variants: dict[str, Callable[[], Any]], *, reps: int, block_s: float = 0.05,
                     warmup: int = 2) -> dict[str, np.ndarray]:
    """Seconds per call of each variant in each of ``reps`` repetitions, the variants called in turn.

    Each variant is warmed up (one call when a call takes longer than ``block_s``, else ``warmup`` calls), then
    timed in blocks of ``number`` calls (chosen so that a block takes about ``block_s``; 1 for slow calls). Within a
    repetition every variant runs one block; the starting variant rotates from one repetition to the next.
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


def fmt_ratio(s: Stat | dict, digits: int = 2) -> str:
    d = s.as_dict() if isinstance(s, Stat) else s
    return f"{d['median']:.{digits}f}× [{d['q1']:.{digits}f}–{d['q3']:.{digits}f}]"


def fmt_time(seconds: float) -> str:
    """A time in the unit that keeps 3 significant digits readable."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_stat_time(s: Stat) -> str:
    return f"{fmt_time(s.median)} [{fmt_time(s.q1)}–{fmt_time(s.q3)}]"


def verdict(ok: bool | None) -> str:
    return "met" if ok else ("not resolved" if ok is None else "**missed**")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# -- one question's results --------------------------------------------------------------------------------------

@dataclass
class Section:
    """One question's results: markdown for BENCHMARKS.md, raw numbers, its target rows and notes from the data."""

    key: str
    title: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)
    #: [target, result, met (True/False/None = not resolved)] rows for the report's targets table
    targets: list[list[Any]] = field(default_factory=list)
    #: sentences computed from this run's numbers (what the numbers say, what was missed and by how much)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        notes = "\n\n".join(self.notes)
        return f"## {self.title}\n\n{self.body.strip()}\n" + (f"\n{notes}\n" if notes else "")


def results_path(key: str) -> Path:
    return CACHE / "results" / f"{key}.json"


def save_results(section: Section) -> Path:
    """bench/.cache/results/<key>.json: run_all.py assembles docs/BENCHMARKS.md from these (not committed)."""
    path = results_path(section.key)
    write_text(path, json.dumps({**section.__dict__, "built": BUILT}, indent=1, default=str))
    return path


def load_results(key: str) -> tuple[Section, dict[str, Any]]:
    raw = json.loads(results_path(key).read_text())
    built = raw.pop("built", {})
    return Section(**raw), built


def write_text(path: Path, text: str) -> None:
    """Write through oodgate's atomic writer (a temporary file in the folder, renamed into place)."""
    from oodgate.files import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), overwrite=True)


def write_marked_block(path: Path, begin: str, end: str, text: str) -> None:
    """Replace the text between the markers ``begin``/``end`` in ``path`` (appended when absent), atomically."""
    doc = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + ("\n\n" if doc else "") + block + "\n"
    write_text(path, doc)


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


def script_main(run: Callable[[argparse.Namespace], Section], doc: str | None,
                extra: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """A question's script run alone: parse the common arguments, run, save the results, print the section."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer models, batches and repetitions (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {', '.join(MODELS)}")
    if extra:
        extra(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    t0 = time.perf_counter()
    sec = run(args)
    sec.seconds = time.perf_counter() - t0
    save_results(sec)
    print(sec.markdown())


def chosen_models(args: argparse.Namespace, quick: Sequence[str] = ("digits-cnn", "efficientnet-lite0")) -> list[str]:
    if getattr(args, "models", None):
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        bad = [m for m in names if m not in MODELS]
        if bad:
            raise SystemExit(f"unknown model(s) {bad}: use {', '.join(MODELS)}")
        return names
    return list(quick) if args.quick else list(MODELS)


# -- memory of one call in a fresh process -------------------------------------------------------------------------

def rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in KiB, from /proc/self/status."""
    return (int((_first_line("/proc/self/status", "VmRSS") or "0 kB").split()[0]),
            int((_first_line("/proc/self/status", "VmHWM") or "0 kB").split()[0]))


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Peak resident memory (MiB) that the block adds above what was resident before it (Linux: VmHWM reset)."""
    out: dict[str, float] = {}
    try:
        Path("/proc/self/clear_refs").write_text("5")
        out["reset"] = 1.0
    except OSError:
        out["reset"] = 0.0
    before, _ = rss_kib()
    yield out
    out["peak_mib"] = max(0, rss_kib()[1] - before) / 1024


def run_json_child(code: str, what: str) -> dict:
    """Run Python ``code`` in a fresh process (bench/ on its path); its last output line is JSON, returned."""
    proc = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); {code}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- cache --------------------------------------------------------------------------------------------------------

def source_hash(paths: Sequence[str]) -> str:
    """sha256 over the .py files under ``paths`` (relative to the repository root), in sorted order."""
    digest = hashlib.sha256()
    for rel in paths:
        p = ROOT / rel
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.exists() else []:
            digest.update(str(f.relative_to(ROOT)).encode() + f.read_bytes())
    return digest.hexdigest()


def key_of(*parts: Any) -> str:
    import onnx
    import torch

    versions = [torch.__version__, onnx.__version__]
    return hashlib.sha256(json.dumps([parts, versions], sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_file(path: Path, what: str, write: Callable[[Path], Any], kind: str | None = "export") -> Path:
    """``path`` when cached; else ``write(tmp)`` under a stopwatch (counted as ``kind``) and published atomically by
    oodgate's writer: two benchmark processes building the same file never see half of it."""
    from oodgate.files import atomic_output

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with stopwatch(what, kind), atomic_output(path, overwrite=True) as tmp:
        write(Path(tmp))
    return path


def export_graph(module: Any, example: tuple, path: Path, *, input_names: Sequence[str],
                 output_names: Sequence[str], optimize: bool = True) -> None:
    """Export ``module`` with oodgate's own ONNX export helper (the one export() uses) and save it."""
    from oodgate.exporter.onnx_export import export_onnx

    export_onnx(module, example, input_names=input_names, output_names=output_names,
                optimize=optimize).save(str(path))


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
        return np.ascontiguousarray(self.timing_images[np.arange(batch) % len(self.timing_images)])

    def digest(self) -> str:
        """sha256 over the classifier's state: part of the cache key of graphs traced from it."""
        h = hashlib.sha256()
        for k, v in self.split.state_dict().items():
            h.update(k.encode() + v.detach().numpy().tobytes())
        return h.hexdigest()


def _photo_model(name: str, label: str, model: Any, pre: Any, n_fit: int) -> BenchModel:
    """A 224x224 model with scikit-image photo crops as ID data, labelled with the model's own predictions."""
    import torch

    from oodgate.data import ood_set
    from oodgate.data.sets import ImageSet
    from oodgate.models import split_classifier

    split = split_classifier(model)
    fit = ood_set("photos", n_fit, size=(224, 224), channels="RGB", seed=0)
    timing = ood_set("photos", 32, size=(224, 224), channels="RGB", seed=1)
    with torch.no_grad():
        preds = np.concatenate([split(torch.from_numpy(x)).argmax(1).numpy() for x, _ in fit.batches(pre, 16)])
    x = np.concatenate([b for b, _ in timing.batches(pre, 32)])
    return BenchModel(name, label, model, split, pre, ImageSet("photos-224", fit.images, preds.astype(np.int64)),
                      f"photos-224:{n_fit}:seed0", x, {"mos": {"groups": "imagenet-taxonomy", "steps": 200}})


def load_bench_model(name: str, *, n_fit: int = 40) -> BenchModel:
    """One of MODELS, with its calibration data and timing inputs."""
    import torch

    from oodgate.data import Preprocess, digits
    from oodgate.models import load_model, split_classifier

    if name == "digits-cnn":
        bundle = load_model("digits-cnn")
        x = np.concatenate([b for b, _ in digits("test").batches(bundle.preprocess, 256)])
        return BenchModel(name, "digits CNN (1×16×16, D=64, C=10)", bundle.model, split_classifier(bundle.model),
                          bundle.preprocess, digits("calib"), "digits:calib", x)
    if name == "efficientnet-lite0":
        bundle = load_model("efficientnet-lite0")
        return _photo_model(name, "EfficientNet-Lite0 (3×224×224, D=1280, C=1000)", bundle.model, bundle.preprocess,
                            n_fit)
    if name == "resnet50-sized":
        from oodgate.data import ood_set
        from resnet import calibrate_batch_norm, resnet50_sized

        pre = Preprocess(channels="RGB", resize=256, crop=(224, 224), mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225))
        weights = CACHE / "models" / f"resnet50-sized-{key_of(SETUP_VERSION, source_hash(['bench/resnet.py']))}.pt"
        model = resnet50_sized(seed=0)
        if weights.is_file():
            model.load_state_dict(torch.load(weights, weights_only=True))
        else:
            bn_images = ood_set("photos", 16, size=(224, 224), channels="RGB", seed=2)
            calibrate_batch_norm(model, torch.from_numpy(next(bn_images.batches(pre, 16))[0]))
            weights.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), weights)
        return _photo_model(name, "ResNet-50-sized CNN, random weights (3×224×224, D=2048, C=1000)", model.eval(),
                            pre, n_fit)
    raise ValueError(f"unknown benchmark model {name!r}: use one of {MODELS}")


_MODELS: dict[str, BenchModel] = {}


def bench_model(name: str) -> BenchModel:
    """load_bench_model, once per process."""
    if name not in _MODELS:
        with stopwatch(f"load {name}"):
            _MODELS[name] = load_bench_model(name)
    return _MODELS[name]


# -- calibrations, graphs and runners (cached) ---------------------------------------------------------------------

def calibration(bm: BenchModel, method: str) -> Any:
    """The method calibrated on the model's ID set (threshold at TPR 95 % on a 25 % hold-out), cached on disk."""
    from oodgate import OodgateError, calibrate, load_calibration

    params = bm.method_params.get(method, {})
    key = key_of(SETUP_VERSION, bm.name, method, params, bm.data_spec,
                 source_hash([*LIBRARY_SOURCES, *method_sources(method)]))
    path = CACHE / "calibrations" / bm.name / f"{method}-{key}.oodcal"
    if path.is_file():
        with contextlib.suppress(OodgateError):  # e.g. a newer file format: calibrate again
            return load_calibration(path)
    with stopwatch(f"calibrate {bm.name} {method}", "calibration"):
        cal = calibrate(bm.model, bm.id_set, method=method, holdout=0.25, preprocess=bm.preprocess, batch_size=16,
                        progress=False, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    cal.save(path, overwrite=True)
    return cal


def graph_path(bm: BenchModel, method: str) -> Path:
    """The exported oodgate graph of (model, method): oodgate.export of the cached calibration, cached."""
    from oodgate.exporter import export

    cal = calibration(bm, method)
    key = key_of(cal.checksum(), source_hash([*LIBRARY_SOURCES, *method_sources(method)]))
    return cached_file(CACHE / "graphs" / bm.name / f"{method}-{key}.onnx", f"export {bm.name} {method}",
                       lambda tmp: export(cal, tmp, model=bm.model, overwrite=True))


def bare_graph_path(bm: BenchModel) -> Path:
    """The bare classifier (backbone + its Linear, logits only) exported with oodgate's export helper."""
    import torch

    key = key_of(bm.digest(), bm.input_shape, source_hash(["oodgate/exporter"]))
    example = torch.randn((2, *bm.input_shape), generator=torch.Generator().manual_seed(1234))
    return cached_file(CACHE / "graphs" / bm.name / f"bare-{key}.onnx", f"export {bm.name} bare classifier",
                       lambda tmp: export_graph(bm.split.eval(), (example,), tmp, input_names=["input"],
                                                output_names=["logits"]))


def ort_cpu(path: Path | str, threads: int) -> Any:
    """An ONNX Runtime CPU session as oodgate's Session makes it (the settings users get)."""
    from oodgate.runtime.session import ort_session

    return ort_session(str(path), ["CPUExecutionProvider"], threads=threads)


def ort_runner(sess: Any, x: np.ndarray | dict[str, np.ndarray]) -> Callable[[], Any]:
    """A no-argument callable running the session on x (or on a feed dict), all outputs."""
    feeds = x if isinstance(x, dict) else {sess.get_inputs()[0].name: x}
    outputs = [o.name for o in sess.get_outputs()]
    return lambda: sess.run(outputs, feeds)


def eager_runner(bm: BenchModel, cal: Any, x: np.ndarray) -> Callable[[], Any]:
    """The PyTorch-eager reference of the calibrated detector on x: oodgate's graph module (backbone + head) under
    no_grad for the single-pass detectors, the autograd reference for AdaSCALE (what a PyTorch user runs)."""
    import torch

    from oodgate.exporter.graph import build_graph_module

    xt = torch.from_numpy(x)
    if cal.method.startswith("adascale"):
        return lambda: cal.detector.reference(bm.split, xt)
    module = build_graph_module(cal, bm.split).eval()

    def run() -> Any:
        with torch.no_grad():
            return module(xt)

    return run


def eager_floor_runner(bm: BenchModel, x: np.ndarray, eps: float = 0.5) -> Callable[[], Any]:
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
