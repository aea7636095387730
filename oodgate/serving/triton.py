"""A Triton Inference Server model repository for an oodgate graph: ``<repo>/<name>/config.pbtxt`` and
``<repo>/<name>/<version>/model.onnx``, for Triton's ONNX Runtime backend (optionally with ORT's TensorRT
accelerator). Every config is parsed into tritonclient's ``ModelConfig`` and cross-checked against the graph's
inputs and outputs (names, types, shapes) and its oodgate metadata before anything is published. No torch here.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import OodgateError, TritonConfigError
from ..files import atomic_output, write_atomic
from ..runtime.metadata import GraphInfo, read_graph_info

#: ONNX element type (TensorProto enum value) -> Triton data type
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                  6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
                  12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}
#: the model parameters oodgate writes (Triton passes them through; clients read them from the model config)
PARAM_METHOD, PARAM_THRESHOLD, PARAM_HASH = "oodgate_method", "oodgate_threshold", "oodgate_calibration_hash"
PARAM_TPR, PARAM_VERSION = "oodgate_tpr", "oodgate_version"
BACKEND = "onnxruntime"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
INSTANCE_KINDS = {"auto": None, "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
ACCELERATORS = {"none": None, "tensorrt": "FP32", "tensorrt:fp32": "FP32", "tensorrt:fp16": "FP16"}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, ONNX element type, shape (int, or str/None for a dynamic axis)."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...]

    @property
    def triton_type(self) -> str:
        return ONNX_TO_TRITON.get(self.elem_type, f"<ONNX type {self.elem_type}>")


@dataclass(frozen=True)
class TritonModel:
    """A written Triton model: its folder, config file, graph file and the config text."""

    name: str
    folder: Path
    config_path: Path
    model_path: Path
    config_text: str


def graph_io(path: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's real inputs (initializers excluded) and outputs, read without loading weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}

    def spec(vi: Any) -> TensorSpec:
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in vi.type.tensor_type.shape.dim)
        return TensorSpec(vi.name, vi.type.tensor_type.elem_type, dims)

    return ([spec(i) for i in model.graph.input if i.name not in initializers],
            [spec(o) for o in model.graph.output])


def _quote(text: str) -> str:
    """A protobuf text-format string literal (printable ASCII only)."""
    if not text.isprintable() or not text.isascii():
        raise TritonConfigError(f"cannot write {text!r} into a Triton config: use printable ASCII")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(values: Sequence[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"


def _per_item_dims(spec: TensorSpec) -> list[int]:
    """Dims of one batch item (the batch axis dropped; a dynamic axis is -1)."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in spec.shape[1:]]


