"""The reduced model zoo (small configs of torchvision/timm families, see zoo_models.py) against float64.

Per family, on real ID (Fashion-MNIST) and real OOD (scikit-image photos/textures) images:
- head discovery and the sign of the penultimate features;
- one ONNX graph of AdaSCALE-A's whole computation with its intermediates as outputs (first-pass logits, h, the
  input gradient, the perturbation mask, Q', the AdaSCALE-A score), run by ONNX Runtime and judged by the
  noise-floor rule against the same module computed in float64 by PyTorch (PyTorch float32's distance to
  float64 is the floor); the mask by its count of elements that differ from float64; and the TensorRT audit.
- the library route (calibrate -> export (noise-floor check) -> parity with OOD drift) for the families whose
  single-pass graphs used to fail a 1e-4 parity (ResNet-50, EfficientNet-B0) and AdaSCALE on ViT and Swin.

Needs torchvision (and timm for the timm families): ``pip install --no-deps torchvision==0.28.0 timm``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
zoo = pytest.importorskip("zoo_models")
try:
    zoo.import_torchvision()
except ImportError:  # pragma: no cover - the test deps are missing
    pytest.skip("torchvision is not installed: pip install --no-deps torchvision==0.28.0", allow_module_level=True)

from oodgate.detectors.adascale import AdaSCALEHead, _LogitsAndFeatures, _n_selected, smallest_n_mask_bisection  # noqa: E402
from oodgate.detectors.gradient import export_gradient_onnx, trace_logits_and_input_gradient  # noqa: E402
from oodgate.models import split_classifier  # noqa: E402
from oodgate.models.split import nonnegative_share  # noqa: E402
from oodgate.noise_floor import compare_to_floor  # noqa: E402
from oodgate.runtime.trt_audit import audit_graph, format_findings, has_errors  # noqa: E402

TIMM = ("timm_vit_tiny", "timm_convnext_atto")
N_ID, N_OOD = 6, 6
EXPECTED_HEADS = {
    "resnet18": "fc", "resnet50": "fc", "resnext50_32x4d": "fc", "wide_resnet50_2": "fc", "regnet_y_400mf": "fc",
    "densenet121": "classifier", "efficientnet_b0": "classifier.1", "efficientnet_v2_s": "classifier.1",
    "mobilenet_v3_large": "classifier.3", "convnext_tiny": "classifier.2", "vit_b_16": "heads.head",
    "swin_t": "head", "timm_vit_tiny": "head", "timm_convnext_atto": "head.fc",
}


def _timm_available() -> bool:
    try:
        zoo.import_timm()
    except ImportError:
        return False
    return True


def _skip_missing(name: str) -> None:
    if zoo.FAMILIES[name].source == "timm" and not _timm_available():
        pytest.skip("timm is not installed: pip install --no-deps timm")


class ProbeScorer(nn.Module):
    """AdaSCALE-A's exported computation (AdaSCALEScorer) with its intermediates as outputs."""

    def __init__(self, gradient: nn.Module, head: AdaSCALEHead, n_select: int, eps: float) -> None:
        super().__init__()
        self.gradient, self.head, self.n_select, self.eps = gradient, head, n_select, eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, h, g = self.gradient(x)
        mask = smallest_n_mask_bisection(g.flatten(1).abs(), self.n_select).reshape(g.shape)
        h2 = self.gradient.model.backbone(x + self.eps * torch.sign(g) * mask)
        q = self.head.q_prime(h, h2)
        _, score, _ = self.head(h, h2)
        return logits, h, g, mask, q, score


PROBE_OUTPUTS = ("logits", "h", "grad", "mask", "q", "score")


def _probe(split: nn.Module, size: int, ecdf: np.ndarray) -> ProbeScorer:
    example = torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(0))
    gradient = trace_logits_and_input_gradient(_LogitsAndFeatures(split).eval(), example)
    w, b = split.head.weight.detach().numpy(), split.head.bias.detach().numpy()
    head = AdaSCALEHead(w, b, ecdf, variant="a", p_min=80.0, p_max=85.0, k1=1.0, k2=5.0, lam=10.0)
    return ProbeScorer(gradient, head, _n_selected((3, size, size), 0.05), 0.5).eval()


