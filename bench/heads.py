"""Detector heads alone (pooled features in, logits/score/label out), fitted on synthetic features, exported to ONNX.

The head is what a detector adds to the classifier, so its cost vs batch size and class count is measured without
a backbone (``scaling.py``), and ``overhead.py`` uses it to estimate the head's share of a whole graph. Features:
|N(0, 1)| plus a class-dependent offset (non-negative like pooled ReLU features), W ~ N(0, 1/D), labels = the
classifier's predictions. AdaSCALE's head takes (h, h'); its gradient branch needs a backbone (``adascale_floor.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common import CACHE, LIBRARY_SOURCES, SETUP_VERSION, cached_file, key_of, method_sources, source_hash

N_FIT = 2000
#: heads built from a fitted LINe: its head before issue 16, and its head with the mask decision taken out
LINE_VARIANTS = ("line_previous", "line_floor")


def synthetic_problem(c: int, d: int, n: int = N_FIT, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                  np.ndarray]:
    """(features (n, d) float32 >= 0, labels (n,), W (c, d), b (c,)) with labels = argmax(W h + b)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0 / np.sqrt(d), size=(c, d))
    b = rng.normal(0.0, 0.01, size=c)
    h = np.abs(rng.normal(0.0, 1.0, size=(n, d)) + 0.5 * np.maximum(w[rng.integers(c, size=n)], 0) * np.sqrt(d))
    h = h.astype(np.float32)
    return h, np.argmax(h @ w.T + b, axis=1), w, b


def previous_line_head(det: Any) -> Any:
    """LINe's head as oodgate built it before issue 16, from a fitted LINe detector's public state: per sample the
    (N, C, D) products |S_l| * W compared with t_l, Cast + Mul, one batched MatMul. Kept in the benchmarks only, to
    time the head that replaced it in the same run; the same scores (tests/test_bench.py)."""
    import torch

    from oodgate.detectors.ops import energy

    state, clip = det.fitted_state(), float(det.fit_info()["clip"])

    class PreviousLINeHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for name, value in (("weight", state["weight"]), ("bias", state["bias"]),
                                ("abs_contribution", np.abs(state["contribution"])),
                                ("neuron_mask", state["neuron_mask"]), ("thresholds", state["thresholds"])):
                self.register_buffer(name, torch.as_tensor(np.asarray(value, np.float32)))
            self.register_buffer("clip", torch.tensor(clip))

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            z = torch.nn.functional.linear(h, self.weight, self.bias)
            hc = torch.minimum(h, self.clip)
            lab = torch.argmax(torch.nn.functional.linear(hc, self.weight, self.bias), dim=1)
            x = hc * self.neuron_mask.index_select(0, lab)
            keep = (self.abs_contribution.index_select(0, lab)[:, None, :] * self.weight[None]
                    ) > self.thresholds.index_select(0, lab)[:, None, None]
            masked = keep.to(h.dtype) * self.weight
            return z, energy(torch.matmul(masked, x[:, :, None])[:, :, 0] + self.bias), torch.argmax(z, dim=1)

    return PreviousLINeHead().eval()


@contextlib.contextmanager
def floor_of_line() -> Iterator[None]:
    """LINe's head with its mask decision taken out (ThresholdedRelu made the identity): the same per-sample pass over
    the (N, C, D) rescaled weights and their contraction with h' * factor_l, with no mask. Its score is
    E(W (h' * m_l) + b) (scale * factor = 1 on the kept neurons), not LINe's: it is the least that this pass costs,
    timed beside LINe in question 1 (``line_floor``)."""
    import oodgate.detectors.line as line_module

    plain = line_module.thresholded_relu
    line_module.thresholded_relu = lambda x, alpha: x
    try:
        yield
    finally:
        line_module.thresholded_relu = plain


def fitted_head(method: str, c: int, d: int) -> Any:
    """The detector's torch head (eval mode) fitted on the synthetic problem of shape (c, d)."""
    import torch

    from oodgate.detectors import detector

    h, y, w, b = synthetic_problem(c, d)
    if method == "linear":
        lin = torch.nn.Linear(d, c)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
            lin.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        return lin.eval()
    if method.startswith("adascale"):
        from oodgate.detectors.adascale import AdaSCALEHead

        ecdf = np.sort(np.random.default_rng(1).gamma(2.0, 1.0, size=5000)).astype(np.float32)
        return AdaSCALEHead(w, b, ecdf, variant=method[-1], p_min=80.0, p_max=85.0, k1=1.0, k2=5.0, lam=10.0).eval()
    params: dict[str, Any] = {}
    if method == "mos":
        params = {"groups": "imagenet-taxonomy"} if c == 1000 else {"num_groups": min(4, c // 2)}
        params.update(steps=50, val=0.0, progress=False)
    det = detector("line" if method in LINE_VARIANTS else method, **params).fit(h, y, weight=w, bias=b)
    return previous_line_head(det) if method == "line_previous" else det.head()


def head_inputs(method: str, c: int, d: int, batch: int) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds for the head graph: real-looking features (and perturbed ones for AdaSCALE)."""
    h = np.ascontiguousarray(synthetic_problem(c, d, n=max(batch, 1), seed=7)[0][:batch])
    if method.startswith("adascale"):
        h2 = np.abs(h + np.random.default_rng(8).normal(0.0, 0.05, size=h.shape)).astype(np.float32)
        return {"h": h, "h2": np.ascontiguousarray(h2)}
    return {"h": h}


def head_graph_path(method: str, c: int, d: int) -> Path:
    """The head of ``method`` at C classes x D features, exported with oodgate's export call, cached."""
    import torch

    from oodgate.exporter import export_onnx

    base = "line" if method in LINE_VARIANTS else method
    key = key_of(SETUP_VERSION, method, c, d, N_FIT, source_hash([*LIBRARY_SOURCES, *method_sources(base),
                                                                   "bench/heads.py"]))
    two = method.startswith("adascale")

    def write(tmp: Path) -> None:
        example = torch.rand((2, d), generator=torch.Generator().manual_seed(0))
        with floor_of_line() if method == "line_floor" else contextlib.nullcontext():
            export_onnx(fitted_head(method, c, d), (example, example * 1.01) if two else example,
                        input_names=["h", "h2"] if two else ["h"],
                        output_names=["logits"] if method == "linear" else ["logits", "score", "label"]
                        ).save(str(tmp))

    return cached_file(CACHE / "heads" / f"{method}-c{c}-d{d}-{key}.onnx", f"fit + export head {method} C={c} D={d}",
                       write)
