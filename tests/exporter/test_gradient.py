"""The traced input-gradient branch: ONNX Runtime vs eager autograd on new inputs, dynamic batch, clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from tiny_models import TinyResNet, randomise_batch_norm  # noqa: E402

from oodgate.detectors.gradient import (  # noqa: E402
    ALLOWED_OPS,
    GradientTraceError,
    LogitsAndInputGradient,
    UnsupportedLayerError,
    export_gradient_onnx,
    trace_logits_and_input_gradient,
)

# ---------------------------------------------------------------------------------------------------------
# Models (built here; EfficientNet-Lite0 from its PyPI packages)
# ---------------------------------------------------------------------------------------------------------


class DigitsCNN(nn.Module):
    """Digits-like CNN on 1x16x16: conv-BN-ReLU, strided conv, max-pool, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class PoolingZoo(nn.Module):
    """Exercises the module's own decompositions: avg-pool (ceil mode, no pad count), adaptive avg-pool, SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.SiLU()
        self.pool1 = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.conv2 = nn.ConvTranspose2d(6, 6, 3, stride=2, padding=1, output_padding=1)
        self.pool2 = nn.AdaptiveAvgPool2d((2, 3))
        self.fc = nn.Linear(36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool1(self.act(self.conv1(x)))
        return self.fc(self.pool2(torch.tanh(self.conv2(y))).flatten(1))


def _photos(names: list[str], size: int = 224) -> torch.Tensor:
    """skimage sample photos: short side resized to `size`, centre crop, normalised (x - 127) / 128."""
    data = pytest.importorskip("skimage.data")
    image_mod = pytest.importorskip("PIL.Image")
    out = []
    for name in names:
        image = image_mod.fromarray(getattr(data, name)()).convert("RGB")
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.size[0] * scale)), max(size, round(image.size[1] * scale))),
                             image_mod.BILINEAR)
        left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
        array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32)
        out.append(torch.from_numpy((array - 127.0) / 128.0).permute(2, 0, 1))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def autograd_reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager logits and d logits[i, argmax_i] / d x[i] with torch.autograd.grad."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    picked = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(picked, x)
    return logits.detach(), grad


def run_onnx(path: str | Path, x: torch.Tensor) -> list[np.ndarray]:
    """Run an ONNX graph with ONNX Runtime (CPU) on one input."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def assert_logits_match(got: np.ndarray, ref: torch.Tensor) -> None:
    """Logits agree to float32 precision and give the same predicted class."""
    ref_np = ref.numpy()
    assert got.shape == ref_np.shape
    np.testing.assert_allclose(got, ref_np, rtol=1e-4, atol=1e-4 * (1 + np.abs(ref_np).max()))
    assert (got.argmax(1) == ref_np.argmax(1)).all()


def gradient_mismatch(got: np.ndarray, ref: torch.Tensor, rel: float) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: share of elements with |diff| > rel * max|ref|, and ||diff|| / ||ref||."""
    ref_np = ref.numpy().reshape(len(ref), -1).astype(np.float64)
    diff = np.abs(got.reshape(len(got), -1) - ref_np)
    scale = np.abs(ref_np).max(axis=1, keepdims=True)
    bad_share = (diff > rel * scale).mean(axis=1)
    rel_l2 = np.linalg.norm(diff, axis=1) / np.linalg.norm(ref_np, axis=1)
    return bad_share, rel_l2


# ---------------------------------------------------------------------------------------------------------
# Exported families (module scope: trace + export once)
# ---------------------------------------------------------------------------------------------------------


class Family:
    """A model, its traced gradient module and the exported ONNX graph."""

    def __init__(self, model: nn.Module, example: torch.Tensor, path: Path, check: bool = True) -> None:
        self.model = model
        self.example = example
        self.module = trace_logits_and_input_gradient(model, example, check=check)
        self.path = export_gradient_onnx(self.module, example, path)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """Digits CNN (1x16x16) traced and exported once."""
    torch.manual_seed(0)
    model = randomise_batch_norm(DigitsCNN(), seed=1)
    example = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    return Family(model, example, tmp_path_factory.mktemp("grad") / "digits.onnx")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Family:
    """ResNet-style model (3x64x64) traced and exported once."""
    torch.manual_seed(3)
    model = randomise_batch_norm(TinyResNet(), seed=4)
    example = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    return Family(model, example, tmp_path_factory.mktemp("grad") / "resnet.onnx")


@pytest.fixture(scope="module")
def efficientnet(efficientnet_lite0, efficientnet_adascale, tmp_path_factory: pytest.TempPathFactory) -> Family:
    """Pretrained EfficientNet-Lite0 (3x224x224): the gradient branch AdaSCALE's export traced (tests/conftest.py,
    traced once per run), exported alone. Its forward is head(backbone(x)): the classifier's logits."""
    family = Family.__new__(Family)
    family.model = efficientnet_lite0.bundle.model
    family.module = efficientnet_adascale.scorer.gradient  # (logits, h, grad)
    family.example = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    family.path = export_gradient_onnx(family.module, family.example,
                                       tmp_path_factory.mktemp("grad") / "efficientnet_lite0.onnx",
                                       output_names=("logits", "h", "grad"))
    return family


