"""MOS: the group rule, the one-group reduction, the loss, group files and their errors, training, persistence, and
ID accuracy on the digits CNN and a Fashion-MNIST stand-in."""

from __future__ import annotations

import csv
import io
import json
import warnings

import numpy as np
import pytest
import torch

import oodgate
from oodgate import NotFittedError, OodgateError
from oodgate.data.sets import fashion_mnist_available
from oodgate.detectors import detector_class
from oodgate.detectors.mos import MOS, MOSHead
from oodgate.detectors.mos_groups import (IMAGENET_TAXONOMY_FILE, group_layout, imagenet_taxonomy, kmeans_groups,
                                          load_group_file, resolve_groups, validate_groups)
from oodgate.detectors.mos_train import HYPERRULE, GroupSoftmax, hyperrule, train_mos_head

C, D = 6, 8
GROUPS = [[4, 0], [1], [5, 2, 3]]  # uneven sizes and classes out of order: exercises the slot layout


def _raises(exc_type, pattern, fn, *args, **kwargs):
    with pytest.raises(exc_type, match=pattern) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert len(message) < 300, message
    return message


def _slices(groups):
    """[(start, stop)] of each group's n_g + 1 logits."""
    out, start = [], 0
    for g in groups:
        out.append((start, start + len(g) + 1))
        start += len(g) + 1
    return out


