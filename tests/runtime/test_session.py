"""Session: inputs of every kind give the same outputs, batching, threshold override, providers, bad input."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def session(energy_graph):
    from oodgate.runtime import Session

    with Session(energy_graph, providers="cpu") as sess:
        yield sess


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.is_ood, b.is_ood)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_paths_pil_images_and_arrays_give_identical_outputs(session, digit_pngs, digits_test):
    from PIL import Image

    images = digits_test.images[:len(digit_pngs)]
    by_path = session.run([str(p) for p in digit_pngs])
    assert len(by_path) == len(digit_pngs) and by_path.scores.dtype == np.float32
    _same(by_path, session.run(list(digit_pngs)))  # pathlib.Path
    _same(by_path, session.run([Image.open(p) for p in digit_pngs]))
    _same(by_path, session.run([Image.fromarray(im) for im in images]))
    _same(by_path, session.run(images))  # one uint8 (N, H, W) batch
    _same(by_path, session.run(list(images)))  # a list of (H, W) arrays
    _same(by_path, session.run(session.preprocess(images)))  # preprocessed float32 (N, C, H, W)
    one = session.run(digit_pngs[3])  # a single path
    assert len(one) == 1 and one.scores[0] == by_path.scores[3]
    assert by_path.labels.tolist() == digits_test.labels[:len(digit_pngs)].tolist()


def test_single_image_as_pil_or_array(session, digits_test):
    from PIL import Image

    image = digits_test.images[0]
    ref = session.run([image])
    assert len(ref) == 1
    _same(ref, session.run(Image.fromarray(image)))
    _same(ref, session.run(image))


def test_single_array_image_taller_than_batch_size(session):
    """One (H, W, 3) array is one image, whatever its height and the batch size."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    listed, bare = session.run([image]), session.run(image, batch_size=32)
    assert len(listed) == len(bare) == 1
    np.testing.assert_array_equal(listed.scores, bare.scores)
    np.testing.assert_array_equal(listed.scores, session.run_array(session.preprocess([image]))["score"])


def test_batch_size_does_not_change_outputs(session, digits_test):
    images = digits_test.images[:40]
    _same(session.run(images, batch_size=3), session.run(images, batch_size=32))
    _same(session.run(images, batch_size=1), session.run(images, batch_size=40))


def test_threshold_override_per_call(session, digits_test):
    images = digits_test.images[:60]
    default = session.run(images)
    tau = session.threshold
    assert default.threshold == tau
    np.testing.assert_array_equal(default.is_ood, default.scores < np.float32(tau))
    median = float(np.median(default.scores))
    strict = session.run(images, threshold=median)
    assert strict.threshold == median
    np.testing.assert_array_equal(strict.scores, default.scores)
    np.testing.assert_array_equal(strict.is_ood, default.scores < np.float32(median))
    assert 20 <= strict.is_ood.sum() <= 40
    assert session.run(images, threshold=float(default.scores.max()) + 1).is_ood.all()
    assert not session.run(images, threshold=float(default.scores.min()) - 1).is_ood.any()
    # the override is per call: the next call uses the graph's threshold again
    np.testing.assert_array_equal(session.run(images).is_ood, default.is_ood)


def test_prediction_records(session, digit_pngs):
    pred = session.run(digit_pngs[:3])
    records = pred.records([p.name for p in digit_pngs[:3]])
    assert [r["input"] for r in records] == [p.name for p in digit_pngs[:3]]
    for r, p in zip(records, digit_pngs):
        assert r["class"] == p.stem.split("label")[1] == str(r["label"])
        assert isinstance(r["score"], float) and isinstance(r["is_ood"], bool)


def test_cuda_provider_raises_instead_of_falling_back(energy_graph):
    import onnxruntime

    from oodgate.runtime import ProviderError, Session

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    needs_cuda = "provider 'cuda' needs ONNX Runtime's CUDAExecutionProvider.*--provider cpu"
    with pytest.raises(ProviderError, match=needs_cuda):
        Session(energy_graph, providers="cuda")
    with pytest.raises(ProviderError, match="provider 'tensorrt'"):
        Session(energy_graph, providers="tensorrt")
    # an explicit ORT provider list: ORT itself would fall back to the CPU silently; the Session refuses
    with pytest.warns(UserWarning), pytest.raises(ProviderError, match="fell back from CUDAExecutionProvider"):
        Session(energy_graph, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_auto_and_unknown_providers(energy_graph):
    import onnxruntime

    from oodgate import OodgateError
    from oodgate.runtime import ProviderError, Session, resolve_providers

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert resolve_providers("auto") == ["CPUExecutionProvider"]
        with Session(energy_graph) as sess:
            assert sess.providers == ["CPUExecutionProvider"]
    with pytest.raises(OodgateError, match="unknown provider 'gpu'.*auto, cpu, cuda, tensorrt") as exc:
        Session(energy_graph, providers="gpu")
    assert not isinstance(exc.value, ProviderError)


def test_wrong_input_shapes_are_clear_errors(session, digits_test):
    from oodgate import OodgateError

    with pytest.raises(OodgateError, match=r"expected input of shape \(N, 1, 16, 16\), got \(2, 1, 8, 8\)"):
        session.run_array(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(OodgateError, match=r"got \(1, 16, 16\): add a batch axis"):
        session.run_array(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(OodgateError, match=r"expected input of shape \(N, 1, 16, 16\), got \(2, 3, 16, 16\)"):
        session.run_array(np.zeros((2, 3, 16, 16), np.float32))
    # preprocessed-looking arrays of the wrong shape through run(): the preprocessing says what was expected
    with pytest.raises(OodgateError, match=r"expected input of shape \(N, 1, 16, 16\), got \(N, 3, 16, 16\)"):
        session.run(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(OodgateError, match=r"expected input of shape \(N, 1, 16, 16\), got \(N, 1, 224, 224\)"):
        session.run(np.zeros((2, 1, 224, 224), np.float32))
    with pytest.raises(OodgateError, match="must be float32"):
        session.run(np.zeros((2, 1, 16, 16), np.float64))
    with pytest.raises(OodgateError, match=r"values in \[0, 1\]"):
        session.run([np.full((8, 8), 3.0)])
    with pytest.raises(OodgateError, match="no inputs to run"):
        session.run([])


def test_bad_image_files_are_clear_errors(session, tmp_path):
    from oodgate import OodgateError

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(OodgateError, match="corrupt.png: not an image or corrupt"):
        session.run(corrupt)
    with pytest.raises(OodgateError, match="no such image file"):
        session.run(tmp_path / "missing.png")
    with pytest.raises(OodgateError, match="is a folder"):
        session.run(tmp_path)


def test_closed_session(energy_graph):
    from oodgate import OodgateError
    from oodgate.runtime import Session

    with Session(energy_graph, providers="cpu") as sess:
        assert sess.input_shape == (1, 16, 16) and sess.info.method == "energy"
    with pytest.raises(OodgateError, match="closed"):
        sess.run_array(np.zeros((1, 1, 16, 16), np.float32))


def test_graphs_not_made_by_oodgate_are_refused(foreign_graph, tmp_path):
    from oodgate import ArtifactError
    from oodgate.runtime import Session

    with pytest.raises(ArtifactError, match="was not made by oodgate export.*oodgate export"):
        Session(foreign_graph, providers="cpu")
    with pytest.raises(ArtifactError, match="no such graph file"):
        Session(tmp_path / "missing.onnx", providers="cpu")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not protobuf \xff\xfe" * 4)
    with pytest.raises(ArtifactError, match="not a readable ONNX file"):
        Session(junk, providers="cpu")
