"""The Triton model repository: for every method's digits graph, config.pbtxt parses into tritonclient's
ModelConfig with the types, dims, reshape, batching and parameters of the graph; inconsistent configs are refused
with the mismatch named; nothing is written half or overwritten without asking; no torch on this path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from oodgate.detectors import available_detectors
from oodgate.errors import ArtifactError, OodgateError

try:
    from tritonclient.grpc import model_config_pb2 as pb2
except (ImportError, RuntimeError):  # CI installs it (.ci/run): there a missing tritonclient fails, never skips
    if os.environ.get("CI"):
        raise
    pytest.skip("tritonclient (pip install 'oodgate[triton]') is needed", allow_module_level=True)
from google.protobuf import text_format  # noqa: E402  (after the tritonclient check)

from oodgate.serving.triton import (  # noqa: E402
    TritonConfigError, check_triton_config, check_triton_model, triton_config_text, write_triton_repo)


def parse(path: Path):
    config = pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


@pytest.mark.parametrize("method", available_detectors())
def test_every_method_gets_a_config_that_matches_its_graph(method, digits_graph, tmp_path):
    import onnx

    from oodgate.runtime import read_graph_info

    graph = digits_graph(method)
    info = read_graph_info(graph)
    model = write_triton_repo(graph, tmp_path / "repo", name=f"digits_{method}", max_batch_size=16,
                              preferred_batch_sizes=(4, 8))
    assert model.config_path == tmp_path / "repo" / f"digits_{method}" / "config.pbtxt"
    assert model.model_path.read_bytes() == graph.read_bytes()
    config = parse(model.config_path)  # parsed independently of oodgate's own check
    assert (config.name, config.backend, config.max_batch_size) == (f"digits_{method}", "onnxruntime", 16)
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    [inp] = config.input
    assert (inp.name, pb2.DataType.Name(inp.data_type), list(inp.dims)) == ("input", "TYPE_FP32", [1, 16, 16])
    outputs = {o.name: o for o in config.output}
    assert list(outputs) == ["logits", "score", "is_ood", "label"]
    proto = onnx.load(str(model.model_path), load_external_data=False)
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    n_logits = shapes["logits"][1]  # 10 classes; MOS's graph answers group logits
    assert n_logits == (14 if method == "mos" else 10)
    assert pb2.DataType.Name(outputs["logits"].data_type) == "TYPE_FP32"
    assert list(outputs["logits"].dims) == [n_logits]
    assert not outputs["logits"].HasField("reshape")
    for name, dtype in (("score", "TYPE_FP32"), ("is_ood", "TYPE_BOOL"), ("label", "TYPE_INT64")):
        out = outputs[name]
        assert pb2.DataType.Name(out.data_type) == dtype and list(out.dims) == [1], name
        assert out.HasField("reshape") and list(out.reshape.shape) == [], name
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert float(params["oodgate_threshold"]) == info.threshold
    assert params["oodgate_method"] == info.method == method
    assert params["oodgate_calibration_hash"] == info.calibration_hash and len(info.calibration_hash) == 64
    # the graph really has these outputs: rank-1 (batch) scalars, (batch, C) logits
    assert {k: len(v) for k, v in shapes.items()} == {"logits": 2, "score": 1, "is_ood": 1, "label": 1}
    assert check_triton_model(model.folder, graph).name == f"digits_{method}"


@pytest.fixture(scope="module")
def dice_config(digits_graph) -> tuple[Path, str]:
    graph = digits_graph("dice")
    return graph, triton_config_text(graph, name="gate", max_batch_size=8)


@pytest.mark.parametrize("old, new, named", [
    ('data_type: TYPE_INT64', 'data_type: TYPE_INT32', "output 'label': data_type TYPE_INT32"),
    ('dims: [ 10 ]', 'dims: [ 9 ]', "output 'logits': axis 1 is 9 in the config but 10 in the graph"),
    ('dims: [ 1, 16, 16 ]', 'dims: [ 16, 16 ]', "input 'input': the config gives rank 3"),
    ('    reshape: { shape: [ ] }\n', '', "output 'score': the config gives rank 2 [-1, 1], the graph has rank 1"),
    ('name: "is_ood"', 'name: "ood"', "outputs ['label', 'logits', 'ood', 'score'] in the config"),
    ('max_batch_size: 8', 'max_batch_size: 0', "max_batch_size 0"),
    ('max_queue_delay_microseconds: 100', 'preferred_batch_size: [ 64 ]',
     "preferred_batch_size 64 is outside 1..max_batch_size (8)"),
    ('backend: "onnxruntime"', 'backend: "python"', "backend 'python'"),
    ('string_value: "dice"', 'string_value: "energy"', "parameter oodgate_method is 'energy'"),
    ('key: "oodgate_threshold" value: { string_value: "', 'key: "oodgate_threshold" value: { string_value: "1',
     "parameter oodgate_threshold"),
    ('name: "gate"', 'name: "other"', "differs from the model folder 'gate'"),
])
def test_inconsistent_configs_are_refused_naming_the_mismatch(dice_config, old, new, named):
    graph, text = dice_config
    assert old in text
    check_triton_config(text, graph, model_name="gate")  # the original is consistent
    with pytest.raises(TritonConfigError) as exc:
        check_triton_config(text.replace(old, new, 1), graph, model_name="gate")
    assert named in str(exc.value) and "\n" not in str(exc.value)


def test_dynamic_batching_is_required(dice_config):
    graph, text = dice_config
    start = text.index("dynamic_batching {")
    without = text[:start] + text[text.index("}\n", start) + 2:]
    with pytest.raises(TritonConfigError, match="no dynamic_batching"):
        check_triton_config(without, graph)


def test_unparsable_config_is_a_one_line_error(dice_config):
    graph, text = dice_config
    with pytest.raises(TritonConfigError, match="not a valid Triton model config"):
        check_triton_config(text.replace("max_batch_size: 8", "max_batch: 8"), graph)


def test_tensorrt_accelerator_profile_follows_the_batch_range(digits_graph, tmp_path):
    graph = digits_graph("energy")
    model = write_triton_repo(graph, tmp_path, name="trt", max_batch_size=16, preferred_batch_sizes=(8,),
                              instance_kind="gpu", accelerator="tensorrt:fp16", trt_cache_dir="/var/cache/trt")
    config = parse(model.config_path)
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    [acc] = config.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(acc.parameters)
    assert acc.name == "tensorrt" and params["precision_mode"] == "FP16"
    assert params["trt_profile_min_shapes"] == "input:1x1x16x16"
    assert params["trt_profile_opt_shapes"] == "input:8x1x16x16"
    assert params["trt_profile_max_shapes"] == "input:16x1x16x16"
    assert params["trt_engine_cache_enable"] == "1" and params["trt_engine_cache_path"] == "/var/cache/trt"
    text = model.config_text
    with pytest.raises(TritonConfigError, match="trt_profile_max_shapes 'input:32x1x16x16' does not fit"):
        check_triton_config(text.replace("input:16x1x16x16", "input:32x1x16x16"), graph)
    with pytest.raises(TritonConfigError, match="batch 12 != max_batch_size 16"):
        check_triton_config(text.replace("input:16x1x16x16", "input:12x1x16x16"), graph)
    with pytest.raises(TritonConfigError, match="trt_profile_min_shapes 'input:1x3x16x16' does not fit"):
        check_triton_config(text.replace("input:1x1x16x16", "input:1x3x16x16"), graph)
    with pytest.raises(TritonConfigError, match="on KIND_CPU instances would never be used"):
        check_triton_config(text.replace("KIND_GPU", "KIND_CPU"), graph)
    with pytest.raises(TritonConfigError, match="precision_mode 'INT8'"):
        check_triton_config(text.replace('value: "FP16"', 'value: "INT8"'), graph)


def test_a_failed_check_writes_nothing(digits_graph, tmp_path, monkeypatch):
    import oodgate.serving.triton as triton

    graph = digits_graph("energy")
    good = triton.triton_config_text
    monkeypatch.setattr(triton, "triton_config_text",
                        lambda *a, **k: good(*a, **k).replace("dims: [ 10 ]", "dims: [ 11 ]"))
    with pytest.raises(TritonConfigError, match="axis 1 is 11"):
        write_triton_repo(graph, tmp_path / "repo", name="gate")
    assert not (tmp_path / "repo").exists()  # no model folder, no staging leftovers, not even the new repo folder
    (tmp_path / "repo").mkdir()
    with pytest.raises(TritonConfigError):
        write_triton_repo(graph, tmp_path / "repo", name="gate")
    assert list((tmp_path / "repo").iterdir()) == []  # an existing repository folder stays, empty


def test_no_overwrite_without_force_and_replace_with_it(digits_graph, tmp_path):
    energy, dice = digits_graph("energy"), digits_graph("dice")
    first = write_triton_repo(energy, tmp_path, name="gate")
    before = first.config_path.read_text()
    with pytest.raises(OodgateError, match="exists: .*--force"):
        write_triton_repo(dice, tmp_path, name="gate")
    assert first.config_path.read_text() == before and first.model_path.read_bytes() == energy.read_bytes()
    second = write_triton_repo(dice, tmp_path, name="gate", overwrite=True)
    assert 'string_value: "dice"' in second.config_path.read_text()
    assert second.model_path.read_bytes() == dice.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gate"]  # the old folder is gone, no leftovers
    (tmp_path / "notes").mkdir()
    with pytest.raises(OodgateError, match="not a Triton model folder"):
        write_triton_repo(dice, tmp_path, name="notes", overwrite=True)


def test_check_model_finds_a_swapped_graph(digits_graph, tmp_path):
    model = write_triton_repo(digits_graph("energy"), tmp_path, name="gate")
    model.model_path.write_bytes(digits_graph("msp").read_bytes())  # another method's graph under the same config
    with pytest.raises(TritonConfigError, match="parameter oodgate_method is 'energy', the graph's metadata says 'msp'"):
        check_triton_model(model.folder)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "../up"}, "Triton model name '../up'"),
    ({"max_batch_size": 0}, "max_batch_size=0"),
    ({"accelerator": "tensorrt:int8"}, "accelerator 'tensorrt:int8'"),
    ({"instance_kind": "tpu"}, "instance kind 'tpu'"),
    ({"version": 0}, "version=0"),
])
def test_bad_options_are_one_line_errors(digits_graph, tmp_path, kwargs, message):
    with pytest.raises(OodgateError, match=message.replace("(", r"\(").replace(".", r"\.")):
        write_triton_repo(digits_graph("energy"), tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_foreign_graph_is_refused(foreign_graph, tmp_path):
    with pytest.raises(ArtifactError, match="not made by oodgate"):
        write_triton_repo(foreign_graph, tmp_path / "repo")


def test_triton_repo_writer_is_torch_free(energy_graph, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # `import torch` raises ImportError
        from oodgate.serving.triton import write_triton_repo, check_triton_model
        m = write_triton_repo({str(energy_graph)!r}, {str(tmp_path / "repo")!r})
        check_triton_model(m.folder, {str(energy_graph)!r})
        import oodgate.serving.pytriton_host, oodgate.serving.ray_scoring
        bad = [n for n in sys.modules if n.startswith(("torch.", "oodgate.calibration", "oodgate.exporter"))]
        assert not bad, bad
        print("ok", m.name)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok digits-energy"


def test_cli_export_with_triton_repo_and_triton_commands(energy_calibration_file, energy_graph, tmp_path,
                                                         cli_error):
    from typer.testing import CliRunner

    from oodgate.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["export", str(energy_calibration_file), "-o", str(tmp_path / "gate.onnx"),
                              "--triton-repo", str(tmp_path / "repo"), "--max-batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert "wrote Triton model 'gate'" in res.output
    assert parse(tmp_path / "repo" / "gate" / "config.pbtxt").max_batch_size == 8
    res = runner.invoke(app, ["triton-repo", str(energy_graph), "--repo", str(tmp_path / "repo"), "--name", "g2",
                              "--preferred-batch-size", "4", "--instance-kind", "cpu", "--instances", "2"])
    assert res.exit_code == 0, res.output
    config = parse(tmp_path / "repo" / "g2" / "config.pbtxt")
    assert config.instance_group[0].count == 2 and list(config.dynamic_batching.preferred_batch_size) == [4]
    res = runner.invoke(app, ["triton-check", str(tmp_path / "repo" / "g2"), "--graph", str(energy_graph)])
    assert res.exit_code == 0 and "matches its graph" in res.output
    # refused before exporting: the graph is not written either
    line = cli_error("export", energy_calibration_file, "-o", tmp_path / "gate2.onnx", "--triton-repo",
                     tmp_path / "repo", "--triton-name", "gate")
    assert "exists" in line and not (tmp_path / "gate2.onnx").exists()