def default_model_name(graph: str | Path) -> str:
    """A Triton model name from the graph's file name (characters other than letters, digits, _ . - replaced)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(graph).stem).lstrip(".") or "oodgate"
    return name if _NAME.match(name) else "m" + name


def triton_config_text(graph: str | Path, *, name: str | None = None, max_batch_size: int = 32,
                       preferred_batch_sizes: Sequence[int] = (), max_queue_delay_us: int = 100,
                       instance_kind: str = "auto", instances: int = 1, accelerator: str = "none",
                       trt_cache_dir: str | None = None) -> str:
    """The config.pbtxt of ``graph`` for Triton's ONNX Runtime backend (not validated: see check_triton_config).

    ``accelerator``: 'none' | 'tensorrt' | 'tensorrt:fp16' (ORT's TensorRT accelerator on GPU instances, with an
    optimisation profile over the batch axis 1..max_batch_size).
    """
    info = read_graph_info(graph)
    inputs, outputs = graph_io(graph)
    name = default_model_name(graph) if name is None else name
    if not _NAME.match(name):
        raise TritonConfigError(f"Triton model name {name!r}: use letters, digits, '_', '.', '-' (no leading '.')")
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise TritonConfigError(f"max_batch_size={max_batch_size!r}: give a positive integer (oodgate graphs have a "
                                "dynamic batch axis), e.g. 32")
    if instance_kind not in INSTANCE_KINDS:
        raise TritonConfigError(f"instance kind {instance_kind!r}: use one of {', '.join(INSTANCE_KINDS)}")
    if accelerator not in ACCELERATORS:
        raise TritonConfigError(f"accelerator {accelerator!r}: use one of {', '.join(ACCELERATORS)}")
    if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
        raise TritonConfigError(f"instances={instances!r}: give a positive number of model instances")
    lines = [f"# oodgate {__version__}: {info.method} gate from {Path(graph).name}; "
             "score higher = in-distribution, is_ood = NOT(oodgate_threshold <= score < inf)",
             f"name: {_quote(name)}", f"backend: {_quote(BACKEND)}", f"max_batch_size: {max_batch_size}"]

    def tensor_block(kind: str, specs: list[TensorSpec]) -> None:
        entries = []
        for s in specs:
            per_item = _per_item_dims(s)
            body = [f"    name: {_quote(s.name)}", f"    data_type: {s.triton_type}"]
            if per_item:
                body.append(f"    dims: {_dims(per_item)}")
            else:  # one value per item: Triton wants dims [1], reshaped to the graph's rank-1 (batch-only) tensor
                body += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
            entries.append("  {\n" + "\n".join(body) + "\n  }")
        lines.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")

    tensor_block("input", inputs)
    tensor_block("output", outputs)
    batching = [f"  preferred_batch_size: {_dims(list(preferred_batch_sizes))}"] if preferred_batch_sizes else []
    batching.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}")
    lines.append("dynamic_batching {\n" + "\n".join(batching) + "\n}")
    kind = INSTANCE_KINDS[instance_kind]
    if kind is not None or instances != 1:
        lines.append("instance_group [ { " + (f"kind: {kind} " if kind else "") + f"count: {instances} }} ]")
    params = {PARAM_METHOD: info.method, PARAM_THRESHOLD: repr(float(info.threshold)),
              PARAM_HASH: info.calibration_hash, PARAM_TPR: repr(float(info.tpr)), PARAM_VERSION: info.oodgate_version}
    lines += [f"parameters {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}" for k, v in params.items()]
    precision = ACCELERATORS[accelerator]
    if precision is not None:
        x = inputs[0]
        item = "x".join(str(d) for d in _per_item_dims(x))
        opt = max(preferred_batch_sizes) if preferred_batch_sizes else max_batch_size
        trt = {"precision_mode": precision, "max_workspace_size_bytes": str(1 << 30), "trt_engine_cache_enable": "1",
               **({"trt_engine_cache_path": trt_cache_dir} if trt_cache_dir else {}),
               "trt_profile_min_shapes": f"{x.name}:1x{item}", "trt_profile_opt_shapes": f"{x.name}:{opt}x{item}",
               "trt_profile_max_shapes": f"{x.name}:{max_batch_size}x{item}"}
        body = " ".join(f"parameters {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in trt.items())
        lines.append("optimization { execution_accelerators {\n  gpu_execution_accelerator: [ { name: \"tensorrt\" "
                     + body + " } ]\n} }")
    return "\n".join(lines) + "\n"


def _model_config_pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError) as exc:  # tritonclient.grpc raises RuntimeError without grpcio
        raise OodgateError("checking a Triton config needs tritonclient's model_config_pb2: pip install "
                           f"'oodgate[triton]' ({type(exc).__name__}: {exc})") from None
    return model_config_pb2


def parse_triton_config(text: str, source: str = "config.pbtxt") -> Any:
    """Parse config.pbtxt text into tritonclient's ``model_config_pb2.ModelConfig`` (a one-line error if invalid)."""
    from google.protobuf import text_format

    config = _model_config_pb2().ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise TritonConfigError(f"{source} is not a valid Triton model config: {exc}") from None
    return config


def _shape_problem(what: str, config_shape: list[int], graph_shape: tuple[int | str | None, ...],
                   batched: bool) -> str | None:
    if len(config_shape) != len(graph_shape):
        return (f"{what}: the config gives rank {len(config_shape)} {config_shape}, the graph has rank "
                f"{len(graph_shape)} {list(graph_shape)}")
    for axis, (c, g) in enumerate(zip(config_shape, graph_shape)):
        dynamic = not isinstance(g, int) or g <= 0
        if axis == 0 and batched:
            if not dynamic:
                return f"{what}: the graph's batch axis is fixed to {g}, but max_batch_size > 0 batches requests"
            continue
        if dynamic and c < 1 and c != -1:
            return f"{what}: axis {axis} is {c} in the config"
        if not dynamic and c != g:
            return f"{what}: axis {axis} is {c} in the config but {g} in the graph"
    return None


