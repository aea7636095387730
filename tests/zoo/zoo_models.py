"""The model zoo of the tests and of bench/zoo.py: torchvision / timm architecture families, full size and reduced.

Test-environment shim (lives here and nowhere in the library): torchvision's PyPI wheel is built against the CUDA
PyTorch, so its compiled ops (``torchvision::nms`` & co.) do not load with the CPU torch of this project, and
``import torchvision`` fails while ``torchvision._meta_registrations`` registers fake kernels for them. Only the
detection ops live there; the classification models are pure Python. ``import_torchvision()`` therefore puts an
empty module under that name in ``sys.modules`` before the import. oodgate itself never imports torchvision.

Install (test dependencies only): ``pip install --no-deps torchvision==0.28.0 timm`` (timm imports without
huggingface_hub/safetensors as long as no pretrained weights are requested).

No weights are downloaded. ``realistic(model, ...)`` gives a randomly initialised model realistic feature and logit
scales from real images: BatchNorm running statistics re-estimated on real photos (a few forward passes in train
mode, momentum None = cumulative average), then the final linear layer trained briefly (full-batch L-BFGS on the
frozen penultimate features) on a real labelled set: Fashion-MNIST (10 classes) upsampled to the model's input
size and colour.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

#: ImageNet normalisation of torchvision/timm models
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def import_torchvision() -> Any:
    """torchvision, with its CUDA-only meta registrations replaced by an empty module (test-only shim)."""
    if "torchvision" not in sys.modules:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def import_timm() -> Any:
    """timm (after the torchvision shim, which timm imports), or raise ImportError."""
    import_torchvision()
    import timm

    return timm


@dataclass(frozen=True)
class Family:
    """One architecture family: how to build it full size (ImageNet 224x224) and reduced (CI)."""

    name: str
    full: Callable[[int], nn.Module]  #: num_classes -> model (torchvision/timm defaults)
    reduced: Callable[[int], nn.Module]  #: num_classes -> a small config of the same family
    reduced_size: int  #: input side of the reduced config
    #: what the split's penultimate features h are (for docs/ZOO.md)
    features: str
    #: True where h is a ReLU output (or a pool of one), False where it can be negative
    nonnegative: bool
    source: str = "torchvision"
    full_size: int = 224


def _tv() -> Any:
    return import_torchvision().models


# -- reduced configs: the same block types as the full models, fewer/narrower stages ----------------------------
def _resnet(block: str, layers: list[int], **kw: Any) -> Callable[[int], nn.Module]:
    def build(k: int) -> nn.Module:
        m = _tv().resnet
        return m.ResNet(getattr(m, block), layers, num_classes=k, **kw)
    return build


def _regnet_small(k: int) -> nn.Module:
    m = _tv().regnet
    params = m.BlockParams.from_init_params(depth=4, w_0=24, w_a=24.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return m.RegNet(params, num_classes=k, stem_width=16)


def _densenet_small(k: int) -> nn.Module:
    return _tv().densenet.DenseNet(growth_rate=12, block_config=(2, 2, 2, 2), num_init_features=24, bn_size=2,
                                   num_classes=k)


def _efficientnet_b0_small(k: int) -> nn.Module:
    m = _tv().efficientnet
    setting, last = m._efficientnet_conf("efficientnet_b0", width_mult=0.5, depth_mult=0.34)
    return m.EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.2, num_classes=k, last_channel=last)


def _efficientnet_v2_small(k: int) -> nn.Module:
    m = _tv().efficientnet
    setting = [
        m.FusedMBConvConfig(1, 3, 1, 16, 16, 1),
        m.FusedMBConvConfig(4, 3, 2, 16, 24, 2),
        m.MBConvConfig(4, 3, 2, 24, 48, 2),
        m.MBConvConfig(6, 3, 2, 48, 64, 1),
    ]
    return m.EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.2, num_classes=k, last_channel=256,
                          norm_layer=partial(nn.BatchNorm2d, eps=1e-3))


def _mobilenet_v3_small(k: int) -> nn.Module:
    m = _tv().mobilenetv3
    setting, last = m._mobilenet_v3_conf("mobilenet_v3_large", width_mult=0.5, reduced_tail=True)
    return m.MobileNetV3(setting, last, num_classes=k)


def _convnext_small(k: int) -> nn.Module:
    m = _tv().convnext
    setting = [m.CNBlockConfig(24, 48, 1), m.CNBlockConfig(48, 96, 1), m.CNBlockConfig(96, 192, 2),
               m.CNBlockConfig(192, None, 1)]
    return m.ConvNeXt(setting, stochastic_depth_prob=0.1, num_classes=k)


def _vit_small(k: int) -> nn.Module:
    return _tv().vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=4,
                                                      hidden_dim=64, mlp_dim=128, num_classes=k)


def _swin_small(k: int) -> nn.Module:
    # one stage of two blocks: the second one shifts its windows (roll + attention mask)
    return _tv().swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2], num_heads=[2],
                                                  window_size=[4, 4], stochastic_depth_prob=0.2, num_classes=k)


def _timm(name: str, **kw: Any) -> Callable[[int], nn.Module]:
    def build(k: int) -> nn.Module:
        return import_timm().create_model(name, pretrained=False, num_classes=k, **kw)
    return build


def _full(name: str) -> Callable[[int], nn.Module]:
    def build(k: int) -> nn.Module:
        return getattr(_tv(), name)(weights=None, num_classes=k)
    return build


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("resnet18", _full("resnet18"), _resnet("BasicBlock", [1, 1, 1, 1]), 64,
           "global average pool of the last ReLU'd residual block (512)", True),
    Family("resnet50", _full("resnet50"), _resnet("Bottleneck", [1, 1, 1, 1]), 64,
           "global average pool of the last ReLU'd bottleneck block (2048)", True),
    Family("resnext50_32x4d", _full("resnext50_32x4d"),
           _resnet("Bottleneck", [1, 1, 1, 1], groups=32, width_per_group=4), 64,
           "global average pool of the last ReLU'd grouped bottleneck block (2048)", True),
    Family("wide_resnet50_2", _full("wide_resnet50_2"), _resnet("Bottleneck", [1, 1, 1, 1], width_per_group=128),
           64, "global average pool of the last ReLU'd wide bottleneck block (2048)", True),
    Family("regnet_y_400mf", _full("regnet_y_400mf"), _regnet_small, 64,
           "global average pool of the last ReLU'd Y block (squeeze-excitation inside) (440)", True),
    Family("densenet121", _full("densenet121"), _densenet_small, 64,
           "ReLU of the final BatchNorm, then global average pool (1024)", True),
    Family("efficientnet_b0", _full("efficientnet_b0"), _efficientnet_b0_small, 64,
           "global average pool of the SiLU'd 1x1 head conv (1280); SiLU is >= -0.28, not ReLU", False),
    Family("efficientnet_v2_s", _full("efficientnet_v2_s"), _efficientnet_v2_small, 64,
           "global average pool of the SiLU'd 1x1 head conv (1280); SiLU is >= -0.28", False),
    Family("mobilenet_v3_large", _full("mobilenet_v3_large"), _mobilenet_v3_small, 64,
           "Hardswish(Linear(pooled 960)) inside .classifier (1280): the split cuts at classifier[-1]", False),
    Family("convnext_tiny", _full("convnext_tiny"), _convnext_small, 64,
           "LayerNorm2d of the global average pool, flattened (768): signed", False),
    Family("vit_b_16", _full("vit_b_16"), _vit_small, 32,
           "the class token after the final LayerNorm (768): signed", False),
    Family("swin_t", _full("swin_t"), _swin_small, 32,
           "final LayerNorm, permuted, global average pool (768): signed", False),
    Family("timm_vit_tiny", _timm("vit_tiny_patch16_224"),
           _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=64, num_heads=2), 32,
           "the class token after the final LayerNorm (192): signed", False, source="timm"),
    Family("timm_convnext_atto", _timm("convnext_atto"),
           _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(24, 48, 96, 192)), 64,
           "global average pool, LayerNorm (head.norm), flattened (320); the head is .head.fc: signed", False,
           source="timm"),
)}


# -- realistic scales from real images ------------------------------------------------------------------------
def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), ImageNet-normalised."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return ((x - np.asarray(MEAN, np.float32)[:, None, None]) / np.asarray(STD, np.float32)[:, None, None])


def rgb(images: np.ndarray, size: int) -> np.ndarray:
    """Grey or RGB uint8 images resized (bilinear) to size x size RGB."""
    from PIL import Image

    out = [np.asarray(Image.fromarray(np.ascontiguousarray(im)).convert("RGB").resize((size, size),
                                                                                  Image.Resampling.BILINEAR))
           for im in images]
    return np.stack(out).astype(np.uint8)


def id_images(n: int, size: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n real labelled ID images (Fashion-MNIST train, from ``offset``), RGB uint8 size x size, and labels."""
    from oodgate.data import fashion_mnist

    data = fashion_mnist("train", limit=offset + n)
    return rgb(data.images[offset:], size), np.asarray(data.labels[offset:])


