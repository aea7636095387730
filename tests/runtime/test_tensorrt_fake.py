"""The native TensorRT runner's plumbing on a CPU: TensorRT, cuda-python and Polygraphy's loaders and TrtRunner are
replaced by stand-ins with their Python surface (the "engine" runs the graph with ONNX Runtime), so that the engine
cache decisions, batching over the profile, padding, the runner's life cycle and the Session API are exercised here.
The build itself runs for real with TensorRT-RTX's ahead-of-time builder in test_trt_check.py; what only a GPU
can check (running an engine, FP16 numerics) is in test_tensorrt_runner.py, marked `gpu`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from oodgate.runtime.metadata import reseal_graph

import oodgate.runtime.tensorrt as trt_runner
from oodgate.runtime import Session
from oodgate.runtime.engine_cache import sidecar_path
from oodgate.runtime.tensorrt import BuildReport


class FakeEngine:
    """A deserialized engine: its I/O tensor names and modes, and ONNX Runtime to compute with."""

    def __init__(self, graph, profile):
        self.sess = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.profile_limits = (profile[0], profile[2])
        self.batches: list[int] = []

    num_io_tensors = property(lambda self: 1 + len(self.outputs))

    def get_tensor_name(self, i):
        return ([self.input] + self.outputs)[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == self.input else "OUTPUT"


class FakeTrtRunner:
    """Polygraphy's TrtRunner: activate / infer(feed_dict) -> {name: host array} / deactivate."""

    def __init__(self, engine, name=None):
        self.engine, self.name, self.is_active = engine, name, False

    def activate(self):
        assert not self.is_active
        self.is_active = True

    def infer(self, feed_dict):
        assert self.is_active, "infer() on an inactive runner"
        (name, x), = feed_dict.items()
        lo, hi = self.engine.profile_limits
        assert name == self.engine.input and lo <= len(x) <= hi, f"batch {len(x)} outside the profile {lo}..{hi}"
        self.engine.batches.append(len(x))
        return dict(zip(self.engine.outputs, self.engine.sess.run(self.engine.outputs, {name: x})))

    def deactivate(self):
        assert self.is_active
        self.is_active = False


