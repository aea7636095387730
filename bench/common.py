"""What the speed benchmarks share: the machine, interleaved timing and its statistics, the three models with their
cached calibrations and graphs, and the run/report plumbing of one question.

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
from dataclasses import asdict, dataclass, field
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
#: sources whose edits can change any calibration / any graph (hashed into cache keys with the method's own files)
LIBRARY_SOURCES = ("oodgate/detectors/base.py", "oodgate/detectors/ops.py", "oodgate/calibration", "oodgate/exporter",
                   "oodgate/models", "oodgate/data/preprocess.py", "bench/resnet.py")
METHOD_FILES = {"ash_p": "ash", "ash_s": "ash", "ash_b": "ash", "adascale_a": "adascale", "adascale_l": "adascale"}
EXTRA_FILES = {"dice": ("clip",), "line": ("clip",), "react": ("clip",), "adascale": ("gradient",),
               "mos": ("mos_groups", "mos_train")}
SINGLE_PASS = ("msp", "energy", "react", "ash_p", "ash_s", "ash_b", "scale", "dice", "line", "mos")
METHODS = SINGLE_PASS + ("adascale_a", "adascale_l")
MODELS = ("digits-cnn", "efficientnet-lite0", "resnet50-sized")
#: whole graphs exported per model. A 224x224 graph takes a minute or more to export on a loaded 2-core CPU, so
#: there the cheapest head (Energy), the costliest (LINe) and AdaSCALE-A stand for the rest; every single-pass head
#: is still timed alone at the model's shape (question 1's head-only estimates)
GRAPHS = {"digits-cnn": METHODS, "efficientnet-lite0": ("energy", "line", "adascale_a"),
          "resnet50-sized": ("energy", "line", "adascale_a")}


def method_sources(method: str) -> list[str]:
    """The repository paths of a method's own source files (AdaSCALE's include its gradient tracer)."""
    base = METHOD_FILES.get(method, method)
    paths = [f"oodgate/detectors/{name}.py" for name in (base, *EXTRA_FILES.get(base, ()))]
    return [p for p in paths if (ROOT / p).exists()]


# -- the machine ----------------------------------------------------------------------------------------------------

def _field(path: str, prefix: str) -> str | None:
    """The value of the first line of ``path`` that starts with ``prefix`` (/proc, /etc files)."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(prefix, 1)[1].lstrip(" :=\t").strip('"')
    return None


def cpu_name() -> str:
    return _field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"