@pytest.fixture(scope="module")
def family_graphs(tmp_path_factory):
    """name -> (probe module, graph path, real inputs (ID then OOD)), built once per family."""
    cache: dict[str, tuple[ProbeScorer, Path, np.ndarray]] = {}
    folder = tmp_path_factory.mktemp("zoo")

    def get(name: str):
        if name not in cache:
            model, size = zoo.build(name)
            split = split_classifier(model)
            ids, _ = zoo.id_images(N_ID + 24, size, offset=1000)
            inputs = zoo.normalise(np.concatenate([ids[:N_ID], zoo.ood_images(N_OOD, size, seed=3)]))
            # the ID empirical CDF of Q' from 24 further ID images (the exported head's buffer)
            fit = torch.from_numpy(zoo.normalise(ids[N_ID:]))
            seed_probe = _probe(split, size, np.zeros(1))
            with torch.no_grad():
                ecdf = seed_probe(fit)[4].numpy()
            probe = _probe(split, size, ecdf)
            path = folder / f"{name}.onnx"
            export_gradient_onnx(probe, torch.from_numpy(inputs[:2]), path, output_names=PROBE_OUTPUTS)
            cache[name] = (probe, path, inputs)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_head_discovery_and_feature_sign(name: str) -> None:
    """The split finds each family's final Linear, and the features' sign is as documented (docs/ZOO.md)."""
    _skip_missing(name)
    torch.manual_seed(0)
    family = zoo.FAMILIES[name]
    model = family.reduced(10).eval()
    split = split_classifier(model)
    assert split.head_path == EXPECTED_HEADS[name]
    x = torch.from_numpy(zoo.normalise(zoo.ood_images(4, family.reduced_size)))
    with torch.no_grad():
        h = split.features(x)
        np.testing.assert_allclose(split.head(h).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    share = nonnegative_share(h)
    assert (share == 1.0) == family.nonnegative, f"{name}: {share:.3f} of h >= 0"


@pytest.mark.parametrize("name", list(zoo.FAMILIES))
def test_adascale_graph_matches_float64(name: str, family_graphs) -> None:
    """ONNX Runtime's logits, h, gradient, mask, Q' and score within the noise floor of float64; TRT audit passes."""
    _skip_missing(name)
    probe, path, inputs = family_graphs(name)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(PROBE_OUTPUTS, sess.run(None, {sess.get_inputs()[0].name: inputs})))
    with torch.no_grad():
        ref32 = dict(zip(PROBE_OUTPUTS, (t.numpy() for t in probe(torch.from_numpy(inputs)))))
        ref64 = dict(zip(PROBE_OUTPUTS, (t.numpy() for t in copy.deepcopy(probe).double()(
            torch.from_numpy(inputs).double()))))
    # the continuous parts: within 4 noise floors of float64
    for output in ("logits", "h", "grad"):
        cmp = compare_to_floor(output, got[output], ref32[output], ref64[output])
        assert cmp.passed, f"{name} {output}: {cmp}"
        assert cmp.graph_error <= 1e-3 * max(1.0, cmp.scale), f"{name} {output}: not float32-exact: {cmp}"
    # the selection of the 5 % smallest |g| is discontinuous: per sample, the graph's mask may differ from
    # float64's only where PyTorch float32's does (a few boundary elements), never in bulk
    n_select = probe.n_select
    for i in range(len(inputs)):
        graph_diff = int((got["mask"][i] != ref64["mask"][i]).sum())
        torch_diff = int((ref32["mask"][i] != ref64["mask"][i]).sum())
        assert got["mask"][i].sum() == n_select
        assert graph_diff <= 4 * torch_diff + max(2, n_select // 1000), (name, i, graph_diff, torch_diff)
    # Q' and the score: where the graph's mask equals float64's, within the noise floor; elsewhere close
    same = np.array([np.array_equal(got["mask"][i], ref64["mask"][i]) for i in range(len(inputs))])
    for output in ("q", "score"):
        if same.any():
            cmp = compare_to_floor(output, got[output][same], ref32[output][same], ref64[output][same])
            assert cmp.passed or cmp.graph_error <= 1e-4 * max(1.0, cmp.scale), f"{name} {output}: {cmp}"
        rel = np.abs(got[output] - ref64[output]) / np.maximum(1.0, np.abs(ref64[output]))
        assert rel.max() <= 2e-2, f"{name} {output}: max relative diff {rel.max():.3g} to float64"
    findings = audit_graph(str(path))
    assert not has_errors(findings), f"{name}: TensorRT audit: {format_findings(findings)}"