@pytest.fixture
def fake_gpu(monkeypatch):
    """TensorRT 10, cuda-python and Polygraphy stand-ins; returns a record of builds, engines and runners."""
    record = SimpleNamespace(builds=[], engines=[], runners=[], refuse_next=False)

    def engine_from_bytes(data):
        def load():
            if record.refuse_next:
                record.refuse_next = False
                raise RuntimeError("Could not deserialize engine")  # Polygraphy raises PolygraphyException
            kind, graph, profile = data.decode().split("|")
            engine = FakeEngine(graph, [int(v) for v in profile.split(",")])
            record.engines.append(engine)
            return engine
        return load

    def trt_runner_(engine, name=None):
        runner = FakeTrtRunner(engine, name)
        record.runners.append(runner)
        return runner

    fake_trt = SimpleNamespace(__version__="10.99.0", TensorIOMode=SimpleNamespace(OUTPUT="OUTPUT", INPUT="INPUT"))
    fake_cudart = SimpleNamespace(
        cudaSetDevice=lambda device: (0,),
        cudaGetDeviceProperties=lambda device: (0, SimpleNamespace(name=b"Fake GPU 24GB\0\0\0", major=8, minor=9)))
    fake_pg = SimpleNamespace(EngineFromBytes=engine_from_bytes, TrtRunner=trt_runner_)

    def build(graph, *, precision, profile, **kw):
        record.builds.append(SimpleNamespace(graph=graph, precision=precision, profile=profile, **kw))
        return f"engine|{graph}|{','.join(map(str, profile.to_list()))}".encode(), BuildReport(precision,
                                                                                             profile.to_list())

    monkeypatch.setattr(trt_runner, "import_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(trt_runner, "import_cudart", lambda: fake_cudart)
    monkeypatch.setattr(trt_runner, "import_polygraphy", lambda **kw: fake_pg)
    monkeypatch.setattr(trt_runner, "_silenced", lambda verbose: __import__("contextlib").nullcontext())
    monkeypatch.setattr(trt_runner, "build_engine", build)
    return record


def trt_session(graph, cache, **opts):
    return Session(graph, providers="trt-native", provider_options=[{"cache_dir": cache, **opts}])


def test_same_outputs_as_onnx_runtime_through_chunks_and_padding(fake_gpu, energy_graph, digits_test, tmp_path):
    with Session(energy_graph, providers="cpu") as cpu:
        x = cpu.preprocess(digits_test.images[:40])
        ref = cpu.run_array(x)
    with trt_session(energy_graph, tmp_path, profile=(2, 8, 16)) as sess:
        assert sess.providers == ["trt-native"]
        got = sess.run_array(x)
        one = sess.run_array(x[:1])  # below the profile's min: padded to 2, the pad dropped again
        pred = sess.run(digits_test.images[:5], batch_size=3)
    engine = fake_gpu.engines[0]
    assert engine.batches[:3] == [16, 16, 8] and engine.batches[3] == 2
    for name in ("logits", "score", "is_ood", "label"):
        assert got[name].dtype == ref[name].dtype and got[name].shape == ref[name].shape
        np.testing.assert_array_equal(got[name], ref[name])
        np.testing.assert_array_equal(one[name], ref[name][:1])
    np.testing.assert_array_equal(pred.scores, ref["score"][:5])
    assert fake_gpu.runners and not any(r.is_active for r in fake_gpu.runners), "a TrtRunner was not deactivated"


def test_engine_is_built_once_then_loaded_from_the_cache(fake_gpu, energy_graph, tmp_path):
    with trt_session(energy_graph, tmp_path, profile=(1, 4, 8)) as first:
        assert first._sess.cache_status == "miss"
        path = first._sess.engine_path
    assert path.parent == tmp_path and path.name.startswith("digits-energy-fake-gpu-24gb-sm89-fp32-b1-4-8")
    assert sidecar_path(path).is_file() and len(fake_gpu.builds) == 1
    with trt_session(energy_graph, tmp_path, profile=(1, 4, 8)) as again:
        assert again._sess.cache_status == "hit"
    assert len(fake_gpu.builds) == 1
    with trt_session(energy_graph, tmp_path, profile=(1, 4, 8), precision="fp16") as half:
        assert half._sess.cache_status == "miss" and half._sess.engine_path != path
    assert fake_gpu.builds[-1].precision == "fp16" and fake_gpu.builds[-1].fp32_head is True


def test_a_re_exported_graph_is_rebuilt_with_a_warning(fake_gpu, energy_graph, tmp_path):
    import onnx

    graph = tmp_path / "model.onnx"
    graph.write_bytes(energy_graph.read_bytes())
    trt_session(graph, tmp_path / "cache").close()
    model = onnx.load(str(graph))
    model.doc_string = "re-exported"
    reseal_graph(model)  # a deliberate edit, re-sealed (an unsealed edit is refused on load, issue 13)
    onnx.save(model, str(graph))
    with pytest.warns(UserWarning, match="graph_sha256"):
        with trt_session(graph, tmp_path / "cache") as sess:
            assert sess._sess.cache_status == "stale"
    assert len(fake_gpu.builds) == 2


def test_an_engine_tensorrt_refuses_is_rebuilt(fake_gpu, energy_graph, tmp_path):
    trt_session(energy_graph, tmp_path).close()
    fake_gpu.refuse_next = True
    with pytest.warns(UserWarning, match="refused"):
        with trt_session(energy_graph, tmp_path) as sess:
            assert sess._sess.cache_status == "corrupt"
    assert len(fake_gpu.builds) == 2


def test_an_explicit_engine_file_of_unknown_origin_is_neither_loaded_nor_overwritten(fake_gpu, energy_graph, tmp_path):
    foreign = tmp_path / "downloaded.engine"
    foreign.write_bytes(b"engine|/somewhere/else.onnx|1,1,1")
    with pytest.warns(UserWarning, match="not built by oodgate"):
        with trt_session(energy_graph, tmp_path / "cache", engine_path=foreign) as sess:
            assert sess._sess.cache_status == "miss" and sess._sess.engine_path.parent == tmp_path / "cache"
    assert len(fake_gpu.builds) == 1 and not fake_gpu.engines[0].batches
    assert foreign.read_bytes() == b"engine|/somewhere/else.onnx|1,1,1" and not sidecar_path(foreign).exists()


def test_a_stale_explicit_engine_file_is_rebuilt_in_place(fake_gpu, energy_graph, tmp_path):
    import onnx

    graph = tmp_path / "model.onnx"
    graph.write_bytes(energy_graph.read_bytes())
    deployed = tmp_path / "deployed.engine"
    trt_session(graph, tmp_path / "cache", engine_path=deployed).close()
    model = onnx.load(str(graph))
    model.doc_string = "re-exported"
    reseal_graph(model)  # a deliberate edit, re-sealed (an unsealed edit is refused on load, issue 13)
    onnx.save(model, str(graph))
    with pytest.warns(UserWarning, match="graph_sha256"):
        with trt_session(graph, tmp_path / "cache", engine_path=deployed) as sess:
            assert sess._sess.cache_status == "stale" and sess._sess.engine_path == deployed
    assert len(fake_gpu.builds) == 2