def _output(*cmd: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    return None


def machine_info() -> dict[str, Any]:
    """The facts every results table is stated with (label: value): CPU, RAM, OS, versions, commit, date, GPU, load."""
    import onnx
    import onnxruntime
    import torch

    import oodgate

    try:
        import onnxscript
        osv = onnxscript.__version__
    except ImportError:
        osv = "not installed"
    mem = _field("/proc/meminfo", "MemTotal")
    commit = _output("git", "rev-parse", "--short", "HEAD") or "unknown"
    if _output("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " + uncommitted changes"
    gpu = _output("nvidia-smi", "--query-gpu=name", "--format=csv,noheader")
    return {"CPU": f"{cpu_name()}, {os.cpu_count()} logical cores",
            "RAM": f"{round(int(mem.split()[0]) / 2**20, 1) if mem else '?'} GiB",
            "OS": f"{_field('/etc/os-release', 'PRETTY_NAME=') or platform.platform()} (kernel {platform.release()})",
            "Python / PyTorch / ONNX Runtime": f"{platform.python_version()} / {torch.__version__} / "
                                               f"{onnxruntime.__version__}",
            "onnx / onnxscript / NumPy": f"{onnx.__version__} / {osv} / {np.__version__}",
            "oodgate": f"{oodgate.__version__} (commit {commit})",
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "GPU": gpu.splitlines()[0] if gpu else "none", "load": " / ".join(f"{v:.2f}" for v in os.getloadavg())}


# -- timing and statistics -------------------------------------------------------------------------------------------

def time_interleaved(variants: dict[str, Callable[[], Any]], *, reps: int, block_s: float = 0.05, warmup: int = 2,
                     what: str | None = None) -> dict[str, np.ndarray]:
    """Seconds per call of each variant in each of ``reps`` repetitions, the variants called in turn.

    Each variant is warmed up (one call when a call takes longer than ``block_s``, else ``warmup`` calls), then
    timed in blocks of ``number`` calls (chosen so that a block takes about ``block_s``; 1 for slow calls). Within a
    repetition every variant runs one block; the starting variant rotates from one repetition to the next.
    """
    if what:
        log(f"{what}, {len(variants)} variants x {reps} reps")
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
        return asdict(self)


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
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} µs"


def fmt_stat_time(s: Stat) -> str:
    return f"{fmt_time(s.median)} [{fmt_time(s.q1)}–{fmt_time(s.q3)}]"


def verdict(ok: bool | None) -> str:
    return "met" if ok else ("not resolved" if ok is None else "**missed**")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# -- one question's results, its script, its logging ----------------------------------------------------------------

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
    peak_gib: float = float("nan")  # peak resident memory of the question's process (or of one of its children)

    def markdown(self) -> str:
        notes = "\n\n".join(self.notes)
        return f"## {self.title}\n\n{self.body.strip()}\n" + (f"\n{notes}\n" if notes else "")

    def save(self) -> None:
        """bench/.cache/results/<key>.json: run_all.py assembles docs/BENCHMARKS.md from these (not committed)."""
        write_text(results_path(self.key), json.dumps({**asdict(self), "built": BUILT}, indent=1, default=str))

    @classmethod
    def load(cls, key: str) -> tuple["Section", dict[str, Any]]:
        """The saved section and what its process built."""
        raw = json.loads(results_path(key).read_text())
        built = raw.pop("built", {})
        return cls(**raw), built


def results_path(key: str) -> Path:
    return CACHE / "results" / f"{key}.json"


def write_text(path: Path, text: str) -> None:
    """Write through oodgate's atomic writer (a temporary file in the folder, renamed into place)."""
    from oodgate.files import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), overwrite=True)


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
                extra: Callable[[argparse.ArgumentParser], Any] | None = None) -> None:
    """A question's script run alone: parse the common arguments, run, save the results, print the section."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer models, batches and repetitions (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for PyTorch and ONNX Runtime")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {', '.join(MODELS)}")
    if extra:
        extra(parser)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first inter-op parallel work
        torch.set_num_interop_threads(1)
    t0 = time.perf_counter()
    sec = run(args)
    import resource  # the largest of this process and its children (export, memory and fit children)

    peak_kib = max(rss_kib()[1], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    sec.seconds, sec.peak_gib = time.perf_counter() - t0, peak_kib / 2**20
    sec.save()
    print(sec.markdown())


def chosen_models(args: argparse.Namespace, quick: Sequence[str] = MODELS[:2]) -> list[str]:
    if not getattr(args, "models", None):
        return list(quick) if args.quick else list(MODELS)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if bad := [m for m in names if m not in MODELS]:
        raise SystemExit(f"unknown model(s) {bad}: use {', '.join(MODELS)}")
    return names


# -- memory of one call in a fresh process ---------------------------------------------------------------------------

def rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in KiB, from /proc/self/status."""
    return tuple(int((_field("/proc/self/status", k) or "0 kB").split()[0]) for k in ("VmRSS", "VmHWM"))  # type: ignore


@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float]]:
    """Peak resident memory (MiB) that the block adds above what was resident before it (Linux: VmHWM reset)."""
    out: dict[str, float] = {"reset": 1.0}
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        out["reset"] = 0.0
    before = rss_kib()[0]
    yield out
    out["peak_mib"] = max(0, rss_kib()[1] - before) / 1024


def run_json_child(module: str, call: str, what: str) -> Any:
    """``module.call`` evaluated in a fresh process (bench/ on its path); its JSON result, printed last, returned."""
    code = f"import sys, json; sys.path.insert(0, {str(BENCH)!r}); import {module}; print(json.dumps({module}.{call}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- cache ----------------------------------------------------------------------------------------------------------

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