def ood_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n real OOD images: crops of scikit-image's photos and textures, RGB uint8 size x size."""
    from oodgate.data import ood_set

    half = n // 2
    photos = ood_set("photos", n=n - half, size=size, channels="RGB", seed=seed).images
    textures = ood_set("textures", n=half, size=size, channels="RGB", seed=seed).images
    return np.concatenate([photos, textures])


def _final_linear(model: nn.Module) -> nn.Linear:
    """The model's own final nn.Linear (not the split's copy)."""
    from oodgate.models import split_classifier

    return model.get_submodule(split_classifier(model).head_path)


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, x: torch.Tensor, batch: int = 32) -> None:
    """BatchNorm running statistics as the cumulative average over ``x`` (real images), in place."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    model.eval()


def train_head(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, steps: int = 30) -> float:
    """Fit the final linear layer on the frozen features of x (L-BFGS, weight decay); returns train accuracy."""
    from oodgate.models import split_classifier

    split = split_classifier(model)
    with torch.no_grad():
        h = torch.cat([split.backbone(x[i:i + 32]) for i in range(0, len(x), 32)])
    h = h.detach()
    k = int(split.head.out_features)
    w = torch.zeros(k, h.shape[1], requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    scale = float(h.std()) or 1.0
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy((h / scale) @ w.T + b, labels) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    head = _final_linear(model)
    with torch.no_grad():
        head.weight.copy_(w.detach() / scale)
        head.bias.copy_(b.detach())
        accuracy = float(((h @ head.weight.T + head.bias).argmax(1) == labels).float().mean())
    return accuracy


def realistic(model: nn.Module, size: int, *, n_bn: int = 64, n_head: int = 200, seed: int = 0) -> nn.Module:
    """A randomly initialised model with BN statistics from real images and a head trained on real features."""
    torch.manual_seed(seed)
    images, labels = id_images(n_head, size)
    x = torch.from_numpy(normalise(images))
    photos = torch.from_numpy(normalise(ood_images(n_bn // 2, size, seed=seed + 7)))
    reestimate_batch_norm(model, torch.cat([x[: n_bn - len(photos)], photos]))
    model.eval()
    model.train_accuracy = train_head(model, x, torch.from_numpy(labels))  # type: ignore[assignment]
    return model.eval()


def build(name: str, *, reduced: bool = True, num_classes: int = 10, seed: int = 0) -> tuple[nn.Module, int]:
    """(realistic eval-mode model, input side) of a family, reduced (CI) or full size."""
    family = FAMILIES[name]
    torch.manual_seed(seed)
    model = (family.reduced if reduced else family.full)(num_classes)
    size = family.reduced_size if reduced else family.full_size
    return realistic(model.eval(), size, seed=seed), size
