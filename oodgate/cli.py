"""The oodgate command line: a thin typer layer over the library (every command is a library call)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import OodgateError

app = typer.Typer(
    name="oodgate", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Fit post-hoc OOD detectors on ID data, export them with the classifier as one ONNX graph, serve and "
         "CI-check it. Scores are oriented so that higher = more in-distribution; is_ood = NOT(threshold <= score < inf): below the threshold or non-finite.",
)

#: the built-in models by name, as in oodgate.models' registry (a test keeps the two equal; the CLI does not
#: import torch to print its help)
BUILTIN_MODEL_NAMES = ("digits-cnn", "fashion-cnn", "efficientnet-lite0", "fashion-effnet")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _echo(msg: str = "") -> None:
    typer.echo(msg)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OodgateError(f"--param {item!r}: write key=value, e.g. --param p=90")
        params[key.strip()] = _parse_value(value.strip())
    return params


def _parse_preprocess(text: str | None, **flags: Any) -> Any:
    """The preprocessing of --preprocess JSON / --preset and the single-setting flags (None if none given)."""
    from .data.preprocess import Preprocess

    base = None
    if text is not None:
        path = Path(text)
        raw = path.read_text() if path.is_file() else text
        try:
            base = Preprocess.from_dict(json.loads(raw))
        except json.JSONDecodeError:
            raise OodgateError(f"--preprocess: expected JSON (or a JSON file), e.g. "
                               '\'{"channels": "RGB", "resize": 256, "crop": [224, 224], '
                               '"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}\', '
                               "or use --preset / --channels --resize --crop --mean --std") from None
    return Preprocess.from_options(base=base, **flags)


def _add_import_paths(pythonpath: list[Path] | None) -> None:
    """Make 'module:factory' models importable as users expect: --pythonpath folders, then the current folder."""
    for folder in [*(pythonpath or []), Path.cwd()][::-1]:
        if not folder.is_dir():
            raise OodgateError(f"--pythonpath {folder}: no such folder")
        entry = str(folder.resolve())
        if entry not in sys.path:
            sys.path.insert(0, entry)


def _parse_class_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    path = Path(text)
    if path.suffix.lower() in (".txt", ".json") and path.is_file():
        if path.suffix.lower() == ".json":
            try:
                names = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise OodgateError(f"--class-names {path}: not valid JSON ({exc})") from None
        else:
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [n.strip() for n in text.split(",")]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise OodgateError(f"--class-names {text!r}: give the class names, comma-separated or one per line in a file")
    if len(set(names)) != len(names):
        raise OodgateError(f"--class-names {text!r:.80}: the names must be distinct")
    return names


def _model_trust(cal: Any, model: str | None, trust: bool) -> None:
    """Let a calibration's module:attr model reference be imported when the user names it again or trusts it."""
    if model is not None and model != cal.model_ref:
        raise OodgateError(f"--model {model} is not the model this calibration was made with ({cal.model_ref}): "
                           "name that one, or re-run calibrate for this model")
    cal.trust_model = trust or model is not None


