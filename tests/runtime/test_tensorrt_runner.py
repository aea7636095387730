"""The native TensorRT runner. Without TensorRT (this machine): a clear ProviderError, never a CPU run. With TensorRT
and a GPU (marked `gpu`): parity with ONNX Runtime in FP32, a finite FP16 score with the FP32 head, the engine
cache reused and rebuilt when the graph changes."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from oodgate.runtime import Session
from oodgate.runtime.session import open_session
from oodgate.runtime.session import ProviderError, resolve_providers
from oodgate.runtime.tensorrt import INSTALL_HINT, tensorrt_unavailable_reason

UNAVAILABLE = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"TensorRT runner unavailable: {UNAVAILABLE}")
without_tensorrt = pytest.mark.skipif(UNAVAILABLE is None, reason="TensorRT is installed here")


def test_importing_the_runner_imports_neither_tensorrt_nor_cuda():
    code = ("import sys, oodgate.runtime.tensorrt as t; "
            "assert not {'tensorrt', 'cuda', 'torch'} & set(sys.modules), sorted(sys.modules); print(t.PROVIDER_NAME)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "trt-native", proc.stderr


@without_tensorrt
def test_trt_native_without_tensorrt_is_a_clear_error(energy_graph):
    with pytest.raises(ProviderError, match=r'pip install "oodgate\[tensorrt\]" --extra-index-url https://pypi.nvidia.com'):
        Session(energy_graph, providers="trt-native")
    with pytest.raises(ProviderError, match="tensorrt package"):
        resolve_providers("trt-native")
    with pytest.raises(ProviderError, match="tensorrt package"):
        open_session(energy_graph, "trt-native:fp16,batch=1/8/32")


@pytest.fixture
def fake_tensorrt(tmp_path, monkeypatch):
    """fake_tensorrt(source): a `tensorrt` package whose __init__.py is ``source``, importable for one test."""
    import importlib

    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source: str) -> None:
        sys.modules.pop("tensorrt", None)
        (tmp_path / "tensorrt").mkdir(exist_ok=True)
        (tmp_path / "tensorrt" / "__init__.py").write_text(source)
        importlib.invalidate_caches()

    saved = sys.modules.pop("tensorrt", None)
    yield make
    sys.modules.pop("tensorrt", None)
    if saved is not None:
        sys.modules["tensorrt"] = saved


@pytest.mark.parametrize("source,expected", [
    # the bindings wheel installed without tensorrt-cu12-libs (the placeholder that needs NVIDIA's index)
    ("raise ImportError('libnvinfer.so.10: cannot open shared object file: No such file or directory')",
     r"installed but cannot be loaded \(ImportError: libnvinfer\.so\.10: cannot open shared object file"),
    ("import tensorrt_libs_missing_here", r"installed but cannot be loaded: it needs the module "
                                           r"'tensorrt_libs_missing_here'"),
    ("raise OSError('libcudart.so.12: cannot open shared object file')", r"installed but cannot be loaded \(OSError"),
    ("__version__ = '11.4.0'", r"TensorRT 11\.4\.0 is installed; oodgate's native runner needs TensorRT 10"),
])
def test_unavailable_reason_tells_a_missing_library_from_a_missing_package(fake_tensorrt, source, expected):
    fake_tensorrt(source)
    reason = tensorrt_unavailable_reason()
    assert reason is not None and re.search(expected, reason), reason
    assert "not installed" not in reason.split(":")[0]
    assert reason.endswith(INSTALL_HINT) and "cu13" not in INSTALL_HINT and "TensorRT 10 for CUDA 12" in INSTALL_HINT


def test_unavailable_reason_when_tensorrt_is_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what an absent package looks like to import
    reason = tensorrt_unavailable_reason()
    assert reason.startswith("the native TensorRT runner needs the tensorrt package, which is not installed: "
                             'pip install "oodgate[tensorrt]" --extra-index-url https://pypi.nvidia.com'), reason


@without_tensorrt
def test_parity_skips_trt_native_with_the_reason(energy_graph, digits_calibration):
    from oodgate.exporter.reference import parity

    cal = digits_calibration("energy")
    x = np.random.default_rng(0).normal(size=(4, 1, 16, 16)).astype(np.float32)
    report = parity(energy_graph, x, calibration=cal, providers=["cpu", "trt-native"])
    assert "trt-native" in report.skipped and "tensorrt" in report.skipped["trt-native"]
    assert not report.passed  # a requested runtime that cannot run fails the check (issue 13) ...
    allowed = parity(energy_graph, x, calibration=cal, providers=["cpu", "trt-native"], allow_skip=True)
    assert allowed.passed and "trt-native" in allowed.skipped  # ... unless skipping is allowed explicitly


# -- on a GPU with TensorRT ------------------------------------------------------------------------------------------

@pytest.mark.gpu
@needs_tensorrt
def test_fp32_engine_matches_onnx_runtime_and_is_cached(energy_graph, digits_test, tmp_path, assert_outputs_match):
    with Session(energy_graph, providers="cpu") as ref_sess:
        x = ref_sess.preprocess(digits_test.images[:40])
        ref = ref_sess.run_array(x)
    opts = [{"precision": "fp32", "profile": (1, 8, 16), "cache_dir": tmp_path}]
    with Session(energy_graph, providers="trt-native", provider_options=opts) as sess:
        assert sess.providers == ["trt-native"] and sess._sess.cache_status == "miss"
        got = sess.run_array(x)  # 40 inputs through a max-16 profile: split into chunks
        assert_outputs_match(got, ref, sess.threshold, "TensorRT fp32")
        single = sess.run_array(x[:1])
        np.testing.assert_allclose(single["score"], ref["score"][:1], rtol=1e-4, atol=1e-4)
    with Session(energy_graph, providers="trt-native", provider_options=opts) as again:
        assert again._sess.cache_status == "hit"


@pytest.mark.gpu
@needs_tensorrt
def test_fp16_engine_keeps_the_scale_head_finite(digits_graph, digits_test, tmp_path):
    from oodgate.evaluation.drift import metric_drift

    graph = digits_graph("scale")
    with Session(graph, providers="cpu") as ref_sess:
        x = ref_sess.preprocess(digits_test.images[:64])
        ref = ref_sess.run_array(x)
    opts = [{"precision": "fp16", "profile": (1, 32, 64), "cache_dir": tmp_path}]
    with Session(graph, providers="trt-native", provider_options=opts) as sess:
        got = sess.run_array(x)
        assert sess._sess.build_report.fp32_head["precision_set"] > 0
    assert np.isfinite(got["score"]).all()
    half = len(x) // 2  # a stand-in split: the drift function itself is tested on CPU
    drift = metric_drift(ref["score"][:half], ref["score"][half:], got["score"][:half], got["score"][half:])
    assert drift.nonfinite_scores == 0


@pytest.mark.gpu
@needs_tensorrt
def test_a_re_exported_graph_rebuilds_the_engine(energy_graph, tmp_path):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(energy_graph.read_bytes())
    opts = [{"profile": (1, 4, 4), "cache_dir": tmp_path / "cache"}]
    Session(graph, providers="trt-native", provider_options=opts).close()
    import onnx

    model = onnx.load(str(graph))
    model.doc_string = "re-exported"
    onnx.save(model, str(graph))
    with pytest.warns(UserWarning, match="graph_sha256"):
        with Session(graph, providers="trt-native", provider_options=opts) as sess:
            assert sess._sess.cache_status == "stale"