@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """Hold the build lock of ``path`` (fcntl): two benchmark processes that need the same file build it once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cached_file(path: Path, what: str, write: Callable[[Path], Any], kind: str | None = "export") -> Path:
    """``path`` when cached; else ``write(tmp)`` under a stopwatch (counted as ``kind``), published atomically by
    oodgate's writer, under the path's build lock."""
    from oodgate.files import atomic_output

    with building(path):
        if not path.is_file():
            with stopwatch(what, kind), atomic_output(path, overwrite=True) as tmp:
                write(Path(tmp))
    return path


# -- the models -----------------------------------------------------------------------------------------------------

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
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.timing_images.shape[1:])

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

    from oodgate.data import ImageSet, ood_set
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

    from oodgate.data import Preprocess, digits, ood_set
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
    if name != "resnet50-sized":
        raise ValueError(f"unknown benchmark model {name!r}: use one of {MODELS}")
    from resnet import calibrate_batch_norm, resnet50_sized

    pre = Preprocess(channels="RGB", resize=256, crop=(224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    weights = CACHE / "models" / f"resnet50-sized-{key_of(SETUP_VERSION, source_hash(['bench/resnet.py']))}.pt"
    model = resnet50_sized(seed=0)
    if weights.is_file():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        bn_images = ood_set("photos", 16, size=(224, 224), channels="RGB", seed=2)
        calibrate_batch_norm(model, torch.from_numpy(next(bn_images.batches(pre, 16))[0]))
        cached_file(weights, "resnet50-sized weights", lambda tmp: torch.save(model.state_dict(), tmp), None)
    return _photo_model(name, "ResNet-50-sized CNN, random weights (3×224×224, D=2048, C=1000)", model.eval(), pre,
                        n_fit)


_MODELS: dict[str, BenchModel] = {}


def bench_model(name: str) -> BenchModel:
    """load_bench_model, once per process."""
    if name not in _MODELS:
        with stopwatch(f"load {name}"):
            _MODELS[name] = load_bench_model(name)
    return _MODELS[name]


# -- calibrations, graphs and runners (cached) -----------------------------------------------------------------------

def calibration(bm: BenchModel, method: str) -> Any:
    """The method calibrated on the model's ID set (threshold at TPR 95 % on a 25 % hold-out), cached on disk."""
    from oodgate import OodgateError, calibrate, load_calibration

    params = bm.method_params.get(method, {})
    key = key_of(SETUP_VERSION, bm.name, method, params, bm.data_spec,
                 source_hash([*LIBRARY_SOURCES, *method_sources(method)]))
    path = CACHE / "calibrations" / bm.name / f"{method}-{key}.oodcal"
    with building(path):
        if path.is_file():
            with contextlib.suppress(OodgateError):  # e.g. a newer file format: calibrate again
                return load_calibration(path)
        with stopwatch(f"calibrate {bm.name} {method}", "calibration"):
            cal = calibrate(bm.model, bm.id_set, method=method, holdout=0.25, preprocess=bm.preprocess,
                            batch_size=16, progress=False, **params)
        cal.save(path, overwrite=True)
    return cal


def graph_path(bm: BenchModel, method: str) -> Path:
    """The exported oodgate graph of (model, method): oodgate.export of the cached calibration, cached."""
    from oodgate.exporter import export

    cal = calibration(bm, method)
    key = key_of(cal.checksum(), source_hash([*LIBRARY_SOURCES, *method_sources(method)]))
    return cached_file(CACHE / "graphs" / bm.name / f"{method}-{key}.onnx", f"export {bm.name} {method}",
                       lambda tmp: export(cal, tmp, model=bm.model, overwrite=True))


def example_input(bm: BenchModel, seed: int = 1234) -> Any:
    """A seeded random batch of 2 at the model's input shape: what the bench's own exports trace with."""
    import torch

    return torch.randn((2, *bm.input_shape), generator=torch.Generator().manual_seed(seed))


def bare_graph_path(bm: BenchModel) -> Path:
    """The bare classifier (backbone + its Linear, logits only) exported with oodgate's export call."""
    from oodgate.exporter import export_onnx

    key = key_of(bm.digest(), bm.input_shape, source_hash(["oodgate/exporter"]))
    return cached_file(CACHE / "graphs" / bm.name / f"bare-{key}.onnx", f"export {bm.name} bare classifier",
                       lambda tmp: export_onnx(bm.split.eval(), example_input(bm), input_names=["input"],
                                               output_names=["logits"]).save(str(tmp)))


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

    from oodgate.exporter import build_graph_module

    xt = torch.from_numpy(x)
    if cal.method.startswith("adascale"):
        return lambda: cal.detector.reference(bm.split, xt)
    module = build_graph_module(cal, bm.split).eval()
    return torch.no_grad()(lambda: module(xt))