def _reference(z, groups):
    """NumPy MOS on logits z (N, C+G): score -min_g p_g(others); label: best non-others probability over groups."""
    z = np.asarray(z, np.float64)
    others, best_p, best_c = [], np.full(len(z), -np.inf), np.zeros(len(z), np.int64)
    for (a, b), members in zip(_slices(groups), groups):
        e = np.exp(z[:, a:b] - z[:, a:b].max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        others.append(p[:, 0])
        k = np.argmax(p[:, 1:], axis=1)
        pk = p[np.arange(len(z)), 1 + k]
        better = pk > best_p
        best_p = np.where(better, pk, best_p)
        best_c = np.where(better, np.asarray(members)[k], best_c)
    return -np.min(others, axis=0), best_c


@pytest.fixture(scope="module")
def problem():
    """Labelled class-structured non-negative features (C=6, D=8) and a random original head."""
    rng = np.random.default_rng(3)
    centres = 3.0 * np.abs(rng.standard_normal((C, D)))
    y = np.repeat(np.arange(C), 60)
    h = (centres[y] + np.abs(rng.standard_normal((len(y), D)))).astype(np.float32)
    w, b = rng.standard_normal((C, D)), 0.1 * rng.standard_normal(C)
    return h, y, w, b


# -- the head: group rule and scores --------------------------------------------------------------------------


def test_head_matches_numpy_reference_and_never_predicts_others():
    rng = np.random.default_rng(0)
    k = C + len(GROUPS)
    head = MOSHead(rng.standard_normal((k, D)), rng.standard_normal(k), GROUPS)
    h = torch.from_numpy(rng.standard_normal((500, D)).astype(np.float32) * 3)
    z, score, label = head.double()(h.double())  # float64, so that near-ties resolve as in NumPy
    want_score, want_label = _reference(z.numpy(), GROUPS)
    np.testing.assert_allclose(score.numpy(), want_score, atol=1e-12)
    np.testing.assert_allclose(head.float()(h)[1].numpy(), want_score, atol=1e-6)
    np.testing.assert_array_equal(label.numpy(), want_label)
    assert z.shape == (500, k) and label.dtype == torch.int64
    assert set(label.tolist()) == set(range(C))  # class-index space, every class reachable
    assert np.all((score.numpy() <= 0) & (score.numpy() >= -1))


@pytest.mark.parametrize("others_logit", [0.0, 50.0, 1000.0])
def test_group_rule_never_predicts_an_others_slot(others_logit):
    """Even when every "others" logit dominates (class probabilities underflow to 0), the label is a real class
    and equals the class with the highest non-others probability."""
    rng = np.random.default_rng(1)
    k = C + len(GROUPS)
    bias = np.zeros(k)
    others_slots = [a for a, _ in _slices(GROUPS)]
    bias[others_slots] = others_logit
    head = MOSHead(rng.standard_normal((k, D)), bias, GROUPS)
    z, _, label = head(torch.from_numpy(rng.standard_normal((300, D)).astype(np.float32)))
    assert torch.all((label >= 0) & (label < C))
    p = head.group_probs(z)[:, :, 1:]  # non-others probabilities, (N, G, M)
    _, valid, slot_class = group_layout(GROUPS)
    cls = torch.where(torch.from_numpy(valid[:, 1:] > 0), p, torch.tensor(-1.0)).reshape(len(z), -1)
    m = slot_class.shape[1]
    position = {int(c): g * m + i for g, members in enumerate(GROUPS) for i, c in enumerate(members)}
    chosen = cls[torch.arange(len(z)), torch.tensor([position[c] for c in label.tolist()])]
    np.testing.assert_array_equal(chosen.numpy(), cls.max(dim=1).values.numpy())
    if others_logit < 100:
        np.testing.assert_array_equal(label.numpy(), _reference(z.numpy(), GROUPS)[1])


def test_one_group_is_a_softmax_over_c_plus_one():
    rng = np.random.default_rng(2)
    order = [3, 1, 0, 5, 2, 4]
    w, b = rng.standard_normal((C + 1, D)), rng.standard_normal(C + 1)
    head = MOSHead(w, b, [order])
    h = torch.from_numpy(rng.standard_normal((200, D)).astype(np.float32))
    z, score, label = head(h)
    p = torch.softmax(z, dim=1)
    np.testing.assert_allclose(score.numpy(), -p[:, 0].numpy(), atol=1e-7)
    np.testing.assert_array_equal(label.numpy(), np.asarray(order)[torch.argmax(z[:, 1:], dim=1).numpy()])
    # and the training loss is the (C+1)-way cross-entropy with target 1 + position in the group
    y = torch.from_numpy(rng.integers(0, C, 200))
    soft = GroupSoftmax([order], C)
    target = torch.tensor([1 + order.index(int(c)) for c in y])
    torch.testing.assert_close(soft.loss(z, soft.targets(y)), torch.nn.functional.cross_entropy(z, target))


def test_loss_and_gradient_match_per_group_cross_entropy():
    rng = np.random.default_rng(4)
    z = torch.from_numpy(rng.standard_normal((64, C + len(GROUPS))) * 4).requires_grad_(True)
    y = torch.from_numpy(rng.integers(0, C, 64))
    want = 0.0
    for (a, b), members in zip(_slices(GROUPS), GROUPS):
        t = torch.tensor([1 + members.index(int(c)) if int(c) in members else 0 for c in y])
        want = want + torch.nn.functional.cross_entropy(z[:, a:b], t)
    (grad,) = torch.autograd.grad(want, z)
    soft = GroupSoftmax(GROUPS, C)
    loss, grad_z = soft.loss_and_grad(z.detach(), soft.targets(y))
    assert loss == pytest.approx(float(want.detach()), rel=1e-10)
    torch.testing.assert_close(grad_z, grad)


# -- groups: files, taxonomy, k-means, errors -----------------------------------------------------------------

NAMES = ["cat", "dog", "car", "bus", "apple", "pear"]


@pytest.mark.parametrize(("name", "text"), [
    ("g.csv", "0,a\n1,a\n2,b\n3,b\n4,c\n5,c\n"),
    ("g.csv", "class,group\ncat,a\ndog,a\ncar,b\nbus,b\napple,c\npear,c\n"),
    ("g.tsv", "# comment\nclass_index\tgroup_id\n4\t2\n5\t2\n2\t1\n3\t1\n0\t0\n1\t0\n"),
    ("g.txt", "name\tgroup_id\tsub_class_id\ndog\t0\t1\ncat\t0\t0\nbus\t1\t1\ncar\t1\t0\npear\t2\t1\napple\t2\t0\n"),
    ("g.json", "[[0, 1], [2, 3], [4, 5]]"),
    ("g.json", '{"groups": [["cat", "dog"], ["car", "bus"], ["apple", 5]]}'),
    ("g.json", '{"animals": ["cat", "dog"], "vehicles": [2, 3], "fruit": ["apple", "pear"]}'),
    ("g.json", '{"cat": "animals", "dog": "animals", "2": "vehicles", "bus": "vehicles", "4": "fruit", "5": "fruit"}'),
])
def test_group_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert load_group_file(path, C, NAMES) == [[0, 1], [2, 3], [4, 5]]


def test_group_file_order_column_and_integer_group_ids(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("class,group,order\n0,10,2\n1,2,0\n2,10,0\n3,2,1\n4,10,1\n5,2,2\n")
    assert load_group_file(path, C) == [[1, 3, 5], [2, 4, 0]]  # groups by id (2 < 10), classes by order


@pytest.mark.parametrize(("name", "text", "pattern"), [
    ("g.csv", "0,a\n1,a\n2,b\n3,b\n4,c\n6,c\n", r"line 6: unknown class 6: the model has 6 classes"),
    ("g.csv", "cat,a\ndgo,a\n", r"line 2: unknown class 'dgo' \(did you mean 'dog'\?\)"),
    ("g.csv", "0,a\n1,a\n2,b\n4,c\n", r"missing classes: \[3, 5\]"),
    ("g.csv", "0,a\n1,a\n2,b\n3,b\n4,c\n5,c\n1,c\n", r"line 7: overlapping groups: class '1' is already in group 'a'"),
    ("g.json", "[[0, 1], [2, 3], [], [4, 5]]", r"group 2 is empty"),
    ("g.json", '{"a": [0, 1, 2], "b": [2, 3], "c": [4, 5]}', r"overlapping groups: class 2 is in groups 'a' and 'b'"),
    ("g.json", '{"a": [0, 1], "b": [2, 3, 4]}', r"missing classes: \[5\]"),
    ("g.json", '{"a": [0, 1, 2, 3, 4, 5, 9]}', r"unknown class 9"),
    ("g.json", "[[0, 1], [2, 3]", r"not valid JSON"),
    ("g.csv", "0\n", r"line 1: expected 2 comma-separated columns"),
])
def test_group_file_errors(tmp_path, name, text, pattern):
    path = tmp_path / name
    path.write_text(text)
    msg = _raises(OodgateError, pattern, load_group_file, path, C, NAMES)
    assert str(path) in msg


def test_group_errors_without_files(tmp_path):
    _raises(OodgateError, r"no such group file", load_group_file, tmp_path / "nope.csv", C)
    (tmp_path / "n.csv").write_text("cat,a\n")
    _raises(OodgateError, r"class 'cat' is given by name, but the model's class names are unknown", load_group_file,
            tmp_path / "n.csv", C)
    _raises(OodgateError, r"overlapping groups: class 1 is twice in group 0", validate_groups,
            [[1, 1], [0, 2, 3, 4, 5]], C)
    _raises(OodgateError, r"groups: missing classes: \[5\]", validate_groups, [[0, 1], [2, 3, 4]], C)
    _raises(OodgateError, r"unknown class -1", validate_groups, [[-1, 0, 1, 2, 3, 4, 5]], C)
    _raises(OodgateError, r"k-means needs between 1 and the number of classes \(6\)", kmeans_groups, np.eye(C), 7)
    _raises(OodgateError, r"for ImageNet-1k classifiers.*6 classes", resolve_groups, "imagenet-taxonomy", C)


def test_imagenet_taxonomy():
    groups = imagenet_taxonomy()
    assert [len(g) for g in groups] == [398, 521, 9, 7, 52, 8, 3, 2]
    assert sorted(c for g in groups for c in g) == list(range(1000))
    with open(IMAGENET_TAXONOMY_FILE, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    for _, tv_index, _, group_id, sub in rows[::37]:  # slot 1 + sub_class_id_in_group holds that class
        assert groups[int(group_id)][int(sub)] == int(tv_index)
    assert resolve_groups("imagenet-taxonomy", 1000)[1] == "imagenet-taxonomy"


def test_kmeans_groups_are_seeded_and_record_their_source(problem):
    h, y, w, _ = problem
    means = np.stack([h[y == c].mean(0) for c in range(C)])
    first = resolve_groups(None, C, class_means=means, head_rows=w, num_groups=3, seed=5)
    assert first == resolve_groups(None, C, class_means=means, head_rows=w, num_groups=3, seed=5)
    assert first[1] == "kmeans(on=class_means, k=3, seed=5)"
    groups, source = resolve_groups(None, C, class_means=means, head_rows=w, kmeans_on="head_rows")
    assert source == "kmeans(on=head_rows, k=3, seed=0)" and len(groups) == 3  # default min(4, C // 2)
    validate_groups(groups, C)
    # well-separated clusters are found whatever the seed
    pts = np.repeat(np.eye(3), [2, 3, 1], axis=0) + 0.01 * np.random.default_rng(0).standard_normal((6, 3))
    for seed in range(3):
        assert kmeans_groups(pts, 3, seed) == [[0, 1], [2, 3, 4], [5]]


# -- training ----------------------------------------------------------------------------------------------------


def test_schedule_follows_the_hyperrule():
    assert hyperrule(1_000) == hyperrule(19_999)
    s = hyperrule(100_000)
    assert (s.steps, s.warmup, s.decays) == (10_000, 500, (3_000, 6_000, 9_000))  # BiT's own row
    assert (hyperrule(2_000_000).steps, hyperrule(2_000_000).warmup) == (20_000, 500)
    small = hyperrule(1_000)
    assert (small.steps, small.warmup) == (HYPERRULE[0][1], HYPERRULE[0][2])
    short = hyperrule(1_000, steps=200)  # rescaled, same shape
    assert (short.steps, short.warmup, short.decays) == (200, 10, (100, 140, 180))
    assert short.lr(0, 0.003) == pytest.approx(0.0003)
    assert short.lr(9, 0.003) == pytest.approx(0.003)
    assert short.lr(99, 0.003) == pytest.approx(0.003)
    assert short.lr(100, 0.003) == pytest.approx(0.0003)
    assert short.lr(199, 0.003) == pytest.approx(0.000003)
    assert hyperrule(10, steps=3).warmup == 1


def test_training_is_seeded_and_early_stops(problem):
    h, y, _, _ = problem
    kw = dict(steps=300, batch_size=64, seed=1)
    w1, b1, info = train_mos_head(h, y, GROUPS, C, **kw)
    w2, b2, _ = train_mos_head(h, y, GROUPS, C, **kw)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(b1, b2)
    assert w1.shape == (C + len(GROUPS), D) and info["val_samples"] == 36 and info["train_samples"] == 324
    assert info["val_loss"] < 0.5 * sum(np.log(len(g) + 1) for g in GROUPS)  # well below the zero head's loss
    w3, _, _ = train_mos_head(h, y, GROUPS, C, **{**kw, "seed": 2})
    assert not np.array_equal(w1, w3)
    # a large lr overshoots the held-out loss quickly: training stops and keeps the best weights
    _, _, stop = train_mos_head(h, y, GROUPS, C, steps=2000, lr=0.3, patience=1, seed=0)
    assert stop["early_stopped"] and stop["steps_run"] < 2000 and stop["best_step"] <= stop["steps_run"]
    _, _, mixed = train_mos_head(h, y, GROUPS, C, steps=50, mixup=0.1, val=0.0)
    assert mixed["mixup"] == 0.1 and mixed["val_loss"] is None and not mixed["early_stopped"]


def test_fit_score_predict_and_state_round_trip(problem, tmp_path):
    h, y, w, b = problem
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"a": ["apple", "cat"], "b": ["dog"], "c": ["pear", "car", "bus"]}))
    det = oodgate.detector("mos", groups=str(path), steps=300, batch_size=64).fit(h, y, weight=w, bias=b,
                                                                                   class_names=NAMES)
    info = det.fit_info()
    assert info["groups"] == GROUPS and info["group_source"] == "file:groups.json" and det.num_groups == 3
    assert np.mean(det.predict(h) == y) > 0.95
    scores = det.score(h)
    assert scores.shape == (len(h),) and np.all(scores <= 0)
    # the file is not needed once fitted: state + info go through .npz and JSON like a calibration file
    path.unlink()
    buf = io.BytesIO()
    np.savez(buf, **det.fitted_state())
    buf.seek(0)
    with np.load(buf) as npz:
        state = {k: npz[k] for k in npz.files}
    assert set(state) == {"weight", "bias", "mos_weight", "mos_bias"}
    again = detector_class("mos").from_state(json.loads(json.dumps(det.params)), state,
                                             json.loads(json.dumps(info)))
    np.testing.assert_array_equal(again.score(h), scores)
    np.testing.assert_array_equal(again.predict(h), det.predict(h))
    assert again.fit_info() == info
    # streamed (features, labels) batches fit the same head as one array
    batches = ((h[i:i + 50], y[i:i + 50]) for i in range(0, len(h), 50))
    streamed = MOS(groups=GROUPS, steps=300, batch_size=64).fit(batches, weight=w, bias=b)
    np.testing.assert_array_equal(streamed.fitted_state()["mos_weight"], state["mos_weight"])