def _config_problems(config: Any, graph: Path, info: GraphInfo, model_name: str | None) -> list[str]:
    """Everything in ``config`` that contradicts the graph or would not load/serve in Triton."""
    pb2 = _model_config_pb2()
    problems: list[str] = []
    if model_name is not None and config.name != model_name:
        problems.append(f"name {config.name!r} differs from the model folder {model_name!r} (Triton needs them equal)")
    if config.backend != BACKEND and config.platform != "onnxruntime_onnx":
        problems.append(f"backend {config.backend or config.platform!r}: an ONNX graph needs backend \"onnxruntime\"")
    inputs, outputs = graph_io(graph)
    mbs = config.max_batch_size
    if mbs < 1:
        problems.append(f"max_batch_size {mbs}: oodgate graphs have a dynamic batch axis; give >= 1")
    for kind, cfg_list, specs in (("input", config.input, inputs), ("output", config.output, outputs)):
        by_name = {s.name: s for s in specs}
        names = [t.name for t in cfg_list]
        if sorted(names) != sorted(by_name):
            problems.append(f"{kind}s {sorted(names)} in the config, {sorted(by_name)} in the graph")
        for t in cfg_list:
            spec = by_name.get(t.name)
            if spec is None:
                continue
            dtype = pb2.DataType.Name(t.data_type)
            if dtype != spec.triton_type:
                problems.append(f"{kind} {t.name!r}: data_type {dtype} in the config, {spec.triton_type} in the graph")
            item = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
            if t.HasField("reshape"):
                n_dims = 1
                for d in t.dims:
                    n_dims *= d
                n_item = 1
                for d in t.reshape.shape:
                    n_item *= d
                if -1 not in t.dims and -1 not in item and n_dims != n_item:
                    problems.append(f"{kind} {t.name!r}: dims {list(t.dims)} do not reshape to {item}")
            full = ([-1] + item) if mbs > 0 else item
            issue = _shape_problem(f"{kind} {t.name!r}", full, spec.shape, mbs > 0)
            if issue:
                problems.append(issue)
    if config.WhichOneof("scheduling_choice") != "dynamic_batching":
        problems.append("no dynamic_batching: requests of many clients would not be batched")
    else:
        for size in config.dynamic_batching.preferred_batch_size:
            if not 1 <= size <= mbs:
                problems.append(f"preferred_batch_size {size} is outside 1..max_batch_size ({mbs})")
    params = {k: v.string_value for k, v in config.parameters.items()}
    expected = {PARAM_METHOD: info.method, PARAM_HASH: info.calibration_hash}
    for key, want in expected.items():
        if params.get(key) != want:
            problems.append(f"parameter {key} is {params.get(key)!r}, the graph's metadata says {want!r}")
    try:
        tau = float(params.get(PARAM_THRESHOLD, "nan"))
    except ValueError:
        tau = float("nan")
    if tau != float(info.threshold):
        problems.append(f"parameter {PARAM_THRESHOLD} is {params.get(PARAM_THRESHOLD)!r}, the graph's threshold is "
                        f"{info.threshold!r}")
    kinds = {g.kind for g in config.instance_group}
    accel = config.optimization.execution_accelerators
    for acc in accel.cpu_execution_accelerator:
        problems.append(f"cpu_execution_accelerator {acc.name!r}: oodgate writes none (use gpu_execution_accelerator)")
    for acc in accel.gpu_execution_accelerator:
        if acc.name not in ("tensorrt", "cuda"):
            problems.append(f"gpu_execution_accelerator {acc.name!r}: the ONNX Runtime backend knows tensorrt, cuda")
            continue
        if pb2.ModelInstanceGroup.KIND_CPU in kinds:
            problems.append(f"gpu_execution_accelerator {acc.name!r} on KIND_CPU instances would never be used")
        if acc.name != "tensorrt":
            continue
        p = dict(acc.parameters)
        if p.get("precision_mode", "FP32") not in ("FP32", "FP16"):
            problems.append(f"TensorRT precision_mode {p['precision_mode']!r}: use FP32 or FP16 (INT8 needs a "
                            "calibration table oodgate does not make)")
        x = inputs[0] if inputs else None
        for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
            if key not in p or x is None:
                problems.append(f"TensorRT accelerator without {key}: ORT would build an engine per batch size")
                continue
            name, _, shape = p[key].rpartition(":")
            try:
                dims = [int(d) for d in shape.split("x")]
            except ValueError:
                problems.append(f"{key} {p[key]!r} is not 'input:NxCxHxW'")
                continue
            if name != x.name or _shape_problem(key, dims, x.shape, True) or not 1 <= dims[0] <= mbs:
                problems.append(f"{key} {p[key]!r} does not fit input {x.name!r} {list(x.shape)} and "
                                f"max_batch_size {mbs}")
            elif key == "trt_profile_max_shapes" and dims[0] != mbs:
                problems.append(f"{key} batch {dims[0]} != max_batch_size {mbs}: Triton would send batches the "
                                "engine cannot take")
    return problems


def check_triton_config(config: Any, graph: str | Path, *, model_name: str | None = None,
                        source: str = "config") -> Any:
    """Parse (if text) and cross-check a Triton config against ``graph``; raise TritonConfigError listing every
    mismatch. Returns the parsed ``ModelConfig``."""
    graph = Path(graph)
    info = read_graph_info(graph)
    if isinstance(config, str):
        config = parse_triton_config(config, source)
    problems = _config_problems(config, graph, info, model_name)
    if problems:
        raise TritonConfigError(f"{source} does not match {graph.name}: " + "; ".join(problems))
    return config


