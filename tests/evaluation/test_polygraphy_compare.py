"""oodgate's parity rules on Polygraphy's machinery (issue 17): real digits images through Polygraphy's OnnxrtRunner
and Comparator, judged by ood_compare_func (per-output atol/rtol + decision/label rules), and golden outputs saved as
Polygraphy RunResults JSON and loaded back. The same compare function serves TrtRunner on a GPU (not run here)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("polygraphy")

from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx  # noqa: E402
from polygraphy.comparator import Comparator  # noqa: E402
from polygraphy.comparator.struct import IterationResult  # noqa: E402
from polygraphy.json import load_json  # noqa: E402
from polygraphy.logger import G_LOGGER  # noqa: E402

from oodgate.errors import OodgateError  # noqa: E402
from oodgate.evaluation.polygraphy_compare import load_run_results, ood_compare_func, save_run_results  # noqa: E402
from oodgate.runtime import Session  # noqa: E402


@pytest.fixture(scope="module")
def runs(energy_graph, perturbed_energy_graph, digits_test):
    """Polygraphy runs of the energy graph and of the same graph with 0.01 added to its score, on 40 real digits."""
    with Session(energy_graph, providers="cpu") as sess:
        x = sess.preprocess(digits_test.images[:40])
        tau = sess.threshold
    runners = [OnnxrtRunner(SessionFromOnnx(str(energy_graph), providers=["cpu"]), name="ort-energy"),
               OnnxrtRunner(SessionFromOnnx(str(perturbed_energy_graph), providers=["cpu"]), name="ort-perturbed")]
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        results = Comparator.run(runners, data_loader=[{"input": x}])
    return results, x, tau


def accuracy(results, compare_func):
    """((reference runner, runtime runner), [per-iteration verdicts]) of Polygraphy's one comparison."""
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL + 1):
        (comparison,) = Comparator.compare_accuracy(results, compare_func=compare_func)
    (pair, verdicts), = comparison.items()
    return pair, verdicts, bool(comparison)


def test_per_output_tolerances_on_polygraphys_comparator(runs):
    results, _, tau = runs
    pair, verdicts, passed = accuracy(results, ood_compare_func(tau))
    assert pair == ("ort-energy", "ort-perturbed") and not passed  # Polygraphy's verdict: the 0.01 offset is caught
    got = {name: bool(v) for name, v in verdicts[0].items()}
    assert got == {"logits": True, "score": False, "is_ood": True, "label": True}
    loose = accuracy(results, ood_compare_func(tau, atol={"score": 0.011, "": 1e-4}, rtol=0.0))
    assert loose[2] and all(bool(v) for v in loose[1][0].values())  # per-output: only the score's atol widened
    tight = accuracy(results, ood_compare_func(tau, atol={"score": 0.009, "": 1e-4}, rtol=0.0))
    assert not tight[2] and not tight[1][0]["score"]


def test_decision_and_label_rules(runs):
    results, _, tau = runs
    ref = results["ort-energy"][0]
    flipped = {k: np.array(v) for k, v in ref.items()}
    clear = np.abs(flipped["score"] - tau) > 1.0
    assert clear.any()
    i = int(np.flatnonzero(clear)[0])
    flipped["is_ood"][i] = ~flipped["is_ood"][i]
    flipped["label"][i] = (flipped["label"][i] + 1) % flipped["logits"].shape[1]
    verdicts = ood_compare_func(tau)(ref, IterationResult(flipped, runner_name="broken"))
    assert bool(verdicts["logits"]) and bool(verdicts["score"])
    assert not verdicts["is_ood"] and "1 flips" in repr(verdicts["is_ood"])
    assert not verdicts["label"] and "1 label mismatches" in repr(verdicts["label"])
    with pytest.raises(OodgateError, match="missing"):
        ood_compare_func(tau)(ref, IterationResult({"score": flipped["score"]}, runner_name="partial"))


def test_golden_outputs_as_polygraphy_run_results(runs, tmp_path):
    results, x, tau = runs
    ref = results["ort-energy"][0]
    golden = save_run_results(tmp_path / "golden.json", dict(ref), runner="pytorch-reference", inputs=x)
    with pytest.raises(OodgateError, match="exists"):
        save_run_results(golden, dict(ref))  # never overwritten without asking
    (tmp_path / "other.inputs.json").write_text("[]")
    with pytest.raises(OodgateError, match="other.inputs.json exists"):
        save_run_results(tmp_path / "other.json", dict(ref), inputs=x)
    assert not (tmp_path / "other.json").exists()  # nothing written half
    loaded = load_run_results(golden)
    (name, iterations), = loaded.items()
    assert name == "pytorch-reference"
    for key in ("logits", "score", "is_ood", "label"):
        np.testing.assert_array_equal(iterations[0][key], ref[key])
    feeds = load_json(str(tmp_path / "golden.inputs.json"))
    np.testing.assert_array_equal(feeds[0]["input"], x)
    loaded.append(("ort-energy", results["ort-energy"]))
    _, verdicts, passed = accuracy(loaded, ood_compare_func(tau))
    assert passed and all(bool(v) for v in verdicts[0].values())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(OodgateError, match="not a Polygraphy run-results"):
        load_run_results(tmp_path / "bad.json")