def test_imagenet_taxonomy_head_fits_1000_classes():
    rng = np.random.default_rng(0)
    y = np.arange(2000) % 1000
    h = np.abs(rng.standard_normal((2000, 4))).astype(np.float32)
    det = MOS(groups="imagenet-taxonomy", steps=5).fit(h, y, weight=rng.standard_normal((1000, 4)))
    assert det.fitted_state()["mos_weight"].shape == (1008, 4)
    assert det.fit_info()["group_source"] == "imagenet-taxonomy"
    assert set(det.predict(h)) <= set(range(1000))


def test_mos_errors(problem):
    h, y, w, b = problem
    _raises(OodgateError, r"labelled ID features: pass labels", MOS().fit, h, weight=w, bias=b)
    _raises(NotFittedError, "not fitted", MOS().score, h)
    for params, pattern in [({"lr": 0}, r"lr=0"), ({"val": 1.0}, r"val=1.0"), ({"kmeans_on": "rows"}, "kmeans_on"),
                            ({"groups": 5}, r"groups=5"), ({"num_groups": 0}, "num_groups=0"),
                            ({"steps": 2.5}, "steps=2.5"), ({"mixup": -1}, "mixup=-1"), ({"epochs": 3}, "epochs")]:
        _raises(OodgateError, pattern, oodgate.detector, "mos", **params)
    _raises(OodgateError, r"group 1: unknown class 7: the model has 6 classes",
            MOS(groups=[[0, 1, 2], [3, 4, 5, 7]]).fit, h, y, weight=w)
    _raises(OodgateError, r"missing classes: \[5\]", MOS(groups=[[0, 1, 2], [3, 4]]).fit, h, y, weight=w)