def check_triton_model(folder: str | Path, graph: str | Path | None = None) -> Any:
    """Check a model folder of a Triton repository: config.pbtxt parses and matches the graph in every version
    folder (and ``graph``, the one it should serve, when given). Returns the parsed ``ModelConfig``."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise TritonConfigError(f"{folder} is not a Triton model folder: no {CONFIG_FILE}")
    config = parse_triton_config(config_path.read_text(), str(config_path))
    model_file = config.default_model_filename or MODEL_FILE
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise TritonConfigError(f"{folder} has no version folder (e.g. {folder / '1'}) holding {model_file}")
    for version in versions:
        served = version / model_file
        if not served.is_file():
            raise TritonConfigError(f"{served} is missing: every version folder needs {model_file}")
        check_triton_config(config, served, model_name=folder.name, source=str(config_path))
    if graph is not None:
        expected = read_graph_info(graph)
        served_info = read_graph_info(versions[-1] / model_file)
        if served_info.calibration_hash != expected.calibration_hash or served_info.threshold != expected.threshold:
            raise TritonConfigError(f"{versions[-1] / model_file} is not {graph}: another calibration or threshold")
        check_triton_config(config, graph, model_name=folder.name, source=str(config_path))
    return config


def _external_files(graph: Path) -> list[Path]:
    """Files holding the graph's external data (large models), relative to the graph."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    found = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    found.add(entry.value)
    files = []
    for rel in sorted(found):
        path = (graph.parent / rel).resolve()
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not path.is_file():
            raise OodgateError(f"{graph}: external data {rel!r} is not a file next to the graph: re-export it")
        files.append(Path(rel))
    return files


def write_triton_repo(graph: str | Path, repo: str | Path, *, name: str | None = None, version: int = 1,
                      overwrite: bool = False, **config: Any) -> TritonModel:
    """Write ``repo/<name>/config.pbtxt`` and ``repo/<name>/<version>/model.onnx`` for ``graph``.

    The model folder is assembled under a temporary name inside ``repo``, its config checked against the copied
    graph (check_triton_model), and only then renamed into place; an existing model folder is replaced only with
    ``overwrite``. ``config``: the options of triton_config_text (max_batch_size, preferred_batch_sizes,
    max_queue_delay_us, instance_kind, instances, accelerator, trt_cache_dir).
    """
    graph = Path(graph)
    read_graph_info(graph)  # an oodgate graph, or a one-line ArtifactError
    repo = Path(repo)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise OodgateError(f"version={version!r}: Triton model versions are positive integers, e.g. 1")
    if not repo.parent.is_dir():
        raise OodgateError(f"cannot write the Triton repository {repo}: folder {repo.parent} does not exist")
    if repo.exists() and not repo.is_dir():
        raise OodgateError(f"{repo} is a file, not a Triton repository folder: choose another path")
    name = default_model_name(graph) if name is None else name
    text = triton_config_text(graph, name=name, **config)
    target = repo / name
    if target.exists() and not overwrite:
        raise OodgateError(f"{target} exists: choose another --triton-name / folder or overwrite it (--force)")
    if target.exists() and not (target / CONFIG_FILE).is_file():
        raise OodgateError(f"{target} exists and is not a Triton model folder (no {CONFIG_FILE}): not replacing it")
    created = not repo.exists()
    repo.mkdir(exist_ok=True)
    staging = repo / f".{name}.tmp-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        write_atomic(staging / CONFIG_FILE, text.encode())
        (staging / str(version)).mkdir()
        for rel in [Path(graph.name), *_external_files(graph)]:
            dest = staging / str(version) / (MODEL_FILE if rel == Path(graph.name) else rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(dest) as tmp:
                shutil.copyfile(graph.parent / rel, tmp)
        check_triton_config(text, staging / str(version) / MODEL_FILE, model_name=name, source=f"{name}/{CONFIG_FILE}")
        _publish(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                repo.rmdir()  # only if still empty
        raise
    return TritonModel(name, target, target / CONFIG_FILE, target / str(version) / MODEL_FILE, text)


def _publish(staging: Path, target: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; with ``overwrite``, swap it with the old one, then delete that."""
    if not target.exists():
        try:
            os.rename(staging, target)  # fails if a non-empty folder appeared meanwhile: never merged into
        except OSError as exc:
            raise OodgateError(f"{target} appeared while writing it ({exc.strerror}): not replacing it") from None
        return
    if not overwrite:
        raise OodgateError(f"{target} exists: overwrite it with --force")
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