def _expand_inputs(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise OodgateError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise OodgateError(f"no such image file or folder: {p}")
    return files


def _require_matplotlib() -> None:
    """Fail before the work when the report's plots cannot be drawn (matplotlib is the plots extra)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise OodgateError("--report draws PNG plots with matplotlib, which is not installed: "
                           "pip install '.[plots]' (from a checkout) or matplotlib, or pass --no-plots")


def _load_data(spec: str, skip_unreadable: bool) -> Any:
    """A data spec as an ImageSet; files skipped as unreadable are listed on stderr."""
    from .data.sets import load_image_set

    images = load_image_set(spec, skip_unreadable=skip_unreadable)
    _report_skipped(spec, images.skipped)
    return images


def _report_skipped(what: str, skipped: list[tuple[str, str]]) -> None:
    if skipped:
        typer.echo(f"skipped {len(skipped)} unreadable image(s) in {what}:", err=True)
        for path, why in skipped:
            typer.echo(f"  {path}: {why}", err=True)


def _write_text(path: Path | None, text: str, force: bool) -> None:
    if path is None:
        _echo(text)
        return
    from .files import write_atomic

    write_atomic(path, text.encode(), overwrite=force)
    _echo(f"wrote {path}")


Force = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output file.")]
Provider = Annotated[str, typer.Option("--provider", "-p", help="Runtime: auto | cpu | cuda | tensorrt (ONNX "
                                                                 "Runtime's EPs) | trt-native (oodgate's TensorRT "
                                                                 "runner); `run` also takes options, e.g. "
                                                                 "trt-native:fp16,batch=1/8/32.")]


@app.command()
def calibrate(
    model: Annotated[str, typer.Argument(help=f"Model: a built-in name ({', '.join(BUILTIN_MODEL_NAMES)}) or "
                                              "'module:factory' returning a torch.nn.Module (module found in "
                                              "the current folder, --pythonpath or PYTHONPATH).")],
    data: Annotated[str, typer.Option("--data", "-d", help="ID data: digits:train, fashion-mnist:train, a folder "
                                                           "(one subfolder per class, or flat), or a .npy/.npz.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration file to write (.oodcal).")],
    method: Annotated[str, typer.Option("--method", "-m", help="Detector: see `oodgate methods`.")] = "energy",
    param: Annotated[Optional[list[str]], typer.Option("--param", help="Detector parameter key=value "
                                                       "(repeatable), e.g. --param p=90 --param clip=p90.")] = None,
    groups: Annotated[Optional[str], typer.Option(help="MOS groups: imagenet-taxonomy or a class→group file "
                                                       "(CSV/JSON/TSV); omitted: k-means.")] = None,
    holdout: Annotated[Optional[str], typer.Option(help="Held-out ID data for the threshold (a data spec), or a "
                                                        "share of --data (default 0.2).")] = None,
    tpr: Annotated[float, typer.Option(help="Share of held-out ID data the threshold accepts.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the fit/holdout split.")] = 0,
    weights: Annotated[Optional[Path], typer.Option(help="State-dict weights for the model "
                                                         "(loaded with weights_only=True).")] = None,
    head: Annotated[Optional[str], typer.Option(help="Attribute path of the final nn.Linear if not found "
                                                     "automatically (fc, classifier, head, _fc).")] = None,
    # -- preprocessing for own models (issue 15): a preset and/or single settings, or the full JSON --
    preset: Annotated[Optional[str], typer.Option(help="Preprocessing preset: imagenet-224 (RGB, shorter side 256, "
                                                       "crop 224, ImageNet mean/std), gray-28 (L, 28x28, [0, 1]), "
                                                       "cifar-32 (RGB, 32x32, CIFAR-10 mean/std).")] = None,
    channels: Annotated[Optional[str], typer.Option(help="Input channels: L (grey, 1) or RGB (3).")] = None,
    resize: Annotated[Optional[str], typer.Option(help="Resize: N (shorter side, keeps the aspect; then give "
                                                       "--crop) or HxW, e.g. 28x28.")] = None,
    crop: Annotated[Optional[str], typer.Option(help="Centre crop after the resize: HxW, e.g. 224x224.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean of [0, 1] pixels, e.g. "
                                                     "0.485,0.456,0.406.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std, e.g. 0.229,0.224,0.225.")] = None,
    preprocess: Annotated[Optional[str], typer.Option(help="Preprocessing as JSON (or a JSON file) with keys "
                                                           "channels, resize, crop, mean, std, interpolation; the "
                                                           "flags above override it.")] = None,
    pythonpath: Annotated[Optional[list[Path]], typer.Option(help="Folder to import 'module:factory' from "
                                                                  "(repeatable; the current folder is always "
                                                                  "searched).")] = None,
    skip_unreadable: Annotated[bool, typer.Option(help="Leave out (and list) image files that cannot be decoded "
                                                       "instead of stopping at the first.")] = False,
    trust_pickle: Annotated[bool, typer.Option(help="Also load a --weights file that pickles a whole model "
                                                    "(torch.save(model)); unpickling runs its code: only for files "
                                                    "you trust.")] = False,
    # -- end preprocessing options --
    batch_size: Annotated[int, typer.Option(help="Images per backbone batch.")] = 128,
    class_names: Annotated[Optional[str], typer.Option(help="The model's class names in output order: "
                                                            "comma-separated, or a .txt (one per line) / .json "
                                                            "file; stored in the calibration and the graph.")] = None,
    class_map: Annotated[Optional[str], typer.Option(help="Map class folders of --data onto the model's classes: "
                                                          "FOLDER=CLASS,... (CLASS a name or index) or JSON.")] = None,
    force: Force = False,
) -> None:
    """Fit a detector on ID data and its threshold on held-out ID data; write a calibration file."""
    from .calibration.calibrate import calibrate as run_calibrate
    from .models.registry import load_model

    if output.exists() and not force:
        raise OodgateError(f"{output} exists: choose another path or pass --force")
    params = _parse_params(param)
    if groups is not None:
        params["groups"] = groups
    prep = _parse_preprocess(preprocess, preset=preset, channels=channels, resize=resize, crop=crop, mean=mean,
                             std=std)
    _add_import_paths(pythonpath)
    bundle = load_model(model, weights=weights, preprocess=prep, head=head, pythonpath=pythonpath or (),
                        trust_pickle=trust_pickle)
    data = _load_data(data, skip_unreadable)
    hold: Any = 0.2
    if holdout is not None:
        try:
            hold = float(holdout)
        except ValueError:
            hold = _load_data(holdout, skip_unreadable)
    from .data.sets import parse_class_map

    names = _parse_class_names(class_names)
    cal = run_calibrate(bundle, data, method=method, tpr=tpr, holdout=hold, seed=seed, batch_size=batch_size,
                        class_names=names, class_map=parse_class_map(class_map), **params)
    if cal.model_weights:  # recorded relative to the calibration file, which is where it is resolved from
        cal.model_weights = os.path.relpath(Path(cal.model_weights).resolve(), output.resolve().parent)
    cal.save(output, overwrite=force)
    _echo(cal.summary())
    _echo(f"wrote {output}")


@app.command()
def export(
    calibration: Annotated[Path, typer.Argument(help="Calibration file made by `oodgate calibrate`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    opset: Annotated[int, typer.Option(help="ONNX opset (18..25).")] = 18,
    check: Annotated[bool, typer.Option(help="Run ONNX Runtime against PyTorch before reporting success.")] = True,
    model: Annotated[Optional[str], typer.Option(help="Name the calibration's 'module:factory' model again to "
                                                      "let it be imported (it is code).")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Import the calibration's 'module:factory' "
                                                                    "model without naming it.")] = False,
    recheck_data: Annotated[Optional[str], typer.Option(help="Export with changed weights if the calibrated "
                                                             "threshold still keeps its TPR on this ID data.")] = None,
    pythonpath: Annotated[Optional[list[Path]], typer.Option(help="Folder to import the calibration's "
                                                                  "'module:factory' from (repeatable; the current "
                                                                  "folder is always searched).")] = None,
    trust_pickle: Annotated[bool, typer.Option(help="The calibration's weights file pickles a whole model and you "
                                                    "trust it (unpickling runs its code).")] = False,
    # -- Triton model repository (issue 18) --
    triton_repo: Annotated[Optional[Path], typer.Option(help="Also write a Triton model repository here "
                                                             "(<DIR>/<name>/config.pbtxt + 1/model.onnx).")] = None,
    triton_name: Annotated[Optional[str], typer.Option(help="Triton model name (default: the graph's file "
                                                            "name).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size (dynamic batching up to it).")] = 32,
    accelerator: Annotated[str, typer.Option(help="Triton ORT accelerator: none | tensorrt | tensorrt:fp16 "
                                                  "(on GPU instances).")] = "none",
    # -- end Triton options --
    force: Force = False,
) -> None:
    """Export backbone + detector head + threshold as one ONNX graph, checked against PyTorch."""
    from .calibration.artifact import load_calibration
    from .exporter.export import export as run_export

    _add_import_paths(pythonpath)
    if triton_repo is not None:  # refuse before the export, not after it
        _triton_target_free(output, triton_repo, triton_name, force)
    cal = load_calibration(calibration)
    _model_trust(cal, model, trust_model)
    loaded = None
    if trust_pickle and cal.model_ref and cal.model_weights:
        if ":" in cal.model_ref and not cal.trust_model:
            cal.model()  # refuses, naming the reference and --model / --trust-model
        from .models.registry import load_model

        loaded = load_model(cal.model_ref, weights=cal.weights_path(), preprocess=cal.preprocess,
                            trust_pickle=True).model
    res = run_export(cal, output, model=loaded, opset=opset, overwrite=force, check=check, recheck_data=recheck_data)
    if res.recheck is not None:
        r = res.recheck
        _echo(f"changed weights re-checked on {r['n']} ID images of {r['data']}: {100 * r['accepted']:.1f} % accepted "
              f"at tau (calibrated TPR {100 * cal.tpr:g} %, tolerance {100 * r['tolerance']:.1f} points)")
    diff = "" if res.max_score_diff is None else f", ORT vs PyTorch max |score diff| {res.max_score_diff:.2g}"
    _echo(f"exported {res.method} to {res.path} (input (N, {', '.join(map(str, res.input_shape))}), "
          f"tau={res.threshold:.6g}{diff}, {res.seconds:.1f} s)")
    if triton_repo is not None:
        _write_triton(res.path, triton_repo, name=triton_name, max_batch_size=max_batch_size, accelerator=accelerator,
                      force=force)


# -- Triton and Ray (issue 18) -------------------------------------------------------------------------------
def _triton_target_free(graph: Path, repo: Path, name: str | None, force: bool) -> None:
    from .serving.triton import default_model_name

    target = repo / (name or default_model_name(graph))
    if target.exists() and not force:
        raise OodgateError(f"{target} exists: choose another --triton-repo / --triton-name or pass --force")


def _write_triton(graph: Path, repo: Path, *, force: bool, **config: Any) -> None:
    from .serving.triton import write_triton_repo

    model = write_triton_repo(graph, repo, overwrite=force, **config)
    _echo(f"wrote Triton model '{model.name}': {model.config_path} and {model.model_path} (config checked against "
          "the graph)")


@app.command("triton-repo")
def triton_repo_command(
    graph: Annotated[Path, typer.Argument(help="ONNX graph made by `oodgate export`.")],
    repo: Annotated[Path, typer.Option("--repo", help="Triton model repository folder (created if missing).")],
    name: Annotated[Optional[str], typer.Option(help="Model name (default: the graph's file name).")] = None,
    max_batch_size: Annotated[int, typer.Option(help="max_batch_size: the dynamic batcher joins requests up to "
                                                     "it.")] = 32,
    preferred_batch_size: Annotated[Optional[list[int]], typer.Option(help="Preferred batch size of the dynamic "
                                                                           "batcher (repeatable).")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(help="Longest wait for a batch to fill, in "
                                                         "microseconds.")] = 100,
    instance_kind: Annotated[str, typer.Option(help="auto | cpu | gpu (instance_group kind).")] = "auto",
    instances: Annotated[int, typer.Option(help="Model instances (instance_group count).")] = 1,
    accelerator: Annotated[str, typer.Option(help="none | tensorrt | tensorrt:fp16 (ORT's TensorRT accelerator, "
                                                  "GPU instances).")] = "none",
    trt_cache_dir: Annotated[Optional[str], typer.Option(help="TensorRT engine cache folder on the server.")] = None,
    force: Force = False,
) -> None:
    """Write a Triton model repository entry for a graph: config.pbtxt (checked against the graph) + model.onnx."""
    _write_triton(graph, repo, name=name, max_batch_size=max_batch_size,
                  preferred_batch_sizes=tuple(preferred_batch_size or ()), max_queue_delay_us=max_queue_delay_us,
                  instance_kind=instance_kind, instances=instances, accelerator=accelerator,
                  trt_cache_dir=trt_cache_dir, force=force)


@app.command("triton-check")
def triton_check_command(
    model: Annotated[Path, typer.Argument(help="A model folder of a Triton repository (holding config.pbtxt).")],
    graph: Annotated[Optional[Path], typer.Option(help="The graph it should serve (default: the one in the "
                                                       "newest version folder).")] = None,
) -> None:
    """Check a Triton model folder: config.pbtxt parses and matches its graph(s); exit 2 with the mismatches."""
    from .serving.triton import check_triton_model

    config = check_triton_model(model, graph)
    _echo(f"{model}: config of '{config.name}' matches its graph (max_batch_size {config.max_batch_size})")


def _start_ray(address: str) -> Any:
    """Ray for --ray: 'local' starts one on this machine bound to 127.0.0.1 only; anything else is an address."""
    import os

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read at import: keeps a local Ray on loopback
    try:
        import ray
    except ImportError:
        raise OodgateError("--ray needs Ray: pip install 'oodgate[ray]'") from None
    if address == "local":
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return ray


@app.command("extract-features")
def extract_features_command(
    model: Annotated[str, typer.Argument(help="Model: a built-in name or 'package.module:factory'.")],
    data: Annotated[str, typer.Option("--data", "-d", help="ID data spec (as for calibrate).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Shard folder to write.")],
    shard_size: Annotated[int, typer.Option(help="Rows (images) per shard.")] = 1024,
    batch_size: Annotated[int, typer.Option(help="Images per backbone batch.")] = 128,
    ray_address: Annotated[Optional[str], typer.Option("--ray", help="Extract as Ray tasks: 'local' (this machine, "
                                                                     "loopback only) or a cluster address "
                                                                     "('auto').")] = None,
    cpus_per_task: Annotated[float, typer.Option(help="CPUs per Ray task (fractional allowed).")] = 1.0,
    weights: Annotated[Optional[Path], typer.Option(help="State-dict weights for the model.")] = None,
    head: Annotated[Optional[str], typer.Option(help="Attribute path of the final nn.Linear.")] = None,
    preprocess: Annotated[Optional[str], typer.Option(help="Preprocessing JSON (or file).")] = None,
    class_names: Annotated[Optional[str], typer.Option(help="The model's class names in output order "
                                                            "(comma-separated, .txt or .json).")] = None,
    class_map: Annotated[Optional[str], typer.Option(help="Map class folders of --data onto the model's classes: "
                                                          "FOLDER=CLASS,... (CLASS a name or index) or JSON.")] = None,
    force: Force = False,
) -> None:
    """Write the backbone features of ID images as shards (for fit-shards), in this process or as Ray tasks."""
    from .calibration.shards import write_feature_shards
    from .data.sets import parse_class_map
    from .models import load_model

    bundle = load_model(model, weights=weights, preprocess=_parse_preprocess(preprocess), head=head)
    ray = _start_ray(ray_address) if ray_address else None
    try:
        out = write_feature_shards(bundle, data, output, shard_size=shard_size, batch_size=batch_size,
                                   use_ray=ray is not None, cpus_per_task=cpus_per_task, overwrite=force,
                                   class_names=_parse_class_names(class_names),
                                   class_map=parse_class_map(class_map))
    finally:
        if ray is not None:
            ray.shutdown()
    from .calibration.shards import open_shards

    m = open_shards(out).manifest
    _echo(f"wrote {len(m['shards'])} shards of {m['rows']} x {m['feature_dim']} features to {out}")


@app.command("fit-shards")
def fit_shards_command(
    shards: Annotated[Path, typer.Argument(help="Shard folder made by `oodgate extract-features`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Calibration file to write (.oodcal).")],
    method: Annotated[str, typer.Option("--method", "-m", help="Detector (feature-based: not AdaSCALE).")] = "energy",
    param: Annotated[Optional[list[str]], typer.Option("--param", help="Detector parameter key=value.")] = None,
    holdout: Annotated[Optional[str], typer.Option(help="Held-out share of the rows (default 0.2), or a second "
                                                        "shard folder of held-out ID data.")] = None,
    tpr: Annotated[float, typer.Option(help="Share of held-out ID data the threshold accepts.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the fit/holdout split.")] = 0,
    force: Force = False,
) -> None:
    """Fit a detector and its threshold from feature shards, streamed; write a calibration file."""
    from .calibration.shards import fit_from_shards

    if output.exists() and not force:
        raise OodgateError(f"{output} exists: choose another path or pass --force")
    hold: Any = 0.2
    if holdout is not None:
        try:
            hold = float(holdout)
        except ValueError:
            hold = Path(holdout)
    cal = fit_from_shards(shards, method, holdout=hold, tpr=tpr, seed=seed, **_parse_params(param))
    cal.save(output, overwrite=force)
    _echo(cal.summary())
    _echo(f"wrote {output}")
# -- end Triton and Ray --


@app.command()
def run(
    graph: Annotated[Path, typer.Argument(help="ONNX graph made by `oodgate export`.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    provider: Provider = "auto",
    threshold: Annotated[Optional[float], typer.Option(help="Override the calibrated threshold.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="table | jsonl | csv (default: from the --output "
                                                                 "suffix .jsonl/.csv, else table)")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to a file instead of stdout.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    skip_unreadable: Annotated[bool, typer.Option(help="Leave out (and list on stderr) image files that cannot "
                                                       "be decoded instead of stopping at the first.")] = False,
    force: Force = False,
) -> None:
    """Classify images and accept/reject each as in- or out-of-distribution."""
    from .runtime.session import Session

    fmt = _run_format(fmt, output)
    files = _expand_inputs(inputs)
    if skip_unreadable:
        from .data.sets import readable_images

        ok, skipped = readable_images(files)
        _report_skipped("the inputs", skipped)
        if not ok:
            raise OodgateError(f"none of the {len(files)} inputs is a readable image")
        files = [Path(f) for f in ok]
    with Session(graph, provider) as sess:
        pred = sess.run([str(f) for f in files], threshold=threshold, batch_size=batch_size)
    records = pred.records([str(f) for f in files])
    if fmt == "jsonl":
        text = "\n".join(json.dumps(r) for r in records)
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["input", "label", "class", "score", "is_ood"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        text = buf.getvalue().rstrip("\n")
    else:
        width = max(len(str(r["input"])) for r in records)
        lines = [f"{'input':<{width}}  {'class':<16} {'score':>10}  decision (tau={pred.threshold:.6g})"]
        for r in records:
            cls = str(r["label"] if r["class"] is None else r["class"])[:16]
            decision = ("OOD" if r["is_ood"] else "ID") + (" (non-finite input)" if r.get("nonfinite_input") else "")
            lines.append(f"{r['input']:<{width}}  {cls:<16} {r['score']:>10.4f}  {decision}")
        text = "\n".join(lines)
    _write_text(output, text, force)


#: output suffixes that choose `oodgate run`'s format when --format is not given
RUN_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "table"}


def _run_format(fmt: str | None, output: Path | None) -> str:
    """The format of `oodgate run`: --format if given (it must agree with a .jsonl/.csv suffix), else the suffix."""
    if fmt is not None and fmt not in ("table", "jsonl", "csv"):
        raise OodgateError(f"--format {fmt!r}: use table, jsonl or csv")
    by_suffix = RUN_SUFFIX_FORMATS.get(output.suffix.lower()) if output is not None else None
    if fmt is None:
        return by_suffix or "table"
    if by_suffix is not None and by_suffix != fmt:
        raise OodgateError(f"--format {fmt} does not match the output suffix {output.suffix!r} ({by_suffix}): "
                           f"drop --format or name the file for it")
    return fmt


def _parse_named(items: list[str]) -> dict[str, str]:
    named: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            name, spec = item.split(":")[-1], item
        named[name] = spec
    return named


@app.command()
def evaluate(
    graph: Annotated[Path, typer.Argument(help="ONNX graph made by `oodgate export`.")],
    id_data: Annotated[str, typer.Option("--id", help="ID data spec (e.g. digits:test).")],
    ood: Annotated[list[str], typer.Option(help="OOD set NAME=SPEC (repeatable), e.g. textures=ood:textures.")],
    provider: Provider = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics as JSON.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    # -- report and threshold what-ifs (issue 8) --
    report: Annotated[Optional[Path], typer.Option(help="Write a report folder: metrics.md/.json, PNG plots, "
                                                        "index.html.")] = None,
    tpr_grid: Annotated[str, typer.Option(help="ID TPRs whose thresholds the what-if table shows "
                                               "(comma-separated).")] = "0.9,0.95,0.99",
    tau: Annotated[Optional[list[float]], typer.Option("--tau", help="Also show what this threshold would do "
                                                                     "(repeatable).")] = None,
    plots: Annotated[bool, typer.Option(help="Draw the report's PNG plots (needs matplotlib: the plots "
                                             "extra).")] = True,
    # -- end report options --
    class_map: Annotated[Optional[str], typer.Option(help="Map class folders of --id onto the graph's classes: "
                                                          "FOLDER=CLASS,... (CLASS a name or index) or JSON.")] = None,
    skip_unreadable: Annotated[bool, typer.Option(help="Leave out (and list) image files that cannot be decoded "
                                                       "instead of stopping at the first.")] = False,
    force: Force = False,
) -> None:
    """Score an ID set and OOD sets with the graph; print AUROC / FPR95 (both conventions) / AUPR and what other
    thresholds would reject/accept; optionally write a report folder with plots."""
    from .data.sets import load_image_set, parse_class_map
    from .evaluation.evaluate import evaluate_session, metrics_table
    from .evaluation.report import threshold_options, threshold_table, write_report
    from .runtime.session import Session

    try:
        tprs = [float(t) for t in tpr_grid.split(",") if t.strip()]
    except ValueError:
        raise OodgateError(f"--tpr-grid {tpr_grid!r}: give comma-separated shares, e.g. 0.9,0.95,0.99") from None
    if report is not None and (report / "metrics.json").exists() and not force:
        raise OodgateError(f"{report} already holds a report: choose another folder or pass --force")
    if report is not None and plots:
        _require_matplotlib()
    id_set = _load_data(id_data, skip_unreadable)
    oods = {name: _load_data(spec, skip_unreadable) for name, spec in _parse_named(ood).items()}
    with Session(graph, provider) as sess:
        ev = evaluate_session(sess, id_set, oods, batch_size=batch_size, class_map=parse_class_map(class_map))
    _echo(metrics_table([ev]))
    d = ev.to_dict()
    _echo(f"\nthreshold {ev.threshold:.6g}: ID rejected {100 * d['id_rejected_at_tau']:.1f} %; OOD accepted " +
          ", ".join(f"{k} {100 * v['accepted_ood_at_tau']:.1f} %" for k, v in d["ood"].items() if k != "mean"))
    _echo("\nwhat other thresholds would do (in %):\n" + threshold_table(threshold_options(ev, tprs, tau or ())))
    if json_out:
        _write_text(json_out, json.dumps(d, indent=1), force)
    if report is not None:
        written = write_report(ev, report, tprs=tprs, thresholds=tau or (), plots=plots, overwrite=force,
                               title=f"{ev.method} on {graph.name}")
        _echo(f"wrote {len(written.files)} files to {report}/ (open {report / 'index.html'})")


@app.command()
def parity(
    graph: Annotated[Path, typer.Argument(help="ONNX graph made by `oodgate export`.")],
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Real inputs (data spec) to compare on.")] = None,
    calibration: Annotated[Optional[Path], typer.Option(help="Calibration the graph was exported from "
                                                             "(the PyTorch reference).")] = None,
    provider: Annotated[Optional[list[str]], typer.Option("--provider", "-p", help="Runtimes to check "
                                                          "(repeatable): cpu, cuda, tensorrt, trt-native.")] = None,
    ood: Annotated[Optional[str], typer.Option(help="Real OOD inputs (data spec, e.g. ood:textures): also report "
                                                    "each runtime's AUROC/FPR95 drift against the reference.")] = None,
    metric_tol: Annotated[float, typer.Option(help="Largest AUROC/FPR95 change (fraction) allowed for fp16 "
                                                   "runtimes, which are judged on metrics, not elements.")] = 0.005,
    limit: Annotated[int, typer.Option(help="Use at most this many inputs (per set).")] = 256,
    atol: Annotated[float, typer.Option(help="Golden files: absolute tolerance (fail only where atol AND rtol "
                                             "are exceeded). Against PyTorch, runtimes are judged against float64 "
                                             "by the noise-floor criterion (README) and atol/rtol are reported "
                                             "only.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-4,
    margin: Annotated[Optional[float], typer.Option(help="is_ood may differ only within this distance of tau "
                                                         "(default 10 x tolerance).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON.")] = None,
    junit: Annotated[Optional[Path], typer.Option(help="Write the report as JUnit XML.")] = None,
    save_golden: Annotated[Optional[Path], typer.Option(help="Store inputs + PyTorch outputs for later "
                                                             "comparisons.")] = None,
    golden: Annotated[Optional[Path], typer.Option(help="Compare against a stored golden file instead of "
                                                        "PyTorch.")] = None,
    allow_skip: Annotated[bool, typer.Option("--allow-skip", help="Let a requested runtime that cannot run here be "
                                                                  "skipped instead of failing the check.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Name the calibration's 'module:factory' model again to "
                                                      "let it be imported (it is code).")] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Import the calibration's 'module:factory' "
                                                                    "model without naming it.")] = False,
    pythonpath: Annotated[Optional[list[Path]], typer.Option(help="Folder to import the calibration's "
                                                                  "'module:factory' from (repeatable).")] = None,
    force: Force = False,
) -> None:
    """Compare the graph under each runtime with the PyTorch reference (or a golden file); exit 1 on failure."""
    _add_import_paths(pythonpath)
    from .evaluation.parity import check_tolerances

    if limit < 1:
        raise OodgateError(f"--limit {limit}: give a positive number of inputs")
    check_tolerances(atol=atol, rtol=rtol, margin=margin, metric_tol=metric_tol)
    tolerances = dict(providers=provider or ["cpu"], atol=atol, rtol=rtol, margin=margin, metric_tol=metric_tol,
                      allow_skip=allow_skip)
    if golden is not None:
        from .evaluation.parity import parity as golden_parity  # golden files: no torch needed

        report = golden_parity(graph, golden=golden, **tolerances)
    else:
        if calibration is None or data is None:
            raise OodgateError("parity needs --calibration and --data (or --golden FILE)")
        from .calibration.artifact import load_calibration
        from .data.sets import load_image_set
        from .evaluation.parity import save_golden as write_golden
        from .exporter.reference import parity as pytorch_parity
        from .exporter.reference import reference_outputs

        cal = load_calibration(calibration)
        _model_trust(cal, model, trust_model)
        images = load_image_set(data)
        images = images.subset(list(range(min(limit, len(images)))))
        inputs = cal.preprocess(images.images)
        ood_inputs = None
        if ood is not None:
            ood_set = load_image_set(ood)
            ood_inputs = cal.preprocess(ood_set.subset(list(range(min(limit, len(ood_set))))).images)
        if save_golden is not None:
            ref = reference_outputs(cal, inputs)
            write_golden(save_golden, inputs, ref, graph_hash=cal.checksum(), overwrite=force)
            _echo(f"wrote {save_golden}")
        report = pytorch_parity(graph, inputs, calibration=cal, ood_inputs=ood_inputs, **tolerances)
    _echo(report.table())
    if json_out:
        report.write_json(json_out, overwrite=force)
    if junit:
        report.write_junit(junit, overwrite=force)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def inspect(
    graph: Annotated[Path, typer.Argument(help="ONNX graph to describe.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trt_check: Annotated[bool, typer.Option("--trt-check", help="Also check the graph with TensorRT's real ONNX "
                                                                "parser and an engine build (TensorRT, or TensorRT-RTX "
                                                                "from oodgate[trt-check], no GPU needed); without one, "
                                                                "with a static operator table. Exit 1 on errors.")
                         ] = False,
    trt_build: Annotated[bool, typer.Option("--trt-build/--no-trt-build", help="With --trt-check: also build an "
                                                                            "engine (at most 120 s; AdaSCALE's "
                                                                            "graphs take longer on a CPU).")
                         ] = True,
) -> None:
    """Show what is inside a graph: method, threshold, preprocessing, inputs/outputs, operators."""
    from .runtime.inspect import describe_graph, format_description

    desc = describe_graph(graph)
    check = None
    if trt_check:  # -- TensorRT check (issues 6, 17) --
        from .runtime.trt_audit import check_graph

        check = check_graph(graph, build=trt_build)
        desc["trt_check"] = check.to_dict()
    _echo(json.dumps(desc, indent=1) if as_json else format_description(desc))
    if check is not None:
        if not as_json:
            from .runtime.trt_audit import format_check

            _echo(format_check(check, graph.name))
        if not check.passed:
            raise typer.Exit(1)


@app.command()
def methods() -> None:
    """List the detectors and their default parameters."""
    from .detectors.registry import describe_detectors  # no torch needed

    for name, summary, defaults in describe_detectors():
        params = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "—"
        _echo(f"{name:<12} {params:<40} {summary}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the calibration files and graphs.")] = Path(
        "oodgate-demo"),
    method: Annotated[Optional[list[str]], typer.Option("--method", "-m", help="Only these rows (repeatable): msp, "
                                                        "energy, react, dice, dice_p90, line, mos, mos_g2, "
                                                        "adascale_a, "
                                                        "or any detector of `oodgate methods`.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Also write the Markdown report here.")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite files from an earlier demo.")] = False,
) -> None:
    """An OOD gate on a pretrained backbone: EfficientNet-Lite0 + a Fashion-MNIST head, calibrated, exported, run
    with ONNX Runtime against offline OOD sets; prints the metrics and the parity verdict."""
    from .demo import demo_report, run_demo, summary_table

    if report is not None and report.exists() and not force:
        raise OodgateError(f"{report} exists: choose another path or pass --force")
    result = run_demo(out, method, overwrite=force)
    command = " ".join(["oodgate demo", *(f"--method {m}" for m in method or ()),
                        *([f"--report {report}"] if report else [])])
    text = demo_report(result, command)
    _echo("")
    _echo(text)
    _echo("\nSummary (README's table):\n\n" + summary_table(result.evaluations))
    _echo(f"\ndemo finished in {result.seconds:.0f} s; graphs in {out}/")
    if report:
        _write_text(report, text + "\n", force)
    if not result.parity_passed:
        raise typer.Exit(1)


def main() -> None:
    """Entry point: run the CLI and turn oodgate errors into one-line messages with exit code 2."""
    try:
        app()
    except OodgateError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a full disk, a read-only folder...: the file and the reason in one line
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
