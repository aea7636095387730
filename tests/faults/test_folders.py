"""Defect 2 of issue 13: image-folder labels must be the model's class ids (matched by name, or mapped explicitly),
never the index of sorted folder names; every method then yields the same label ids for the same model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oodgate.errors import OodgateError

from faultkit import expect_error

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_NAMES = [str(i) for i in range(10)]
WORD_MAP = {w: str(i) for i, w in enumerate(WORDS)}


def _write_folder(root, images, labels, names, per_class: int | None = None):
    from PIL import Image

    root.mkdir()
    count = {k: 0 for k in range(10)}
    for i, (image, label) in enumerate(zip(images, labels)):
        label = int(label)
        if names[label] is None or (per_class is not None and count[label] >= per_class):
            continue
        count[label] += 1
        folder = root / names[label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def word_folder(digits_test, tmp_path_factory):
    """digits test images in class folders named zero..nine (sorted: eight, five, four, nine, one, ...)."""
    return _write_folder(tmp_path_factory.mktemp("words") / "digits", digits_test.images, digits_test.labels, WORDS)


@pytest.fixture(scope="module")
def digit_folder(digits_test, tmp_path_factory):
    """digits test images in class folders named 0..9 (the model's own class names)."""
    return _write_folder(tmp_path_factory.mktemp("names") / "digits", digits_test.images, digits_test.labels,
                         DIGIT_NAMES, per_class=10)


@pytest.fixture(scope="module")
def true_labels(word_folder):
    """The digit of every image of word_folder, in image_folder's order (read back from the folder names)."""
    from oodgate.data import image_folder

    found = image_folder(word_folder)
    return np.array([WORDS.index(found.class_names[k]) for k in found.labels])


def test_d2_folder_names_unknown_to_the_model_are_named(word_folder):
    from oodgate.data import image_folder

    with pytest.raises(OodgateError, match="eight.*not classes of the model") as info:
        image_folder(word_folder, class_names=DIGIT_NAMES)
    assert "class-map" in str(info.value) or "class_map" in str(info.value)


@pytest.mark.parametrize("kind", ["names", "indices", "mixed"])
def test_d2_explicit_class_map_gives_the_model_ids(word_folder, true_labels, kind):
    from oodgate.data import image_folder

    mapping = {w: (str(i) if kind == "names" or (kind == "mixed" and i % 2) else i) for i, w in enumerate(WORDS)}
    found = image_folder(word_folder, class_names=DIGIT_NAMES, class_map=mapping)
    np.testing.assert_array_equal(found.labels, true_labels)
    assert found.class_names == DIGIT_NAMES


def test_d2_class_map_without_model_class_names_takes_indices(word_folder, true_labels):
    from oodgate.data import image_folder

    found = image_folder(word_folder, class_map={w: i for i, w in enumerate(WORDS)})
    np.testing.assert_array_equal(found.labels, true_labels)


def test_folders_named_as_the_model_classes_map_by_name(digit_folder, digits_test):
    from oodgate.data import image_folder

    found = image_folder(digit_folder, class_names=DIGIT_NAMES[::-1])  # a model whose class 0 is "9"
    names = [DIGIT_NAMES[::-1][k] for k in found.labels]
    assert names == [p.split("/")[-2] for p in found.images]


@pytest.mark.parametrize("mapping,match", [
    ({"zero": "0", "eleven": "1"}, "eleven"),                          # a key that is no folder
    ({**WORD_MAP, "one": 10}, "outside"),                              # index beyond the model's classes
    ({**WORD_MAP, "one": -1}, "outside"),
    ({**WORD_MAP, "one": "0"}, "same model class"),                   # two folders onto one class
    ({**WORD_MAP, "one": "uno"}, "one"),                               # a target name the model lacks
])
def test_bad_class_maps_are_named(word_folder, mapping, match):
    from oodgate.data import image_folder

    with pytest.raises(OodgateError, match=match):
        image_folder(word_folder, class_names=DIGIT_NAMES, class_map=mapping)


def test_d2_missing_class_folders_are_named(digits_test, tmp_path):
    from oodgate.data import image_folder

    names = DIGIT_NAMES[:5] + [None] * 5
    root = _write_folder(tmp_path / "half", digits_test.images, digits_test.labels, names, per_class=3)
    with pytest.raises(OodgateError, match=r"no folder for the model's class\(es\) \['5', '6'"):
        image_folder(root, class_names=DIGIT_NAMES)
    ok = image_folder(root, class_names=DIGIT_NAMES, class_map={n: n for n in DIGIT_NAMES[:5]})
    assert sorted(set(ok.labels.tolist())) == [0, 1, 2, 3, 4]


def test_a_folder_the_model_does_not_know_is_named(digits_test, tmp_path):
    from oodgate.data import image_folder

    names = DIGIT_NAMES[:9] + ["10"]
    root = _write_folder(tmp_path / "extra", digits_test.images, digits_test.labels, names, per_class=2)
    with pytest.raises(OodgateError, match=r"\['10'\]"):
        image_folder(root, class_names=DIGIT_NAMES)


@pytest.mark.parametrize("text,expected", [
    ("zero=0,one=Bag", {"zero": 0, "one": "Bag"}),
    (' {"zero": 0, "one": "1"}', {"zero": 0, "one": "1"}),
    ("Boot=Ankle boot", {"Boot": "Ankle boot"}),
])
def test_class_map_text_forms(text, expected):
    from oodgate.data.sets import parse_class_map

    assert parse_class_map(text) == expected


@pytest.mark.parametrize("text", ["zero", "=1", "zero=", '{"zero": [1]}', "[1, 2]", '{"a": true}', "{bad json"])
def test_bad_class_map_text_is_refused(text):
    from oodgate.data.sets import parse_class_map

    with pytest.raises(OodgateError, match="class-map"):
        parse_class_map(text)


def test_class_map_from_a_json_file(tmp_path):
    from oodgate.data.sets import parse_class_map

    path = tmp_path / "map.json"
    path.write_text(json.dumps(WORD_MAP))
    assert parse_class_map(str(path)) == WORD_MAP


# -- through calibrate / evaluate / the CLI ----------------------------------------------------------------


def test_d2_calibrate_refuses_folders_it_cannot_match(word_folder):
    from oodgate import calibrate

    with pytest.raises(OodgateError, match="eight"):
        calibrate("digits-cnn", str(word_folder), method="mos", progress=False)


def test_d2_every_method_yields_the_model_label_ids(word_folder, true_labels, digits_test):
    """MOS trains its head on the folder labels: mapped to the model's ids, its labels agree with energy's (argmax of
    the model's logits) and with the truth, as the issue asks ('every method yields the same label ids')."""
    from oodgate import calibrate

    def labels_of(method):
        cal = calibrate("digits-cnn", str(word_folder), method=method, progress=False, class_map=WORD_MAP)
        module = cal.detector.head()
        feats = cal._model.features(__import__("torch").from_numpy(cal.preprocess(digits_test.images)))
        return module(feats)[2].numpy()

    mos, energy = labels_of("mos"), labels_of("energy")
    assert np.mean(mos == digits_test.labels) > 0.9 and np.mean(energy == digits_test.labels) > 0.9
    assert np.mean(mos == energy) > 0.95


def test_d2_cli_evaluate_maps_folders_or_refuses(cli, energy_graph, word_folder, tmp_path):
    """The issue's case: folder labels in sorted-name order made a 99 %-accurate model evaluate at ~10 %."""
    expect_error(cli("evaluate", energy_graph, "--id", word_folder, "--ood", "noise=ood:noise", "-p", "cpu"),
                 "eight")
    out = tmp_path / "m.json"
    result = cli("evaluate", energy_graph, "--id", word_folder, "--ood", "noise=ood:noise", "-p", "cpu",
                 "--class-map", ",".join(f"{k}={v}" for k, v in WORD_MAP.items()), "--json", out)
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["id_accuracy"] > 0.95


def test_d2_cli_calibrate_with_a_class_map(cli, word_folder, tmp_path):
    from oodgate.calibration import load_calibration

    out = tmp_path / "mapped.oodcal"
    expect_error(cli("calibrate", "digits-cnn", "--data", word_folder, "--output", out, "--method", "mos"), "eight")
    assert not out.exists()
    result = cli("calibrate", "digits-cnn", "--data", word_folder, "--output", out, "--method", "mos",
                 "--class-map", json.dumps(WORD_MAP))
    assert result.code == 0, result.err
    assert load_calibration(out).class_names == DIGIT_NAMES


def test_d2_cli_class_names_are_stored_in_calibration_and_graph(cli, digits_test, tmp_path):
    """Labelled data without class names (an .npz of images + labels) and names given on the command line."""
    from oodgate.calibration import load_calibration
    from oodgate.exporter.export import graph_metadata

    data = tmp_path / "digits.npz"
    np.savez(data, images=digits_test.images, labels=digits_test.labels)
    names = [f"digit-{i}" for i in range(10)]
    out = tmp_path / "named.oodcal"
    result = cli("calibrate", "digits-cnn", "--data", data, "--output", out, "--method", "mos", "--class-names",
                 ",".join(names))
    assert result.code == 0, result.err
    cal = load_calibration(out)
    assert cal.class_names == names
    assert graph_metadata(cal, cal.preprocess.input_shape)["class_names"] == names


@pytest.mark.parametrize("names,match", [("a,b,c", "3 class names"), ("a,a,b,c,d,e,f,g,h,i", "distinct"),
                                         (",", "class names")])
def test_bad_class_names_on_the_cli(cli, tmp_path, names, match):
    expect_error(cli("calibrate", "digits-cnn", "--data", "digits:calib", "--output", tmp_path / "c.oodcal",
                     "--class-names", names), match)


def test_folders_named_exactly_as_the_model_classes_count_as_matched(digit_folder):
    from oodgate.data import image_folder

    found = image_folder(digit_folder, class_names=DIGIT_NAMES)
    assert found.labels_from is None and found.class_names == DIGIT_NAMES
