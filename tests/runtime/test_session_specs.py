"""Session takes the CLI's provider specs: 'trt-native:fp16,batch=1/8/32' reaches the native runner as precision
and batch profile, without a GPU (the runner is replaced by a recorder)."""

from __future__ import annotations

import pytest

import oodgate.runtime.tensorrt as trt
from oodgate.errors import OodgateError
from oodgate.runtime.engine_cache import BatchProfile
from oodgate.runtime.session import Session


class _Recorder:
    calls: list[dict] = []

    def __init__(self, path, **kwargs):
        _Recorder.calls.append(kwargs)

    def get_providers(self):
        return [trt.PROVIDER_NAME]

    def get_outputs(self):
        return []


@pytest.mark.parametrize("spec,options,expected", [
    ("trt-native:fp16,batch=1/8/32", None, {"precision": "fp16", "profile": BatchProfile(1, 8, 32)}),
    ("trt-native", None, {}),
    ("trt-native:fp32", [{"cache_dir": "/tmp/c"}], {"precision": "fp32", "cache_dir": "/tmp/c"}),
])
def test_native_specs_reach_the_runner(energy_graph, monkeypatch, spec, options, expected):
    monkeypatch.setattr(trt, "TensorRTRunner", _Recorder)
    _Recorder.calls = []
    sess = Session(energy_graph, spec, provider_options=options)
    assert _Recorder.calls == [expected] and sess.providers == ["trt-native"]


def test_bad_specs_are_refused_by_session(energy_graph):
    with pytest.raises(OodgateError, match="takes no options"):
        Session(energy_graph, "cpu:fp16")
    with pytest.raises(OodgateError, match="unknown provider 'gpu'"):
        Session(energy_graph, "gpu")