# -- ID accuracy: the MOS head keeps the original head's accuracy ------------------------------------------------


def test_digits_cnn_accuracy_and_ood():
    from oodgate.calibration import collect_features
    from oodgate.data import digits, ood_set
    from oodgate.models import load_model, split_classifier

    bundle = load_model("digits-cnn")
    split = split_classifier(bundle.model)
    h_fit, y_fit = collect_features(split, digits("train"), bundle.preprocess)
    h_test, y_test = collect_features(split, digits("test"), bundle.preprocess)
    h_ood, _ = collect_features(split, ood_set("textures", n=200, size=(8, 8)), bundle.preprocess)
    w, b = split.head.weight.detach().numpy(), split.head.bias.detach().numpy()
    original = np.mean(np.argmax(h_test @ w.T + b, axis=1) == y_test)
    det = oodgate.detector("mos").fit(h_fit, y_fit, weight=w, bias=b)
    accuracy = np.mean(det.predict(h_test) == y_test)
    assert accuracy >= original - 0.01, (accuracy, original)
    assert oodgate.metrics.auroc(det.score(h_test), det.score(h_ood)) > 0.9


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST is not installed (dataset-fashion-mnist)")
def test_fashion_mnist_accuracy():
    """A stand-in classifier (784-128-10 ReLU MLP, 8 epochs on 10 000 images); MOS on its hidden features."""
    from oodgate.data.sets import fashion_mnist

    train, test = fashion_mnist("train", limit=10_000), fashion_mnist("test", limit=5_000)
    x = torch.from_numpy(train.images.reshape(len(train), -1).astype(np.float32) / 255.0)
    x_test = torch.from_numpy(test.images.reshape(len(test), -1).astype(np.float32) / 255.0)
    y = torch.from_numpy(train.labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        hidden, out = torch.nn.Linear(784, 128), torch.nn.Linear(128, 10)
        opt = torch.optim.Adam([*hidden.parameters(), *out.parameters()], lr=2e-3)
        gen = torch.Generator().manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for epoch in range(8):
                if epoch == 6:  # the last two epochs at lr / 10 settle the head
                    opt.param_groups[0]["lr"] = 2e-4
                order = torch.randperm(len(x), generator=gen)
                for i in range(0, len(x), 128):
                    idx = order[i:i + 128]
                    loss = torch.nn.functional.cross_entropy(out(torch.relu(hidden(x[idx]))), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        with torch.no_grad():
            h, h_test = torch.relu(hidden(x)).numpy(), torch.relu(hidden(x_test)).numpy()
    finally:
        torch.set_num_threads(threads)
    w, b = out.weight.detach().numpy(), out.bias.detach().numpy()
    original = np.mean(np.argmax(h_test @ w.T + b, axis=1) == test.labels)
    assert original > 0.84
    det = oodgate.detector("mos").fit(h, train.labels, weight=w, bias=b)
    accuracy = np.mean(det.predict(h_test) == test.labels)
    assert accuracy >= original - 0.01, (accuracy, original, det.fit_info())
