"""The TensorRT engine cache: keying and invalidation, with the GPU and TensorRT facts injected (no TensorRT needed)."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from oodgate.errors import OodgateError
from oodgate.runtime.engine_cache import (BatchProfile, DeviceFacts, EngineCache, EngineKey, default_cache_dir,
                                          engine_key, graph_sha256, sidecar_path)

A100 = DeviceFacts("NVIDIA A100-SXM4-40GB", "8.0", "10.3.0")
ENGINE = b"serialized-engine\x00\x01" * 64


@pytest.fixture
def graph(tmp_path):
    path = tmp_path / "digits-scale.onnx"
    path.write_bytes(b"graph bytes v1")
    return path


def key_for(graph, device=A100, precision="fp16", profile=(1, 8, 32), **build) -> EngineKey:
    return engine_key(graph, device, precision, profile, input_name="input", input_shape=(1, 16, 16),
                      build=build or {"fp32_head": True})


# -- the batch profile ---------------------------------------------------------------------------------------------

def test_profile_parse_forms():
    assert BatchProfile.parse("1,8,32") == BatchProfile(1, 8, 32)
    assert BatchProfile.parse((2, 4, 8)) == BatchProfile(2, 4, 8)
    assert BatchProfile.parse(16) == BatchProfile(1, 16, 16)
    assert BatchProfile(1, 8, 32).shapes((3, 224, 224)) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))


@pytest.mark.parametrize("bad", ["8,1,32", (0, 1, 2), (1, 2), "a,b,c", (1.5, 2, 3)])
def test_profile_rejects_bad_values_with_an_example(bad):
    with pytest.raises(OodgateError, match="1,8,32|1, 8, 32"):
        BatchProfile.parse(bad)


# -- the key ---------------------------------------------------------------------------------------------------------

def test_key_holds_every_fact_and_hashes_the_graph_file(graph):
    key = key_for(graph)
    fields = key.fields()
    assert fields["graph_sha256"] == graph_sha256(graph) and len(fields["graph_sha256"]) == 64
    assert (fields["tensorrt_version"], fields["gpu_name"], fields["compute_capability"]) == ("10.3.0",
                                                                                          A100.gpu_name, "8.0")
    assert fields["precision"] == "fp16" and fields["profile"] == [1, 8, 32]
    assert fields["input_shape"] == [1, 16, 16] and fields["oodgate_version"]
    assert key.digest() == key_for(graph).digest()  # deterministic
    json.dumps(fields)  # what the sidecar stores


@pytest.mark.parametrize("change", [
    dict(device=DeviceFacts("NVIDIA A100-SXM4-40GB", "8.0", "10.4.0")),
    dict(device=DeviceFacts("NVIDIA H100 80GB HBM3", "9.0", "10.3.0")),
    dict(device=DeviceFacts("NVIDIA A100-SXM4-40GB", "8.6", "10.3.0")),
    dict(precision="fp32"),
    dict(profile=(1, 16, 32)),
    dict(fp32_head=False),
], ids=["tensorrt-version", "gpu", "compute-capability", "precision", "profile", "build-flags"])
def test_every_fact_changes_the_key(graph, change):
    assert key_for(graph, **change).digest() != key_for(graph).digest()


def test_graph_bytes_change_the_key(graph):
    before = key_for(graph)
    graph.write_bytes(b"graph bytes v2")
    assert key_for(graph).graph_sha256 != before.graph_sha256


def test_unknown_precision_is_refused(graph):
    with pytest.raises(OodgateError, match="fp32, fp16"):
        key_for(graph, precision="int8")


def test_slots_separate_gpus_precisions_and_profiles(graph, tmp_path):
    cache = EngineCache(tmp_path / "cache")
    path = cache.engine_path(key_for(graph), graph.stem)
    assert path.name == "digits-scale-nvidia-a100-sxm4-40gb-sm80-fp16-b1-8-32.engine"
    others = [key_for(graph, device=DeviceFacts("NVIDIA H100 80GB HBM3", "9.0", "10.3.0")),
              key_for(graph, precision="fp32"), key_for(graph, profile=(1, 1, 1))]
    assert len({path, *(cache.engine_path(k, graph.stem) for k in others)}) == 4
    # a new graph or TensorRT version lands in the same slot, where the sidecar check catches it
    graph.write_bytes(b"other graph")
    assert cache.engine_path(key_for(graph), graph.stem) == path


# -- lookup and invalidation -----------------------------------------------------------------------------------------

def test_miss_then_store_then_hit_returns_the_verified_bytes(graph, tmp_path):
    cache = EngineCache(tmp_path / "cache")
    key = key_for(graph)
    path = cache.engine_path(key, graph.stem)
    assert cache.lookup(key, path).status == "miss"
    cache.store(key, ENGINE, path)
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["format"] == "oodgate-trt-engine" and meta["key"] == key.fields()
    assert meta["engine_bytes"] == len(ENGINE) and meta["key_digest"] == key.digest()
    found = cache.lookup(key, path)
    assert found.hit and found.data == ENGINE
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize("field,new", [("graph_sha256", "0" * 64), ("tensorrt_version", "10.4.0"),
                                       ("gpu_name", "NVIDIA L4"), ("compute_capability", "8.9"),
                                       ("precision", "fp32"), ("profile", BatchProfile(1, 1, 64)),
                                       ("oodgate_version", "9.9.9")])
def test_an_engine_built_for_other_facts_is_stale_naming_the_field(graph, tmp_path, field, new):
    cache = EngineCache(tmp_path)
    built = key_for(graph)
    path = tmp_path / "deployed.engine"  # an explicit engine file: the same check applies
    cache.store(built, ENGINE, path)
    now = dataclasses.replace(built, **{field: new})
    found = cache.lookup(now, path)
    assert found.status == "stale" and found.changed == (field,) and found.data is None
    assert field in found.reason


def test_re_exported_graph_makes_the_cached_engine_stale(graph, tmp_path):
    cache = EngineCache(tmp_path)
    key = key_for(graph)
    path = cache.engine_path(key, graph.stem)
    cache.store(key, ENGINE, path)
    graph.write_bytes(b"graph bytes v2: re-exported with another threshold")
    found = cache.lookup(key_for(graph), path)
    assert found.status == "stale" and found.changed == ("graph_sha256",)


@pytest.mark.parametrize("damage", ["truncate", "flip", "replace"])
def test_a_damaged_engine_is_corrupt(graph, tmp_path, damage):
    cache = EngineCache(tmp_path)
    key = key_for(graph)
    path = cache.engine_path(key, graph.stem)
    cache.store(key, ENGINE, path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[10] ^= 0xFF
    else:
        data = bytearray(b"x" * len(data))
    path.write_bytes(bytes(data))
    found = cache.lookup(key, path)
    assert found.status == "corrupt" and found.data is None and "SHA-256" in found.reason


@pytest.mark.parametrize("sidecar", [None, "{not json", json.dumps({"format": "something-else"}), "[1, 2]"])
def test_an_engine_without_an_oodgate_sidecar_is_foreign(graph, tmp_path, sidecar):
    path = tmp_path / "model.engine"
    path.write_bytes(ENGINE)
    if sidecar is not None:
        sidecar_path(path).write_text(sidecar)
    found = EngineCache(tmp_path).lookup(key_for(graph), path)
    assert found.status == "foreign" and not found.hit


def test_an_older_sidecar_format_is_stale(graph, tmp_path):
    cache = EngineCache(tmp_path)
    key = key_for(graph)
    path = tmp_path / "model.engine"
    cache.store(key, ENGINE, path)
    meta = json.loads(sidecar_path(path).read_text())
    meta["format_version"] = 0
    sidecar_path(path).write_text(json.dumps(meta))
    assert cache.lookup(key, path).status == "stale"


def test_store_replaces_a_stale_engine_and_invalidate_removes_both_files(graph, tmp_path):
    cache = EngineCache(tmp_path)
    old = key_for(graph)
    path = cache.engine_path(old, graph.stem)
    cache.store(old, b"old engine", path)
    graph.write_bytes(b"graph bytes v2")
    new = key_for(graph)
    assert cache.lookup(new, path).status == "stale"
    cache.store(new, ENGINE, path)
    assert cache.lookup(new, path).data == ENGINE
    assert cache.lookup(old, path).status == "stale"
    cache.invalidate(path)
    assert not path.exists() and not sidecar_path(path).exists()
    assert cache.lookup(new, path).status == "miss"


def test_timing_cache_is_per_gpu_and_tensorrt_version(tmp_path):
    cache = EngineCache(tmp_path)
    a = cache.timing_cache_path(A100)
    assert a != cache.timing_cache_path(DeviceFacts(A100.gpu_name, A100.compute_capability, "10.4.0"))
    assert a != cache.timing_cache_path(DeviceFacts("NVIDIA L4", "8.9", A100.tensorrt_version))


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OODGATE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "tensorrt"
    monkeypatch.delenv("OODGATE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "oodgate" / "tensorrt"


def test_the_cache_needs_neither_tensorrt_nor_torch():
    assert "tensorrt" not in sys.modules
    import subprocess

    code = ("import sys, oodgate.runtime.engine_cache, oodgate.runtime.tensorrt, oodgate.runtime.precision, "
            "oodgate.runtime.trt_audit, oodgate.runtime.providers, oodgate.evaluation.drift; "
            "bad = [m for m in ('tensorrt', 'torch', 'cuda', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
