"""The oodgate command line: a thin typer layer over the library (every command is a library call)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .errors import OodgateError

app = typer.Typer(
    name="oodgate", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Fit post-hoc OOD detectors on ID data, export them with the classifier as one ONNX graph, serve and "
         "CI-check it. Scores are oriented so that higher = more in-distribution; is_ood = score < threshold.",
)

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


def _parse_preprocess(text: str | None) -> Any:
    if text is None:
        return None
    from .data.preprocess import Preprocess

    path = Path(text)
    raw = path.read_text() if path.is_file() else text
    try:
        return Preprocess.from_dict(json.loads(raw))
    except json.JSONDecodeError:
        raise OodgateError(f"--preprocess: expected JSON (or a JSON file), e.g. "
                           '\'{"channels": "RGB", "resize": 256, "crop": [224, 224], '
                           '"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}\'') from None


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
    model: Annotated[str, typer.Argument(help="Model: a built-in name (digits-cnn, efficientnet-lite0) or "
                                              "'package.module:factory' returning a torch.nn.Module.")],
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
    preprocess: Annotated[Optional[str], typer.Option(help="Preprocessing JSON (or JSON file) for models that "
                                                           "have none recorded.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per backbone batch.")] = 128,
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
    bundle = load_model(model, weights=weights, preprocess=_parse_preprocess(preprocess), head=head)
    hold: Any = 0.2
    if holdout is not None:
        try:
            hold = float(holdout)
        except ValueError:
            hold = holdout
    cal = run_calibrate(bundle, data, method=method, tpr=tpr, holdout=hold, seed=seed, batch_size=batch_size,
                        **params)
    cal.save(output, overwrite=force)
    _echo(cal.summary())
    _echo(f"wrote {output}")


@app.command()
def export(
    calibration: Annotated[Path, typer.Argument(help="Calibration file made by `oodgate calibrate`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 18).")] = 18,
    check: Annotated[bool, typer.Option(help="Run ONNX Runtime against PyTorch before reporting success.")] = True,
    force: Force = False,
) -> None:
    """Export backbone + detector head + threshold as one ONNX graph, checked against PyTorch."""
    from .calibration.artifact import load_calibration
    from .exporter.export import export as run_export

    res = run_export(load_calibration(calibration), output, opset=opset, overwrite=force, check=check)
    diff = "" if res.max_score_diff is None else f", ORT vs PyTorch max |score diff| {res.max_score_diff:.2g}"
    _echo(f"exported {res.method} to {res.path} (input (N, {', '.join(map(str, res.input_shape))}), "
          f"tau={res.threshold:.6g}{diff}, {res.seconds:.1f} s)")


@app.command()
def run(
    graph: Annotated[Path, typer.Argument(help="ONNX graph made by `oodgate export`.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
    provider: Provider = "auto",
    threshold: Annotated[Optional[float], typer.Option(help="Override the calibrated threshold.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | jsonl | csv")] = "table",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to a file instead of stdout.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    force: Force = False,
) -> None:
    """Classify images and accept/reject each as in- or out-of-distribution."""
    from .runtime.session import Session

    if fmt not in ("table", "jsonl", "csv"):
        raise OodgateError(f"--format {fmt!r}: use table, jsonl or csv")
    files = _expand_inputs(inputs)
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
            cls = str(r.get("class", r["label"]))[:16]
            lines.append(f"{r['input']:<{width}}  {cls:<16} {r['score']:>10.4f}  {'OOD' if r['is_ood'] else 'ID'}")
        text = "\n".join(lines)
    _write_text(output, text, force)


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
    force: Force = False,
) -> None:
    """Score an ID set and OOD sets with the graph; print AUROC / FPR95 (both conventions) / AUPR and what other
    thresholds would reject/accept; optionally write a report folder with plots."""
    from .data.sets import load_image_set
    from .evaluation.evaluate import evaluate_session, metrics_table
    from .evaluation.report import threshold_options, threshold_table, write_report
    from .runtime.session import Session

    try:
        tprs = [float(t) for t in tpr_grid.split(",") if t.strip()]
    except ValueError:
        raise OodgateError(f"--tpr-grid {tpr_grid!r}: give comma-separated shares, e.g. 0.9,0.95,0.99") from None
    if report is not None and (report / "metrics.json").exists() and not force:
        raise OodgateError(f"{report} already holds a report: choose another folder or pass --force")
    id_set = load_image_set(id_data)
    oods = {name: load_image_set(spec) for name, spec in _parse_named(ood).items()}
    with Session(graph, provider) as sess:
        ev = evaluate_session(sess, id_set, oods, batch_size=batch_size)
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
    force: Force = False,
) -> None:
    """Compare the graph under each runtime with the PyTorch reference (or a golden file); exit 1 on failure."""
    tolerances = dict(providers=provider or ["cpu"], atol=atol, rtol=rtol, margin=margin, metric_tol=metric_tol)
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
    trt_check: Annotated[bool, typer.Option("--trt-check", help="Also audit the graph against TensorRT's ONNX "
                                                                "parser; exit 1 on errors.")] = False,
) -> None:
    """Show what is inside a graph: method, threshold, preprocessing, inputs/outputs, operators."""
    from .runtime.inspect import describe_graph, format_description

    desc = describe_graph(graph)
    findings = None
    if trt_check:  # -- TensorRT audit (issue 6) --
        from .runtime.trt_audit import audit_graph, format_findings, has_errors

        findings = audit_graph(graph)
        desc["trt_check"] = [f.to_dict() for f in findings]
    _echo(json.dumps(desc, indent=1) if as_json else format_description(desc))
    if findings is not None:
        if not as_json:
            _echo(format_findings(findings, graph.name))
        if has_errors(findings):
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
    method: Annotated[Optional[list[str]], typer.Option("--method", "-m", help="Only these methods "
                                                        "(repeatable).")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Also write the Markdown report here.")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite files from an earlier demo.")] = False,
) -> None:
    """The embedded default end to end: calibrate detectors on digits, export, run with ONNX Runtime, report."""
    from .demo import demo_report, run_demo

    result = run_demo(out, method, overwrite=force)
    text = demo_report(result)
    _echo("")
    _echo(text)
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


if __name__ == "__main__":
    main()
