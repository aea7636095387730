"""Defect 5 of issue 13: edited, corrupt or inconsistent graphs are refused on load with one ArtifactError (Session,
`oodgate run`, `oodgate inspect`), instead of silently changed scores or ONNX Runtime tracebacks."""

from __future__ import annotations

import numpy as np
import pytest

from oodgate.errors import ArtifactError

from faultkit import expect_error, graph_meta, set_graph_meta


def refused(cli, path, digit_png, *fragments: str) -> None:
    from oodgate import Session

    with pytest.raises(ArtifactError) as info:
        Session(path, "cpu")
    assert "\n" not in str(info.value)
    for fragment in fragments:
        assert fragment.lower() in str(info.value).lower(), str(info.value)
    expect_error(cli("run", path, digit_png, "--provider", "cpu"), *fragments)
    expect_error(cli("inspect", path), *fragments)


def _initializer_names(path):
    import onnx

    model = onnx.load(str(path))
    return [i.name for i in model.graph.initializer if i.raw_data and len(i.raw_data) >= 4]


@pytest.mark.parametrize("which", [0, 1, 2, 3, -2, -1])
def test_d5_one_flipped_bit_in_a_weight(cli, edit_graph, energy_graph, digit_pngs, which):
    name = _initializer_names(energy_graph)[which]

    def flip(model):
        init = next(i for i in model.graph.initializer if i.name == name)
        raw = bytearray(init.raw_data)
        raw[len(raw) // 2] ^= 0x01
        init.raw_data = bytes(raw)

    refused(cli, edit_graph(flip), digit_pngs[0], "graph body")


@pytest.mark.parametrize("fraction", [0.02, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 0.99])
def test_d5_one_flipped_bit_anywhere_in_the_file(cli, energy_graph, tmp_path, digit_pngs, fraction):
    raw = bytearray(energy_graph.read_bytes())
    raw[int(fraction * (len(raw) - 1))] ^= 0x08
    path = tmp_path / "flipped.onnx"
    path.write_bytes(bytes(raw))
    refused(cli, path, digit_pngs[0])


def _set_threshold_constant(model, value: float) -> None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == "threshold":
            init.CopyFrom(numpy_helper.from_array(np.array(value, np.float32), "threshold"))
            return
    raise AssertionError("no threshold initializer")


def test_d5_baked_threshold_edited(cli, edit_graph, digit_pngs):
    """The issue's case: tau constant lowered, metadata untouched: Session used to report tau=4.38 and accept all."""
    refused(cli, edit_graph(lambda m: _set_threshold_constant(m, -1e9)), digit_pngs[0])


def test_d5_baked_threshold_edited_and_graph_resealed(cli, edit_graph, digit_pngs):
    path = edit_graph(lambda m: _set_threshold_constant(m, -1e9), reseal_after=True)
    refused(cli, path, digit_pngs[0], "threshold baked")


def test_d5_metadata_threshold_edited_without_resealing(cli, edit_graph, digit_pngs):
    def edit(model):
        meta = graph_meta(model)
        set_graph_meta(model, {**meta, "threshold": meta["threshold"] - 3}, reseal=False)

    refused(cli, edit_graph(edit), digit_pngs[0])


def test_d5_metadata_threshold_edited_and_resealed(cli, edit_graph, digit_pngs):
    def edit(model):
        meta = graph_meta(model)
        set_graph_meta(model, {**meta, "threshold": meta["threshold"] - 3})

    refused(cli, edit_graph(edit), digit_pngs[0], "threshold baked")


META_EDITS = [
    ("input_name", "x"), ("input_name", ""), ("input_shape", [3, 16, 16]), ("input_shape", [1, 28, 28]),
    ("input_shape", [1, 16]), ("input_shape", [0, 16, 16]), ("input_shape", "1x16x16"),
    ("class_names", [str(i) for i in range(9)]), ("class_names", [str(i) for i in range(11)]),
    ("class_names", "0123456789"), ("class_names", list(range(10))),
    ("outputs", ["logits", "score", "label"] + ["extra"]), ("outputs", "logits"),
    ("method", ""), ("method", None), ("params", []), ("tpr", 2.0), ("tpr", "x"),
    ("preprocess", None), ("preprocess", {"channels": "RGB", "resize": 16, "crop": [16, 16]}),
    ("calibration_hash", None), ("format_version", 99), ("format", "something-else"),
]


@pytest.mark.parametrize("field,value", META_EDITS, ids=[f"{f}={v!r:.20}" for f, v in META_EDITS])
def test_d5_metadata_that_disagrees_with_the_graph(cli, edit_graph, digit_pngs, field, value):
    """Resealed on purpose: the consistency checks, not the checksum, must catch these."""

    def edit(model):
        set_graph_meta(model, {**graph_meta(model), field: value})

    refused(cli, edit_graph(edit), digit_pngs[0])


def test_d5_graph_input_renamed_in_the_body(cli, edit_graph, digit_pngs):
    def edit(model):
        model.graph.input[0].name = "pixels"
        for node in model.graph.node:
            node.input[:] = ["pixels" if i == "input" else i for i in node.input]

    refused(cli, edit_graph(edit, reseal_after=True), digit_pngs[0], "input")


def test_d5_graph_input_resized_in_the_body(cli, edit_graph, digit_pngs):
    def edit(model):
        model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 28

    refused(cli, edit_graph(edit, reseal_after=True), digit_pngs[0], "shape")


@pytest.mark.parametrize("key", ["oodgate.checksum", "oodgate"])
def test_d5_metadata_entry_removed(cli, edit_graph, digit_pngs, key):
    def edit(model):
        props = [(p.key, p.value) for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        for k, v in props:
            model.metadata_props.add(key=k, value=v)

    refused(cli, edit_graph(edit), digit_pngs[0])


@pytest.mark.parametrize("text", ["{", "[]", "null", '"x"', '{"format": "oodgate-graph"}'])
def test_metadata_text_not_an_oodgate_object(cli, edit_graph, digit_pngs, text):
    def edit(model):
        for p in model.metadata_props:
            if p.key == "oodgate":
                p.value = text

    refused(cli, edit_graph(edit), digit_pngs[0])


def test_a_good_graph_loads_and_its_seal_is_checked(energy_graph):
    """The untouched graph passes every check (so the refusals above are not blanket refusals)."""
    import onnx

    from oodgate import Session
    from oodgate.runtime.metadata import read_graph_info

    meta = graph_meta(onnx.load(str(energy_graph)))
    assert len(meta["graph_sha256"]) == 64
    info = read_graph_info(energy_graph)
    with Session(energy_graph, "cpu") as sess:
        assert sess.threshold == info.threshold == meta["threshold"]
