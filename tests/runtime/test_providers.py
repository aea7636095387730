"""GPU providers: a missing or silently replaced GPU provider is an error, never a quiet CPU run; the TensorRT and CUDA
execution provider options that oodgate passes to ONNX Runtime."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from oodgate.errors import OodgateError
from oodgate.runtime import Session
from oodgate.runtime.engine_cache import BatchProfile
from oodgate.runtime.session import open_session  # noqa: E402
from oodgate.runtime.providers import (FP16_HEAD_WARNING, cuda_ep_options, ort_cache_dir,
                                       parse_provider_spec, provider_options, tensorrt_ep_options)
from oodgate.runtime.session import PROVIDER_NAMES, ProviderError, check_providers, resolve_providers

GPU_EPS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
needs_cpu_only_ort = pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                                        reason="this ONNX Runtime has the CUDA provider")


@needs_cpu_only_ort
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_requesting_a_gpu_provider_on_this_machine_is_a_clear_error(energy_graph, provider):
    with pytest.raises(ProviderError) as err:
        Session(energy_graph, providers=provider)
    msg = str(err.value)
    assert f"provider '{provider}'" in msg and "onnxruntime-gpu" in msg and "--provider cpu" in msg


@needs_cpu_only_ort
def test_auto_uses_the_cpu_when_there_is_no_gpu_provider(energy_graph):
    with Session(energy_graph, providers="auto") as sess:
        assert sess.providers == ["CPUExecutionProvider"]


def test_unknown_provider_lists_the_names():
    with pytest.raises(OodgateError, match="trt-native"):
        resolve_providers("tpu")
    assert set(PROVIDER_NAMES) == {"auto", "cpu", "cuda", "tensorrt", "trt-native"}


def test_check_providers_flags_a_fallback():
    check_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider",
                                                                       "CPUExecutionProvider"])
    check_providers(["CPUExecutionProvider"], ["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="fell back from TensorrtExecutionProvider"):
        check_providers(GPU_EPS, ["CUDAExecutionProvider", "CPUExecutionProvider"])


class FallbackSession:
    """An onnxruntime-gpu InferenceSession whose GPU provider failed to initialise: ORT then runs on the CPU."""

    created: list[dict] = []

    def __init__(self, path, sess_options=None, providers=None, provider_options=None):
        FallbackSession.created.append({"providers": providers, "provider_options": provider_options})

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def get_outputs(self):  # pragma: no cover - never reached: the check comes first
        raise AssertionError("the fallback was not detected")


@pytest.fixture
def gpu_ort_that_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("OODGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_EPS))
    monkeypatch.setattr(ort, "InferenceSession", FallbackSession)
    FallbackSession.created = []
    return FallbackSession.created


@pytest.mark.parametrize("provider,first", [("cuda", "CUDAExecutionProvider"),
                                            ("tensorrt", "TensorrtExecutionProvider"),
                                            ("auto", "TensorrtExecutionProvider")])
def test_a_silent_cpu_fallback_raises(energy_graph, gpu_ort_that_falls_back, provider, first):
    with pytest.raises(ProviderError, match=f"fell back from {first} to CPUExecutionProvider"):
        Session(energy_graph, providers=provider)
    assert gpu_ort_that_falls_back[0]["providers"][0] == first


def test_gpu_sessions_get_oodgate_s_provider_options(energy_graph, gpu_ort_that_falls_back, tmp_path):
    with pytest.raises(ProviderError):
        Session(energy_graph, providers="tensorrt")
    trt_opts, cuda_opts, cpu_opts = gpu_ort_that_falls_back[0]["provider_options"]
    assert trt_opts["trt_profile_min_shapes"] == "input:1x1x16x16"
    assert trt_opts["trt_profile_opt_shapes"] == "input:32x1x16x16"
    assert trt_opts["trt_profile_max_shapes"] == "input:32x1x16x16"
    assert trt_opts["trt_fp16_enable"] is False and trt_opts["trt_engine_cache_enable"] is True
    assert trt_opts["trt_timing_cache_enable"] is True
    cache = trt_opts["trt_engine_cache_path"]
    assert cache.startswith(str(tmp_path / "cache")) and f"ort{ort.__version__}" in cache
    assert cuda_opts == {"device_id": 0, "use_tf32": 0} and cpu_opts == {}
    with pytest.raises(ProviderError):
        Session(energy_graph, providers="cuda")
    assert gpu_ort_that_falls_back[1]["provider_options"] == [{"device_id": 0, "use_tf32": 0}, {}]


def test_explicit_provider_options_are_passed_unchanged(energy_graph, gpu_ort_that_falls_back):
    mine = [{"trt_fp16_enable": True}, {}, {}]
    with pytest.raises(ProviderError):
        Session(energy_graph, providers="tensorrt", provider_options=mine)
    assert gpu_ort_that_falls_back[0]["provider_options"] == mine


def test_tensorrt_ep_options():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opts = tensorrt_ep_options(input_name="input", input_shape=(3, 224, 224), profile="1,8,64", cache_dir="/c",
                                   workspace_bytes=1 << 30)
    assert opts["trt_profile_min_shapes"] == "input:1x3x224x224"
    assert opts["trt_profile_opt_shapes"] == "input:8x3x224x224"
    assert opts["trt_profile_max_shapes"] == "input:64x3x224x224"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == "/c"
    assert opts["trt_max_workspace_size"] == 1 << 30
    no_cache = tensorrt_ep_options(input_name="input", input_shape=(1, 16, 16))
    assert "trt_engine_cache_enable" not in no_cache


def test_fp16_on_ort_s_tensorrt_ep_warns_that_the_head_is_not_protected():
    with pytest.warns(UserWarning, match="trt-native") as rec:
        opts = tensorrt_ep_options(input_name="input", input_shape=(1, 16, 16), fp16=True)
    assert opts["trt_fp16_enable"] is True and str(rec[0].message) == FP16_HEAD_WARNING


def test_cuda_ep_options():
    assert cuda_ep_options() == {"device_id": 0, "use_tf32": 0}
    assert cuda_ep_options(device_id=1, tf32=True, extra={"gpu_mem_limit": 1 << 30}) == {
        "device_id": 1, "use_tf32": 1, "gpu_mem_limit": 1 << 30}


def test_provider_options_follow_the_provider_list(energy_graph, tmp_path):
    opts = provider_options(["CUDAExecutionProvider", "CPUExecutionProvider"], graph=energy_graph,
                            input_name="input", input_shape=(1, 16, 16), cache_dir=tmp_path)
    assert opts == [{"device_id": 0, "use_tf32": 0}, {}]


def test_ort_engine_cache_folder_changes_with_the_graph(energy_graph, tmp_path):
    copy = tmp_path / energy_graph.name
    copy.write_bytes(energy_graph.read_bytes())
    first = ort_cache_dir(copy, tmp_path / "c")
    assert first == ort_cache_dir(copy, tmp_path / "c")
    copy.write_bytes(energy_graph.read_bytes() + b"\0")
    assert ort_cache_dir(copy, tmp_path / "c") != first


def test_cpu_sessions_are_unchanged(energy_graph):
    import onnxruntime

    x = np.random.default_rng(0).normal(size=(3, 1, 16, 16)).astype(np.float32)
    with Session(energy_graph, providers="cpu") as sess:
        out = sess.run_array(x)
    assert sess.providers == ["CPUExecutionProvider"] and out["score"].shape == (3,)
    plain = onnxruntime.InferenceSession(str(energy_graph), providers=["CPUExecutionProvider"])
    ref = dict(zip(["logits", "score", "is_ood", "label"], plain.run(None, {"input": x})))
    np.testing.assert_allclose(out["score"], ref["score"], rtol=1e-6)
    np.testing.assert_array_equal(out["label"], ref["label"])


# -- provider specs: 'tensorrt:fp16', 'trt-native:fp16,batch=1/8/32' ---------------------------------------------------

@pytest.mark.parametrize("spec,expected", [
    ("cpu", ("cpu", {})), ("tensorrt:fp16", ("tensorrt", {"precision": "fp16"})),
    ("trt-native:fp16,batch=1/8/32", ("trt-native", {"precision": "fp16", "profile": BatchProfile(1, 8, 32)})),
    ("trt-native:fp32", ("trt-native", {"precision": "fp32"})), ("cuda:", ("cuda", {}))])
def test_parse_provider_spec(spec, expected):
    assert parse_provider_spec(spec) == expected


@pytest.mark.parametrize("spec,match", [("cuda:fp16", "takes no options"), ("tensorrt:int8", "use fp16, fp32"),
                                        ("trt-native:batch=8/1/32", "min <= opt <= max")])
def test_bad_provider_specs_say_what_to_write(spec, match):
    with pytest.raises(OodgateError, match=match):
        parse_provider_spec(spec)


def test_open_session_passes_fp16_and_the_profile_to_ort_s_tensorrt_ep(energy_graph, gpu_ort_that_falls_back):
    with pytest.warns(UserWarning, match="cannot keep the detector head in FP32"):
        with pytest.raises(ProviderError, match="fell back"):
            open_session(energy_graph, "tensorrt:fp16,batch=2/4/8")
    trt_opts = gpu_ort_that_falls_back[0]["provider_options"][0]
    assert trt_opts["trt_fp16_enable"] is True and trt_opts["trt_profile_max_shapes"] == "input:8x1x16x16"


def test_open_session_plain_names(energy_graph):
    with open_session(energy_graph, "cpu") as sess:
        assert sess.providers == ["CPUExecutionProvider"]


@needs_cpu_only_ort
def test_cli_run_refuses_a_missing_gpu_provider(energy_graph, digit_pngs):
    from typer.testing import CliRunner

    from oodgate.cli import app

    res = CliRunner().invoke(app, ["run", str(energy_graph), str(digit_pngs[0]), "--provider", "cuda"])
    assert res.exit_code != 0 and isinstance(res.exception, ProviderError)
    res = CliRunner().invoke(app, ["run", str(energy_graph), str(digit_pngs[0]), "--provider", "cpu"])
    assert res.exit_code == 0 and "decision" in res.output