def _digits_inputs(batch: int, seed: int) -> torch.Tensor:
    """Smooth blob 'digits' (not the export example)."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, 16)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centres = torch.rand(batch, 2, generator=gen) - 0.5
    blobs = torch.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 0.1)
    return (blobs + 0.1 * torch.randn(batch, 16, 16, generator=gen)).unsqueeze(1) * 2 - 1


# ---------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------


def test_allowed_ops_are_translated_by_the_exporter() -> None:
    """Pin the semi-private exporter API: every allowed op has an ONNX translation or an exporter decomposition."""
    registration = pytest.importorskip("torch.onnx._internal.exporter._registration")
    decomp = pytest.importorskip("torch.onnx._internal.exporter._decomp")
    registry = registration.ONNXRegistry.from_torchlib(opset_version=18)
    implemented = set(decomp.get_onnx_implemented_overloads(registry))
    decomposed = decomp.create_onnx_friendly_decomposition_table(implemented)
    missing = [str(op) for op in ALLOWED_OPS if not registry.is_registered(op) and op not in decomposed]
    assert not missing


@pytest.mark.parametrize("batch", [1, 5])
def test_digits_matches_autograd(digits: Family, batch: int) -> None:
    """ORT logits and gradient equal eager autograd on new inputs (batch differs from the trace's)."""
    x = _digits_inputs(batch, seed=10 + batch)
    logits, grad = run_onnx(digits.path, x)
    ref_logits, ref_grad = autograd_reference(digits.model, x)
    assert grad.shape == (batch, 1, 16, 16)
    assert_logits_match(logits, ref_logits)
    bad_share, rel_l2 = gradient_mismatch(grad, ref_grad, rel=1e-4)
    assert bad_share.max() <= 0.01 and rel_l2.max() <= 1e-4


@pytest.mark.parametrize("batch", [1, 5])
def test_resnet_matches_autograd(resnet: Family, batch: int) -> None:
    """ORT logits and gradient equal eager autograd on new inputs (batch differs from the trace's)."""
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(20 + batch))
    logits, grad = run_onnx(resnet.path, x)
    ref_logits, ref_grad = autograd_reference(resnet.model, x)
    assert grad.shape == (batch, 3, 64, 64)
    assert_logits_match(logits, ref_logits)
    bad_share, rel_l2 = gradient_mismatch(grad, ref_grad, rel=1e-4)
    assert bad_share.max() <= 0.01 and rel_l2.max() <= 1e-4


@pytest.mark.parametrize("names", [["astronaut"], ["chelsea", "coffee", "rocket", "immunohistochemistry", "retina"]],
                         ids=["batch1", "batch5"])
def test_efficientnet_lite0_matches_autograd_on_photos(efficientnet: Family, names: list[str]) -> None:
    """Deep ReLU6 net: an activation that ORT and PyTorch put on opposite sides of 0 or 6 changes the
    gradient over its whole receptive field by a little, so compare shares and relative norms."""
    x = _photos(names)
    logits, _, grad = run_onnx(efficientnet.path, x)
    ref_logits, ref_grad = autograd_reference(efficientnet.model, x)
    assert grad.shape == (len(names), 3, 224, 224)
    assert_logits_match(logits, ref_logits)
    bad_share, rel_l2 = gradient_mismatch(grad, ref_grad, rel=1e-3)
    assert bad_share.max() <= 0.02 and rel_l2.max() <= 2e-2
    cosine = (grad.reshape(len(names), -1) * ref_grad.numpy().reshape(len(names), -1)).sum(1) / (
        np.linalg.norm(grad.reshape(len(names), -1), axis=1) * np.linalg.norm(ref_grad.reshape(len(names), -1), axis=1))
    assert cosine.min() > 0.999


def test_gradient_is_computed_not_frozen(digits: Family) -> None:
    """Two different inputs give different gradients, each matching autograd; the graph has backward ops."""
    x_a, x_b = _digits_inputs(1, seed=30), _digits_inputs(1, seed=31)
    (_, grad_a), (_, grad_b) = run_onnx(digits.path, x_a), run_onnx(digits.path, x_b)
    assert np.abs(grad_a - grad_b).max() > 0.1 * np.abs(grad_a).max()
    for x, grad in ((x_a, grad_a), (x_b, grad_b)):
        _, ref = autograd_reference(digits.model, x)
        np.testing.assert_allclose(grad, ref.numpy(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    ops = {node.op_type for node in onnx.load(digits.path).graph.node}
    assert {"ConvTranspose", "Where"} <= ops
    # TensorRT-friendly: max-pool backward needs neither MaxPool's Indices output nor a scatter
    assert "ScatterElements" not in ops
    assert all(len(n.output) == 1 for n in onnx.load(digits.path).graph.node if n.op_type == "MaxPool")
    example_grad = digits.module(digits.example)[1].detach().numpy()
    assert not np.allclose(example_grad[:1], grad_a)


def test_own_decompositions_match_autograd(tmp_path: Path) -> None:
    """Avg-pool (ceil mode, count_include_pad=False), adaptive avg-pool (uneven bins), SiLU, ConvTranspose."""
    torch.manual_seed(7)
    model = PoolingZoo().eval()
    example = torch.randn(2, 3, 15, 13)
    module = trace_logits_and_input_gradient(model, example)
    path = export_gradient_onnx(module, example, tmp_path / "zoo.onnx")
    x = torch.randn(3, 3, 15, 13, generator=torch.Generator().manual_seed(8))
    logits, grad = run_onnx(path, x)
    ref_logits, ref_grad = autograd_reference(model, x)
    assert_logits_match(logits, ref_logits)
    np.testing.assert_allclose(grad, ref_grad.numpy(), rtol=1e-4, atol=1e-4 * float(ref_grad.abs().max()))


def test_callers_model_is_not_modified() -> None:
    """The caller's model keeps its mode, requires_grad and weights; the branch holds a frozen copy."""
    model = DigitsCNN().train()
    before = copy.deepcopy(model.state_dict())
    module = trace_logits_and_input_gradient(model, torch.randn(2, 1, 16, 16))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not module.model.training and not any(p.requires_grad for p in module.model.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(model.parameters(), module.model.parameters()))


class PerturbAndForwardAgain(nn.Module):
    """AdaSCALE-like composition: gradient branch, sign perturbation of the smallest-|g| entries, 2nd forward."""

    def __init__(self, branch: LogitsAndInputGradient, fraction: float = 0.05, eps: float = 0.5) -> None:
        super().__init__()
        self.branch = branch
        self.k = max(1, int(fraction * np.prod(branch.input_shape)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, grad = self.branch(x)
        magnitude = grad.abs().flatten(1)
        threshold = torch.topk(magnitude, self.k, dim=1, largest=False).values[:, -1:]
        selected = (magnitude <= threshold).view_as(x)  # ties included: deterministic in both runtimes
        perturbed = torch.where(selected, x + self.eps * torch.sign(grad), x)
        return logits, grad, self.branch.model(perturbed)


def _perturb_reference(model: nn.Module, x: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """Eager autograd version of PerturbAndForwardAgain's second logits."""
    _, grad = autograd_reference(model, x)
    magnitude = grad.abs().flatten(1)
    threshold = torch.topk(magnitude, k, dim=1, largest=False).values[:, -1:]
    perturbed = torch.where((magnitude <= threshold).view_as(x), x + eps * torch.sign(grad), x)
    with torch.no_grad():
        return model(perturbed)


def test_composed_module_exports_with_shared_weights(resnet: Family, tmp_path: Path) -> None:
    """A larger module calling the branch, topk/where and a second backbone forward exports as one graph."""
    outer = PerturbAndForwardAgain(resnet.module)
    path = export_gradient_onnx(outer, resnet.example, tmp_path / "composed.onnx",
                                output_names=("logits", "grad", "logits_perturbed"))
    for batch in (1, 4):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(40 + batch))
        logits, grad, logits2 = run_onnx(path, x)
        ref_logits, ref_grad = autograd_reference(resnet.model, x)
        assert_logits_match(logits, ref_logits)
        np.testing.assert_allclose(grad, ref_grad.numpy(), rtol=1e-4, atol=1e-4 * float(ref_grad.abs().max()))
        ref2 = _perturb_reference(resnet.model, x, outer.k, outer.eps)
        assert_logits_match(logits2, ref2)
        assert np.abs(logits2 - logits).max() > 1e-3  # the perturbation did something
    graph = onnx.load(str(path))
    weight_bytes = sum(int(np.prod(t.dims)) * 4 for t in graph.graph.initializer)
    model_bytes = sum(p.numel() * 4 for p in resnet.model.parameters())
    assert weight_bytes < 1.5 * model_bytes  # the second forward reuses the branch's weights


class MaxPoolHead(nn.Module):
    """A CNN whose head uses AdaptiveMaxPool2d: no ONNX translation for it (or its backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class _LegacySwish(torch.autograd.Function):
    """An old-style autograd.Function (no setup_context): torch.func cannot differentiate through it."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        s = torch.sigmoid(x)
        return grad * s * (1 + x * (1 - s))


class LegacySwish(nn.Module):
    """Swish through the legacy autograd.Function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LegacySwish.apply(x)


def test_unsupported_op_names_op_and_layer() -> None:
    """An op without ONNX translation fails at trace time, naming the op and the layer."""
    with pytest.raises(UnsupportedLayerError) as info:
        trace_logits_and_input_gradient(MaxPoolHead(), torch.randn(2, 1, 8, 8))
    message = str(info.value)
    assert "aten.adaptive_max_pool2d" in message and "not supported in the exported gradient branch" in message
    assert "layer 'pool' of type AdaptiveMaxPool2d" in message
    assert isinstance(info.value, ValueError)


def test_untraceable_layer_is_named() -> None:
    """A layer torch.func cannot trace is named in the error, with the cause."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), LegacySwish(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' of type LegacySwish.*setup_context"):
        trace_logits_and_input_gradient(model, torch.randn(2, 1, 8, 8))


def test_batch_dependent_forward_is_caught() -> None:
    """A forward that depends on the batch size cannot become a dynamic-batch graph: it is refused."""
    class BatchDependent(nn.Module):
        """Linear head whose output depends on the batch size."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Logits scaled by a factor that depends on the batch size's parity."""
            scale = 2.0 if x.shape[0] % 2 == 0 else 1.0  # breaks a dynamic batch axis
            return self.fc(x.flatten(1)) * scale

    with pytest.raises((GradientTraceError, UnsupportedLayerError), match="batch"):
        trace_logits_and_input_gradient(BatchDependent(), torch.randn(2, 1, 2, 2))


@pytest.mark.parametrize("shape", [(1, 1, 17, 16), (3, 1, 16, 8), (2, 3, 16, 16), (1, 16, 16)])
def test_wrong_input_shape_raises(digits: Family, shape: tuple[int, ...]) -> None:
    """Another C/H/W (or rank) raises a ValueError naming the expected and the given shapes."""
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\).*" + str(shape).replace("(", r"\(").replace(")", r"\)")):
        digits.module(torch.randn(shape))


def test_model_must_return_logits() -> None:
    """A model whose output is not (N, K) logits is refused up front."""
    with pytest.raises(ValueError, match=r"logits \(N, K\), got a tensor of shape \(1, 2, 14, 14\)"):
        trace_logits_and_input_gradient(nn.Conv2d(1, 2, 3), torch.randn(2, 1, 16, 16))


def test_example_must_be_4d_float() -> None:
    """The example must be a floating-point (N, C, H, W) tensor."""
    with pytest.raises(ValueError, match="floating-point"):
        trace_logits_and_input_gradient(DigitsCNN(), torch.zeros(2, 1, 16, 16, dtype=torch.int64))


def test_self_check_runs_the_float32_graph_once_and_float64_at_every_check_batch(monkeypatch) -> None:
    """The float32 graph runs once in the self-check (a float32-only fault is refused), the float64 comparison runs
    at every check batch (1 and 3, never the traced one)."""
    import importlib

    gradient = importlib.import_module("oodgate.detectors.gradient")
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    module = trace_logits_and_input_gradient(model, torch.randn(2, 1, 8, 8), check=False)
    float32_batches, float64_batches = [], []
    plain_forward, plain_run = LogitsAndInputGradient.forward, LogitsAndInputGradient.run_graph

    def forward(self, x):  # noqa: ANN001, ANN202
        float32_batches.append((len(x), x.dtype))
        return plain_forward(self, x)

    def run_graph(self, reference, x):  # noqa: ANN001, ANN202
        float64_batches.append((len(x), x.dtype))
        return plain_run(self, reference, x)

    monkeypatch.setattr(LogitsAndInputGradient, "forward", forward)
    monkeypatch.setattr(LogitsAndInputGradient, "run_graph", run_graph)
    gradient._self_check(module, torch.randn(2, 1, 8, 8))
    assert float32_batches == [(1, torch.float32)]
    assert float64_batches == [(1, torch.float64), (3, torch.float64)]

    def broken(self, x):  # noqa: ANN001, ANN202
        raise RuntimeError("expected scalar type Float but found Double")

    monkeypatch.setattr(LogitsAndInputGradient, "forward", broken)
    with pytest.raises(RuntimeError, match="expected scalar type Float"):
        gradient._self_check(module, torch.randn(2, 1, 8, 8))
