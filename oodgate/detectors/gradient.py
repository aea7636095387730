"""Trace a frozen classifier's logits and input gradient into plain ATen ops that torch.onnx can export.

``torch.onnx`` cannot export ``torch.autograd.grad``. Instead, ``torch.func.grad`` of
``sum_i logits[i, argmax_i]`` is traced with ``make_fx`` (symbolic batch axis, static C/H/W) into a graph of
core ATen ops. The backward ops that the ONNX exporter does not translate are decomposed here:

- ``convolution_backward`` (input gradient only) -> a transposed convolution with the same weight;
- ``avg_pool2d_backward`` -> scaling by 1/divisor, then a depthwise transposed convolution with ones;
- ``_adaptive_avg_pool2d_backward`` -> two matmuls with constant bin matrices;
- ``max_pool2d_with_indices`` and its backward -> a running maximum over strided slices, and the gradient of
  each window's first maximum placed back by a grouped transposed convolution with one-hot kernels (TensorRT
  rejects MaxPool's ``Indices`` output; this needs no indices and no scatter);
- ``empty_permuted`` -> ``empty`` (ATen's C++ ``scalar - tensor``, e.g. inside SiLU/Mish backward, creates it;
  the exporter has no translation for it); ``rsub.Scalar`` -> neg + add.

- ``roll`` -> two slices and a concat per axis (Swin's cyclic shift; PyTorch's own gathers with fmod indices).

While tracing, three ``torch.nn.functional`` entries are their plain formulas (``_plain_functional``):
``scaled_dot_product_attention`` (matmul-softmax-matmul: the fused kernels' backward ops have no ONNX
translation), ``linear`` (ATen's C++ linear folds (N, L, D) inputs with the example's concrete batch size) and
``layer_norm`` (its backward needs LayerNormalization's Mean/InvStdDev outputs, which TensorRT rejects).
After tracing, memory-layout-only ops (``as_strided`` restrides, ``new_empty_strided``, ``lift_fresh_copy``)
become reshapes / empties / clones and dead code is dropped (``_drop_layout_ops``).

ReLU / ReLU6 / eval-mode BatchNorm backward come out of ``core_aten_decompositions`` as Where / Mul ops.
Every op of the traced graph is checked against ``ALLOWED_OPS`` (ops the exporter translates), so an
unsupported layer fails at trace time with a message naming the op and the layer.

``make_fx``, ``FakeTensorMode`` and ``torch._decomp`` are semi-private PyTorch APIs (tested on torch 2.13).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import sympy
import torch
import torch.fx
import torch.utils._pytree as pytree
from torch import nn
from torch._decomp import core_aten_decompositions, get_decompositions
from torch._dynamo.source import ConstantSource
from torch._ops import OpOverload
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from ..errors import GradientTraceError, OodgateError, UnsupportedLayerError

__all__ = [
    "ALLOWED_OPS",
    "GradientTraceError",
    "LogitsAndInputGradient",
    "UnsupportedLayerError",
    "export_gradient_onnx",
    "gradient_decompositions",
    "trace_logits_and_input_gradient",
]

aten = torch.ops.aten

#: batch size of the fake example used for tracing (0 and 1 would be specialised by the shape machinery)
_TRACE_BATCH = 2
#: batch sizes of the self-check against eager autograd (both differ from _TRACE_BATCH)
_CHECK_BATCHES = (1, 3)
#: the float64 self-check's bound on ||grad - autograd|| / ||autograd|| per sample (float64 noise of a deep net
#: on inputs far from the data stays below 1e-6; a wrong decomposition gives order 1)
_CHECK_RTOL = 1e-5
#: where a model's float64 noise exceeds those bounds: the graph may be this many times float64's own noise away
_CHECK_FACTOR = 4.0


#: Ops allowed in the traced graph: ATen ops that torch.onnx (dynamo, opset 18) translates, directly or through
#: torch.export's default decompositions. In-place variants of these are allowed too (torch.export
#: functionalises them). The tests check each entry against the exporter's registry.
ALLOWED_OPS: frozenset[OpOverload] = frozenset(
    {
        # convolution, linear algebra
        aten.convolution.default,
        aten.addmm.default,
        aten.mm.default,
        aten.bmm.default,
        # normalisation (forward; their backward decomposes into elementwise ops)
        aten._native_batch_norm_legit_no_training.default,
        aten._native_batch_norm_legit.no_stats,
        aten.native_layer_norm.default,
        aten.native_group_norm.default,
        # pooling, padding, resampling
        aten.max_pool2d_with_indices.default,
        aten.avg_pool2d.default,
        aten._adaptive_avg_pool2d.default,
        aten.constant_pad_nd.default,
        aten.reflection_pad2d.default,
        aten.upsample_nearest2d.default,
        aten.upsample_bilinear2d.default,
        aten._unsafe_index.Tensor,
        # activations, transcendental functions
        aten.relu.default,
        aten.hardtanh.default,
        aten.leaky_relu.default,
        aten.gelu.default,
        aten.sigmoid.default,
        aten.tanh.default,
        aten.elu.default,
        aten.erf.default,
        aten.exp.default,
        aten.log.default,
        aten.log1p.default,
        aten.expm1.default,
        aten._softmax.default,
        aten._log_softmax.default,
        # elementwise arithmetic
        aten.add.Tensor,
        aten.add.Scalar,
        aten.sub.Tensor,
        aten.sub.Scalar,
        aten.mul.Tensor,
        aten.mul.Scalar,
        aten.div.Tensor,
        aten.div.Scalar,
        aten.div.Tensor_mode,
        aten.neg.default,
        aten.abs.default,
        aten.sign.default,
        aten.sqrt.default,
        aten.rsqrt.default,
        aten.reciprocal.default,
        aten.pow.Tensor_Scalar,
        aten.pow.Tensor_Tensor,
        aten.clamp.default,
        aten.clamp.Tensor,
        aten.maximum.default,
        aten.minimum.default,
        aten.where.self,
        # comparisons, logic
        aten.eq.Scalar,
        aten.eq.Tensor,
        aten.ne.Scalar,
        aten.ne.Tensor,
        aten.ge.Scalar,
        aten.ge.Tensor,
        aten.gt.Scalar,
        aten.gt.Tensor,
        aten.le.Scalar,
        aten.le.Tensor,
        aten.lt.Scalar,
        aten.lt.Tensor,
        aten.logical_and.default,
        aten.logical_or.default,
        aten.logical_not.default,
        aten.bitwise_and.Tensor,
        aten.bitwise_or.Tensor,
        aten.bitwise_not.default,
        # reductions, indexing
        aten.sum.dim_IntList,
        aten.sum.default,
        aten.mean.dim,
        aten.mean.default,
        aten.amax.default,
        aten.amin.default,
        aten.argmax.default,
        aten.argmin.default,
        aten.gather.default,
        aten.scatter_add.default,
        aten.scatter.src,
        aten.scatter.value,
        aten.index_select.default,
        aten.index.Tensor,
        aten.index_put.default,
        aten._unsafe_index_put.default,
        # shapes, views, creation
        aten.view.default,
        aten._unsafe_view.default,
        aten.reshape.default,
        aten.expand.default,
        aten.permute.default,
        aten.unsqueeze.default,
        aten.squeeze.dim,
        aten.squeeze.dims,
        aten.alias.default,
        aten.clone.default,
        aten.copy.default,
        aten.slice.Tensor,
        aten.slice_scatter.default,
        aten.select.int,
        aten.select_scatter.default,
        aten.cat.default,
        aten.split_with_sizes.default,
        aten.repeat.default,
        aten._to_copy.default,
        aten.full.default,
        aten.full_like.default,
        aten.zeros_like.default,
        aten.ones_like.default,
        aten.empty.memory_format,
        aten.scalar_tensor.default,
        aten.arange.start_step,
        aten.sym_size.int,
    }
)


# ---------------------------------------------------------------------------------------------------------
# Decompositions of the backward ops that the exporter does not translate
# ---------------------------------------------------------------------------------------------------------
def _as_list(values: Sequence[int] | int, n: int) -> list[int]:
    """Expand an int or a 1-element list to n ints."""
    values = [values] if isinstance(values, int) else list(values)
    return [int(v) for v in (values * n if len(values) == 1 else values)]


def _convolution_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, None, None]:
    """Input gradient of a convolution as a transposed convolution (and vice versa)."""
    if output_mask[1] or output_mask[2]:
        raise UnsupportedLayerError(
            "aten.convolution_backward was asked for a weight/bias gradient: only the input gradient is "
            "traced, the model's parameters must be frozen (requires_grad=False)"
        )
    if not output_mask[0]:
        return None, None, None
    n = weight.dim() - 2
    stride, padding, dilation = _as_list(stride, n), _as_list(padding, n), _as_list(dilation, n)
    if transposed:  # the adjoint of a transposed convolution is the plain convolution
        grad_input = aten.convolution(grad_output, weight, None, stride, padding, dilation, False, [0] * n, groups)
        for i in range(n):  # output_padding >= stride (possible with dilation) leaves extra rows: drop them
            if int(grad_input.shape[2 + i]) > int(input.shape[2 + i]):
                grad_input = grad_input.narrow(2 + i, 0, int(input.shape[2 + i]))
        return grad_input, None, None
    extra = []
    for i in range(n):
        size, out, kernel = int(input.shape[2 + i]), int(grad_output.shape[2 + i]), int(weight.shape[2 + i])
        extra.append(size - ((out - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel - 1) + 1))
    grad_input = aten.convolution(grad_output, weight, None, stride, padding, dilation, True, extra, groups)
    return grad_input, None, None


def _pool_divisors(size: int, out: int, kernel: int, stride: int, pad: int, count_include_pad: bool,
                   device: torch.device) -> torch.Tensor:
    """Per-output-position divisor of an average pool along one axis (int64, built from traced ops)."""
    start = torch.arange(out, device=device) * stride - pad
    end = torch.clamp(start + kernel, max=size + pad)
    if not count_include_pad:
        start, end = torch.clamp(start, min=0), torch.clamp(end, max=size)
    return end - start


def _avg_pool2d_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """Input gradient of avg_pool2d: scale by 1/divisor, then a depthwise transposed conv with ones."""
    kernel = _as_list(kernel_size, 2)
    stride = _as_list(stride, 2) if len(stride) else list(kernel)
    padding = _as_list(padding, 2)
    in_hw = [int(s) for s in input.shape[-2:]]
    out_hw = [int(s) for s in grad_output.shape[-2:]]
    if divisor_override:
        grad = grad_output / divisor_override
    else:
        rows, cols = (
            _pool_divisors(in_hw[i], out_hw[i], kernel[i], stride[i], padding[i], count_include_pad,
                           grad_output.device)
            for i in range(2)
        )
        grad = grad_output / (rows.unsqueeze(1) * cols.unsqueeze(0)).to(grad_output.dtype)
    batched = grad.dim() == 4
    if not batched:
        grad = grad.unsqueeze(0)
    channels = int(grad.shape[1])
    ones = torch.ones(channels, 1, *kernel, dtype=grad.dtype, device=grad.device)
    # Output size of the transposed conv is full + output_padding; ceil mode can overshoot: crop.
    extra = [in_hw[i] - ((out_hw[i] - 1) * stride[i] - 2 * padding[i] + kernel[i]) for i in range(2)]
    grad_input = aten.convolution(
        grad, ones, None, stride, padding, [1, 1], True, [max(e, 0) for e in extra], channels
    )
    if min(extra) < 0:
        grad_input = grad_input[:, :, : in_hw[0], : in_hw[1]]
    return grad_input if batched else grad_input.squeeze(0)


def _adaptive_pool_matrix(size: int, out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, out) matrix: entry [i, o] = 1/len(bin o) if input position i lies in adaptive bin o, else 0."""
    position = torch.arange(size, device=device).unsqueeze(1)
    bins = torch.arange(out, device=device).unsqueeze(0)
    start = torch.div(bins * size, out, rounding_mode="floor")
    end = torch.div((bins + 1) * size + out - 1, out, rounding_mode="floor")
    inside = (position >= start) & (position < end)
    return inside.to(dtype) / (end - start).to(dtype)


def _adaptive_avg_pool2d_backward(grad_output: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """Input gradient of adaptive average pooling: rows (H, OH) @ grad (.., OH, OW) @ cols (OW, W)."""
    h, w = (int(s) for s in input.shape[-2:])
    oh, ow = (int(s) for s in grad_output.shape[-2:])
    rows = _adaptive_pool_matrix(h, oh, grad_output.dtype, grad_output.device)
    cols = _adaptive_pool_matrix(w, ow, grad_output.dtype, grad_output.device).t()
    return torch.matmul(torch.matmul(rows, grad_output), cols)


def _pool_geometry(x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], ceil_mode: bool) -> tuple[list[int], list[int], list[int], list[int],
                                                                   list[int], list[int]]:
    """(k, s, p, d, output size, extra bottom/right padding) of a 2-D max-pool, as PyTorch computes them."""
    k = _as_list(kernel_size, 2)
    s = _as_list(stride, 2) if stride else list(k)
    p, d = _as_list(padding, 2), _as_list(dilation, 2)
    out, extra = [], []
    for axis in range(2):
        size = int(x.shape[-2 + axis])
        span = size + 2 * p[axis] - d[axis] * (k[axis] - 1) - 1
        o = (-(-span // s[axis]) if ceil_mode else span // s[axis]) + 1
        if ceil_mode and (o - 1) * s[axis] >= size + p[axis]:
            o -= 1  # the last window must start inside the input or the left padding
        out.append(o)
        extra.append(max(0, (o - 1) * s[axis] + d[axis] * (k[axis] - 1) + 1 - size - 2 * p[axis]))
    return k, s, p, d, out, extra


def _window_values(x: torch.Tensor, k: list[int], s: list[int], p: list[int], d: list[int], out: list[int],
                   extra: list[int]) -> list[torch.Tensor]:
    """For each kernel offset (row-major), the input value it sees in every window: strided slices of x padded
    with the lowest finite value (finite, so that no inf/NaN arithmetic appears)."""
    low = torch.finfo(x.dtype).min
    padded = aten.constant_pad_nd.default(x, [p[1], p[1] + extra[1], p[0], p[0] + extra[0]], low)
    views = []
    for i in range(k[0]):
        for j in range(k[1]):
            rows = aten.slice.Tensor(padded, -2, i * d[0], i * d[0] + (out[0] - 1) * s[0] + 1, s[0])
            views.append(aten.slice.Tensor(rows, -1, j * d[1], j * d[1] + (out[1] - 1) * s[1] + 1, s[1]))
    return views


def _max_pool2d_with_indices(x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int] = (),
                             padding: Sequence[int] = (0,), dilation: Sequence[int] = (1,),
                             ceil_mode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-pool as a running maximum over strided slices (no MaxPool Indices output, which TensorRT rejects).

    The indices returned are zeros: only ``_max_pool2d_with_indices_backward`` below consumes them, and it
    recomputes the winning positions from the input.
    """
    geometry = _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    views = _window_values(x, *geometry)
    y = views[0]
    for v in views[1:]:
        y = aten.maximum.default(y, v)
    return y, aten.zeros_like.default(y, dtype=torch.int64)


def _max_pool2d_with_indices_backward(grad_output: torch.Tensor, x: torch.Tensor, kernel_size: Sequence[int],
                                      stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                                      ceil_mode: bool, indices: torch.Tensor) -> torch.Tensor:
    """Max-pool input gradient without indices or scatter: each window's gradient goes to its first maximum
    (row-major, as PyTorch), placed back by one grouped transposed convolution with one-hot kernels."""
    k, s, p, d, out, extra = _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    views = _window_values(x, k, s, p, d, out, extra)
    y = views[0]
    for v in views[1:]:
        y = aten.maximum.default(y, v)
    taken = aten.zeros_like.default(y, dtype=torch.bool)
    parts = []
    for v in views:
        hit = aten.logical_and.default(aten.eq.Tensor(v, y), aten.logical_not.default(taken))
        parts.append(aten.where.self(hit, grad_output, aten.zeros_like.default(grad_output)))
        taken = aten.logical_or.default(taken, hit)
    n, c = grad_output.shape[0], int(grad_output.shape[1])
    kk = k[0] * k[1]
    stacked = aten.reshape.default(aten.stack.default(parts, 2), [n, c * kk, out[0], out[1]])
    eye = torch.eye(kk, dtype=grad_output.dtype, device=grad_output.device).reshape(kk, 1, k[0], k[1])
    weight = eye.repeat(c, 1, 1, 1)
    full = aten.convolution.default(stacked, weight, None, s, [0, 0], d, True, [0, 0], c)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    size = [(out[a] - 1) * s[a] + d[a] * (k[a] - 1) + 1 for a in range(2)]
    short = [max(0, p[0] + h - size[0]), max(0, p[1] + w - size[1])]
    if short[0] or short[1]:  # trailing input rows/columns that no window reaches get zero gradient
        full = aten.constant_pad_nd.default(full, [0, short[1], 0, short[0]], 0.0)
    full = aten.slice.Tensor(full, -2, p[0], p[0] + h)
    return aten.slice.Tensor(full, -1, p[1], p[1] + w)


def _rsub_scalar(self: torch.Tensor, other: float, alpha: float = 1) -> torch.Tensor:
    """other - alpha * self as neg/mul + add (the exporter's registry has no rsub)."""
    return aten.add.Scalar(aten.neg.default(self) if alpha == 1 else aten.mul.Scalar(self, -alpha), other)


def _empty_permuted(size: Sequence[int], physical_layout: Sequence[int], *, dtype: torch.dtype | None = None,
                    layout: torch.layout | None = None, device: torch.device | None = None,
                    pin_memory: bool | None = None) -> torch.Tensor:
    """empty_permuted -> empty: only the memory layout differs, which does not exist in ONNX."""
    return aten.empty.memory_format(size, dtype=dtype, device=device)


def _roll(x: torch.Tensor, shifts: Sequence[int] | int, dims: Sequence[int] | int = ()) -> torch.Tensor:
    """torch.roll as a concatenation of two slices per axis (PyTorch's own decomposition gathers with fmod
    indices; Swin's cyclic window shift becomes two Slice + Concat here, which every runtime has)."""
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims:  # roll of the flattened tensor
        return aten.reshape.default(_roll(aten.reshape.default(x, [-1]), shifts, [0]), list(x.shape))
    for shift, dim in zip(shifts, dims):
        size = int(x.shape[dim])
        shift = int(shift) % size if size else 0
        if shift:
            x = aten.cat.default([aten.slice.Tensor(x, dim, size - shift, size),
                                  aten.slice.Tensor(x, dim, 0, size - shift)], dim)
    return x


def _sdpa_math(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> torch.Tensor:
    """Scaled dot-product attention in eval mode as matmul, softmax, matmul (whose backward is plain ops).

    The fused kernels' backward ops (flash / efficient attention) have no ONNX translation, and their
    forward decompositions test for fully masked rows with ``any``; this is the textbook formula instead.
    """
    if dropout_p:
        raise UnsupportedLayerError(
            f"scaled_dot_product_attention with dropout_p={dropout_p} in the gradient branch: the model must be "
            "in eval mode (dropout off)")
    d = int(query.shape[-1])
    factor = float(scale) if scale is not None else 1.0 / math.sqrt(d)
    if enable_gqa and int(key.shape[-3]) != int(query.shape[-3]):
        repeat = int(query.shape[-3]) // int(key.shape[-3])
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    scores = torch.matmul(query * factor, key.transpose(-2, -1))
    length, source = int(query.shape[-2]), int(key.shape[-2])
    if is_causal:
        keep = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def _layer_norm_plain(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm as mean, biased variance, rsqrt, scale and shift.

    ``native_layer_norm``'s backward reads its saved mean and 1/std, which export as LayerNormalization's
    second and third outputs; TensorRT's ONNX parser supports only the first (Y). The formula's backward is
    elementwise ops and reductions. (The second forward pass of AdaSCALE keeps nn.LayerNorm: Y only.)
    """
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    y = centred * torch.rsqrt((centred * centred).mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def _linear_plain(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Linear as a 2-D matmul of the flattened leading axes, reshaped back.

    ATen's C++ linear folds a contiguous (N, L, D) input to (N*L, D) with concrete sizes: traced through
    torch.func.grad with a symbolic batch axis (torch 2.13) that bakes the example's batch size into the
    graph (a reshape to [2*L, D]), which then fails at any other batch size. Here the fold is symbolic.
    """
    if x.dim() == 2:
        y = torch.mm(x, weight.t())
        return y if bias is None else y + bias
    lead = x.shape[:-1]
    y = torch.mm(x.reshape(-1, x.shape[-1]), weight.t())
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, weight.shape[0])


#: torch.nn.functional entries replaced by plain formulas while tracing (looked up at call time by
#: nn.Linear, nn.LayerNorm, nn.MultiheadAttention, torchvision's LayerNorm2d / ViT / Swin and timm's layers)
_PLAIN_FUNCTIONAL: dict[str, Callable[..., Any]] = {
    "scaled_dot_product_attention": _sdpa_math,
    "linear": _linear_plain,
    "layer_norm": _layer_norm_plain,
}


@contextlib.contextmanager
def _plain_functional() -> Iterator[None]:
    """While tracing, the torch.nn.functional ops of _PLAIN_FUNCTIONAL are their textbook formulas.

    Patched at the Python level: the fused attention kernels are chosen, linear's batch size leaks and
    layer_norm's saved statistics are made below autograd, where a decomposition table cannot reach them.
    """
    import torch.nn.functional as functional

    originals = {name: getattr(functional, name) for name in _PLAIN_FUNCTIONAL}
    for name, plain in _PLAIN_FUNCTIONAL.items():
        setattr(functional, name, plain)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(functional, name, original)


def gradient_decompositions() -> dict[OpOverload, Callable[..., Any]]:
    """Decomposition table for tracing: core ATen plus the decompositions of this module."""
    table: dict[OpOverload, Callable[..., Any]] = dict(core_aten_decompositions())
    table[aten.max_pool2d_with_indices.default] = _max_pool2d_with_indices
    table[aten.max_pool2d_with_indices_backward.default] = _max_pool2d_with_indices_backward
    table[aten.convolution_backward.default] = _convolution_backward
    table[aten.avg_pool2d_backward.default] = _avg_pool2d_backward
    table[aten._adaptive_avg_pool2d_backward.default] = _adaptive_avg_pool2d_backward
    table[aten.rsub.Scalar] = _rsub_scalar
    table[aten.empty_permuted.default] = _empty_permuted
    table[aten.roll.default] = _roll
    return table


# ---------------------------------------------------------------------------------------------------------
# Cleaning a traced graph: memory-layout ops that ONNX does not have
# ---------------------------------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    """Two (possibly symbolic) sizes or strides are the same expression."""
    return str(a) == str(b)


def _contiguous_strides(shape: Sequence[Any]) -> list[Any]:
    strides, step = [], 1
    for size in reversed(list(shape)):
        strides.append(step)
        step = step * size
    return list(reversed(strides))


def _restride_kind(node: torch.fx.Node) -> str | None:
    """'same' when as_strided(t, size, stride, offset) only relabels t's memory layout (same logical values),
    'reshape' when it reads a contiguous t in row-major order (a reshape), else None (a real strided view)."""
    source, out = node.args[0], node.meta.get("val")
    inp = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    if not isinstance(inp, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset", 0)
    if offset not in (None, 0) or not _same(inp.storage_offset(), 0):
        return None
    if len(out.shape) == len(inp.shape) and all(_same(a, b) for a, b in zip(out.shape, inp.shape)) and all(
            _same(sa, sb) for n, sa, sb in zip(out.shape, out.stride(), inp.stride()) if not _same(n, 1)):
        return "same"
    if all(_same(a, b) for a, b in zip(inp.stride(), _contiguous_strides(inp.shape))) and all(
            _same(n, 1) or _same(a, b) for n, a, b in zip(out.shape, out.stride(), _contiguous_strides(out.shape))):
        return "reshape"
    return None


def _broadcast_copy(graph: torch.fx.Graph, node: torch.fx.Node) -> bool:
    """copy(dst, src) with a src that broadcasts (``mask[h0:h1, w0:w1] = count`` in Swin) -> expand(src) in
    dst's dtype: the ONNX exporter translates copy as src itself, dropping the broadcast (a 0-d tensor where a
    (4, 4) one belongs, which ONNX Runtime then rejects). True when the node was replaced."""
    dst, src = node.args[0], node.args[1]
    dst_val = dst.meta.get("val") if isinstance(dst, torch.fx.Node) else None
    src_val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
    if not isinstance(dst_val, torch.Tensor) or not isinstance(src_val, torch.Tensor):
        return False
    if [str(d) for d in src_val.shape] == [str(d) for d in dst_val.shape]:
        return False
    if not all(isinstance(d, int) for d in dst_val.shape):
        return False
    with graph.inserting_before(node):
        value = src
        if src_val.dtype != dst_val.dtype:
            value = graph.call_function(aten._to_copy.default, (src,), {"dtype": dst_val.dtype})
        new = graph.call_function(aten.clone.default, (
            graph.call_function(aten.expand.default, (value, [int(d) for d in dst_val.shape])),))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return True


def _drop_layout_ops(graph_module: torch.fx.GraphModule) -> None:
    """Remove what only concerns memory layout (no such thing in ONNX), in place:

    - ``as_strided`` / ``as_strided_`` that restore a layout (the decomposition of AdaptiveAvgPool2d on a
      channels-last tensor, as in ConvNeXt and Swin, ends with one) or read a contiguous tensor in order
      (backward of views): the tensor itself or a reshape;
    - ``new_empty_strided`` -> ``empty`` (its strides are only a layout); ``lift_fresh_copy`` (a tensor
      constant made in forward, e.g. Swin's attention mask) -> ``clone``;
    - ``view`` -> ``reshape`` (the same in ONNX; eagerly, real tensors may have a layout the fake ones had not);
    - 0-d tensor constants -> ``scalar_tensor`` (``_inline_scalar_constants``); broadcasting ``copy`` -> expand
      (``_broadcast_copy``);
    - dead code (e.g. ``aten.size`` of a constant whose result is unused).
    """
    graph = graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (aten.as_strided.default, aten.as_strided_.default):
            kind = _restride_kind(node)
            if kind == "same":
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
            elif kind == "reshape":
                with graph.inserting_before(node):
                    new = graph.call_function(aten.reshape.default, (node.args[0], node.args[1]))
                new.meta = dict(node.meta)
                node.replace_all_uses_with(new)
                graph.erase_node(node)
        elif node.target is aten.copy.default and _broadcast_copy(graph, node):
            pass
        elif node.target in (aten.view.default, aten._unsafe_view.default):
            # a view traced from reshape on a fake tensor that was contiguous; run eagerly on real tensors, the
            # input may have another layout (e.g. oneDNN's channels-last convolution outputs at some batch
            # sizes) and view would fail: reshape is the same op in ONNX and copies only when it must
            node.target = aten.reshape.default
        elif node.target is aten.lift_fresh_copy.default:  # not reached by the decomposition table
            node.target = aten.clone.default
        elif node.target is aten.new_empty_strided.default:
            val = node.meta.get("val")
            with graph.inserting_before(node):
                new = graph.call_function(aten.empty.memory_format, (node.args[1],),
                                          {"dtype": val.dtype if val is not None else None,
                                           "device": val.device if val is not None else None})
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    graph.eliminate_dead_code()
    _inline_scalar_constants(graph_module)
    graph_module.recompile()


def _inline_scalar_constants(graph_module: torch.fx.GraphModule) -> None:
    """0-d tensor constants of the traced graph (``torch.tensor(c)`` in a model's forward, e.g. Swin's shifted-
    window mask counts) as ``scalar_tensor`` ops: make_fx keeps them as buffers named '_tensor_constant<i>' of the
    GraphModule, which torch.export cannot resolve inside a nested GraphModule ('references nonexistent attribute
    _tensor_constant0'). Larger constants (e.g. max-pool's one-hot kernels) export as they are."""
    graph = graph_module.graph
    for node in list(graph.nodes):
        name = str(node.target)
        if node.op != "get_attr" or "." in name:
            continue
        value = getattr(graph_module, name)
        if isinstance(value, torch.Tensor) and value.dim() == 0:
            with graph.inserting_before(node):
                scalar = graph.call_function(aten.scalar_tensor.default, (value.item(),),
                                             {"dtype": value.dtype, "device": value.device})
            scalar.meta = dict(node.meta)
            node.replace_all_uses_with(scalar)
            graph.erase_node(node)
            delattr(graph_module, name)


# ---------------------------------------------------------------------------------------------------------
# Checking a traced graph
# ---------------------------------------------------------------------------------------------------------
def _functional_variant(op: OpOverload) -> OpOverload | None:
    """aten.foo_.overload -> aten.foo.overload for an in-place op, else None."""
    name = op._schema.name.split("::")[-1]
    if op.namespace != "aten" or not name.endswith("_") or name.endswith("__"):
        return None
    packet = getattr(aten, name[:-1], None)
    return getattr(packet, op._overloadname, None) if packet is not None else None


def _node_problem(node: torch.fx.Node) -> str | None:
    """The name of a call_function node's op if it cannot be exported, else None."""
    target = node.target
    if not isinstance(target, OpOverload):
        # symbolic-shape arithmetic on the batch size: operator.mul, torch.sym_float, ...
        name = getattr(target, "__name__", "")
        if getattr(target, "__module__", None) in ("_operator", "operator") or name.startswith(("sym_", "_sym_")):
            return None
        return str(target)
    if target in ALLOWED_OPS or _functional_variant(target) in ALLOWED_OPS:
        if target is aten.avg_pool2d.default and len(node.args) > 6 and node.args[6]:
            return "aten.avg_pool2d.default with divisor_override"  # the exporter drops divisor_override
        return None
    return str(target)


def _unsupported_ops(graph_module: torch.fx.GraphModule) -> list[str]:
    """Names of the ops of a traced graph that the exporter cannot translate, in order of appearance."""
    found: dict[str, None] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and (problem := _node_problem(node)) is not None:
            found[problem] = None
    return list(found)


# ---------------------------------------------------------------------------------------------------------
# Naming the layer behind an unsupported op or a failed trace
# ---------------------------------------------------------------------------------------------------------
def _float_tensors(tree: Any) -> list[torch.Tensor]:
    """The floating-point tensors among a pytree's leaves."""
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _local_trace(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.fx.GraphModule:
    """Trace one submodule's forward + gradient w.r.t. its float inputs with the same decompositions."""
    flat, spec = pytree.tree_flatten((args, kwargs))
    positions = [i for i, t in enumerate(flat) if isinstance(t, torch.Tensor) and t.is_floating_point()]

    def local(*tensors: torch.Tensor) -> torch.Tensor:
        leaves = list(flat)
        for i, t in zip(positions, tensors):
            leaves[i] = t
        local_args, local_kwargs = pytree.tree_unflatten(leaves, spec)
        return sum(out.sum() for out in _float_tensors(module(*local_args, **local_kwargs)))

    inputs = tuple(flat[i].detach() for i in positions)
    grad = torch.func.grad(local, argnums=tuple(range(len(inputs))))
    with _plain_functional():
        graph = make_fx(grad, decomposition_table=gradient_decompositions())(*inputs)
    _drop_layout_ops(graph)
    return graph


def _innermost_culprit(model: nn.Module, example: torch.Tensor,
                       is_culprit: Callable[[torch.fx.GraphModule | None], bool]) -> tuple[str, nn.Module] | None:
    """The innermost submodule whose own traced gradient graph (None: tracing failed) is_culprit."""
    names = {id(m): n for n, m in model.named_modules()}
    captured: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def capture(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.setdefault(names[id(module)], (args, kwargs))

    handles = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    except Exception:  # noqa: BLE001 - naming the layer is best effort
        return None
    finally:
        for handle in handles:
            handle.remove()

    def post_order(prefix: str, module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in module.named_children():
            yield from post_order(f"{prefix}.{child_name}" if prefix else child_name, child)
        yield prefix, module

    for name, module in post_order("", model):
        if name not in captured or not _float_tensors(captured[name]):
            continue
        try:
            local: torch.fx.GraphModule | None = _local_trace(module, *captured[name])
        except Exception:  # noqa: BLE001
            local = None
        if is_culprit(local):
            return name, module
    return None


def _describe(found: tuple[str, nn.Module] | None, model: nn.Module) -> str:
    """'layer 'a.b' of type Foo' for an error message."""
    if found is None:
        return f"an unidentified layer of {type(model).__name__}"
    name, module = found
    return f"layer '{name}' of type {type(module).__name__}" if name else f"the forward of {type(module).__name__}"


# ---------------------------------------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------------------------------------
def _predicted_logit_sum(model: nn.Module, state: Mapping[str, torch.Tensor],
                         x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(sum over the batch of each row's predicted-class logit, (logits, *extra outputs of the model))."""
    outputs = torch.func.functional_call(model, dict(state), (x,))
    outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
    logits = outputs[0]
    predicted = logits.detach().argmax(dim=1, keepdim=True)
    # a one-hot product rather than gather: its backward is a Mul, not a ScatterElements(add)
    classes = torch.arange(logits.shape[1], device=logits.device)
    one_hot = (classes[None, :] == predicted).to(logits.dtype)
    return (logits * one_hot).sum(), outputs


def _trace(model: nn.Module, state: Mapping[str, torch.Tensor], example: torch.Tensor) -> torch.fx.GraphModule:
    """make_fx-trace (state..., x) -> (logits, grad) with only the batch axis symbolic."""
    names = list(state)

    def logits_and_gradient(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *values, x = args
        grad, outputs = torch.func.grad(_predicted_logit_sum, argnums=2, has_aux=True)(
            model, dict(zip(names, values)), x)
        return (*outputs, grad)

    fake_mode = FakeTensorMode(shape_env=ShapeEnv())
    fake_state = [fake_mode.from_tensor(t, static_shapes=True) for t in state.values()]
    fake_x = fake_mode.from_tensor(
        torch.empty((_TRACE_BATCH, *example.shape[1:]), dtype=example.dtype, device=example.device),
        source=ConstantSource("x"),
        symbolic_context=StatelessSymbolicContext(
            dynamic_sizes=[DimDynamic.DYNAMIC] + [DimDynamic.STATIC] * (example.dim() - 1)),
    )
    with _plain_functional():
        graph = make_fx(logits_and_gradient, decomposition_table=gradient_decompositions(),
                        tracing_mode="symbolic")(*fake_state, fake_x)
    _drop_layout_ops(graph)
    batch = fake_x.shape[0].node.expr
    assert fake_mode.shape_env is not None
    if isinstance(fake_mode.shape_env.replacements.get(batch), sympy.Integer):
        raise UnsupportedLayerError(
            f"the forward of {type(model).__name__} depends on the batch size (it was specialised to "
            f"{_TRACE_BATCH} while tracing), so no graph with a dynamic batch axis can be built")
    return graph


def _autograd_reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager logits and d logits[i, argmax_i] / d x[i] with torch.autograd."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        picked = logits.gather(1, logits.detach().argmax(dim=1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(picked, x)
    return logits.detach(), grad


def retyped_graph(graph_module: torch.fx.GraphModule, dtype: torch.dtype) -> torch.fx.GraphModule:
    """A copy of a float32 traced graph that computes in ``dtype`` (float64: the reference precision).

    The traced ops are dtype-generic except for what tracing baked in: float32 tensor constants (e.g. the
    max-pool one-hot kernels) and explicit ``dtype=torch.float32`` arguments; both are converted.
    """
    twin = copy.deepcopy(graph_module)

    def convert(value: Any) -> Any:
        return dtype if value is torch.float32 else value

    for node in twin.graph.nodes:
        if node.op == "get_attr":
            value = getattr(twin, str(node.target))
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                setattr(twin, str(node.target), value.to(dtype))
        node.args = torch.fx.node.map_aggregate(node.args, convert)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, convert)
    twin.recompile()
    return twin


def _check_inputs(example: torch.Tensor) -> Iterator[torch.Tensor]:
    """Inputs near the example at the batch sizes of _CHECK_BATCHES (which differ from the traced one)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    base = example.detach()
    spread = float(base.std()) if base.numel() > 1 and float(base.std()) > 0 else 1.0
    for n in _CHECK_BATCHES:
        x = base[torch.arange(n) % base.shape[0]]
        yield x + 0.05 * spread * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


def _float64_noise(model: nn.Module, x: torch.Tensor, logits: torch.Tensor,
                   grad: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Float64's own noise on this model and input: the distance between eager autograd on ``x`` and on the same
    values in channels-last memory layout (other convolution kernels, other summation orders, the same maths):
    (max |logits diff|, per-sample ||grad diff||)."""
    other_logits, other_grad = _autograd_reference(model, x.contiguous(memory_format=torch.channels_last))
    return (float((other_logits - logits).abs().max()),
            torch.linalg.vector_norm((other_grad - grad).flatten(1), dim=1))


def _self_check(module: LogitsAndInputGradient, example: torch.Tensor) -> None:
    """Compare the traced graph with eager autograd at batch sizes other than the traced one, in float64.

    In float64, so that the check sees the decompositions and not float32 rounding: on inputs far from the
    data (the random example), deep nets amplify float32 rounding to per-sample gradient differences of
    order 1 between ANY two float32 implementations (EfficientNet-B0: eager float32 autograd itself is off
    by 10-100x the gradient's norm from float64 on noise inputs, while the traced graph run in float64 is
    within 1e-7 of float64 autograd). The float64 run is the same graph with its dtype changed
    (``retyped_graph``), so a batch-size dependence or a wrong decomposition shows up here too.

    Some models amplify even float64 rounding beyond the fixed bounds (full-size EfficientNet-V2-S with random
    weights: logits of 2.7e5, and eager float64 itself moves them by 4e-3 when only the memory layout changes).
    Where the graph misses the fixed bounds, they are widened by ``_CHECK_FACTOR`` times that measured float64
    noise (``_float64_noise``) before the graph is refused: the noise-floor rule, in float64.
    """
    reference = copy.deepcopy(module.model).double()
    for i, x in enumerate(_check_inputs(example)):
        x = x.double()
        with torch.no_grad():
            # the float32 graph runs once (a float32-only fault the retyping would hide); a batch-size dependence
            # is the float64 comparison's to find, at every check batch
            if i == 0:
                module(x.to(torch.float32))
            outputs = module.run_graph(reference, x)
        logits, grad = outputs[0], outputs[-1]
        ref_logits, ref_grad = _autograd_reference(reference, x)
        logit_err = float((logits - ref_logits).abs().max())
        logit_scale = 1.0 + float(ref_logits.abs().max())
        grad_err = torch.linalg.vector_norm((grad - ref_grad).flatten(1), dim=1)
        grad_ref = torch.linalg.vector_norm(ref_grad.flatten(1), dim=1)
        # absolute floor: float64 noise of a (near-)zero gradient
        logit_tol = 1e-9 * logit_scale
        grad_tol = _CHECK_RTOL * grad_ref + 1e-12 * logit_scale * math.sqrt(ref_grad[0].numel())
        noise = ""
        if logit_err > logit_tol or bool((grad_err > grad_tol).any()):
            logit_noise, grad_noise = _float64_noise(reference, x, ref_logits, ref_grad)
            logit_tol += _CHECK_FACTOR * logit_noise
            grad_tol += _CHECK_FACTOR * grad_noise
            noise = (f"; float64's own noise on this model (eager autograd in another memory layout): logits "
                     f"{logit_noise:.3g}, gradient {float((grad_noise / grad_ref.clamp_min(1e-300)).max()):.3g}")
        if logit_err > logit_tol or bool((grad_err > grad_tol).any()):
            raise GradientTraceError(
                f"the traced gradient graph disagrees with eager autograd (both in float64) at batch {len(x)} "
                f"(does the model's forward depend on the batch size?): max |logits diff| {logit_err:.3g}, max "
                f"relative gradient error {float((grad_err / grad_ref.clamp_min(1e-300)).max()):.3g}{noise}")


class LogitsAndInputGradient(nn.Module):
    """m(x) -> (logits (N, K), d logits[i, argmax_i] / d x[i] (N, C, H, W)) as exportable ATen ops.

    ``m.model`` is the frozen eval-mode copy whose weights the graph reads: reuse it for any further
    forward pass in a larger exported module so that the ONNX graph holds one copy of the weights.
    """

    def __init__(self, model: nn.Module, graph: torch.fx.GraphModule, state_names: Sequence[str],
                 input_shape: tuple[int, ...]) -> None:
        """Wrap a traced graph whose inputs are the model's parameters and buffers, then x."""
        super().__init__()
        self.model = model
        self.graph = graph
        self.state_names = list(state_names)
        self.input_shape = tuple(input_shape)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the predicted-class logit's input gradient for a batch of the traced (C, H, W)."""
        if x.dim() != 1 + len(self.input_shape) or tuple(x.shape[1:]) != self.input_shape:
            expected = ", ".join(str(s) for s in self.input_shape)
            raise OodgateError(
                f"the gradient branch was traced for inputs of shape (N, {expected}), got {tuple(x.shape)}: "
                f"channels/height/width are fixed per trace; trace again for another input size")
        if x.dtype != torch.float32:  # e.g. the float64 reference: the model was converted with .double()
            return self.run_graph(self.model, x)
        state = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        return self.graph(*(state[name] for name in self.state_names), x)

    def run_graph(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The traced graph computed in x's dtype with ``model``'s weights (of that dtype): eager, not exported."""
        graph = self.graph if x.dtype == torch.float32 else self._retyped(x.dtype)
        state = dict(model.named_parameters()) | dict(model.named_buffers())
        return graph(*(state[name].to(x.dtype) if state[name].is_floating_point() else state[name]
                       for name in self.state_names), x)

    def _retyped(self, dtype: torch.dtype) -> torch.fx.GraphModule:
        cache = self.__dict__.setdefault("_retyped_graphs", {})  # not a submodule: never exported
        if dtype not in cache:
            cache[dtype] = retyped_graph(self.graph, dtype)
        return cache[dtype]


def trace_logits_and_input_gradient(model: nn.Module, example: torch.Tensor, *,
                                    check: bool = True) -> LogitsAndInputGradient:
    """Return a module m with m(x) -> (logits (N,K), grad (N,C,H,W)); grad[i] = d logits[i, argmax logits[i]] / d x[i].

    A model returning a tuple (logits, *extras) gives m(x) -> (logits, *extras, grad).

    ``model`` is deep-copied, put in eval mode and frozen; the caller's model is not changed. C/H/W are
    those of ``example`` (fixed), the batch axis is dynamic. With ``check``, the graph is compared with eager
    autograd at two batch sizes near ``example``, both computed in float64 (GradientTraceError on a mismatch).
    Raises UnsupportedLayerError naming the op and the layer when a layer cannot be exported.
    """
    if not isinstance(example, torch.Tensor) or example.dim() != 4 or not example.is_floating_point():
        got = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
        raise OodgateError(f"example must be a floating-point (N, C, H, W) tensor, got {got}")
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    state = dict(frozen.named_parameters()) | dict(frozen.named_buffers())
    probe = example[:1].detach()
    with torch.no_grad():
        out = frozen(probe)
    if isinstance(out, (tuple, list)) and out:  # (logits, *extra outputs): extras are returned before grad
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or not out.is_floating_point():
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise OodgateError(f"the model must map (N, C, H, W) to logits (N, K), got {got}")
    try:
        graph = _trace(frozen, state, example)
    except UnsupportedLayerError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the layer, keep the cause
        found = _innermost_culprit(frozen, probe, lambda local: local is None)
        raise UnsupportedLayerError(
            f"could not trace the input gradient of {type(model).__name__} (first failing: "
            f"{_describe(found, frozen)}): {type(exc).__name__}: {exc}") from exc
    unsupported = _unsupported_ops(graph)
    if unsupported:
        op = unsupported[0]
        found = _innermost_culprit(frozen, probe, lambda local: local is not None and op in _unsupported_ops(local))
        raise UnsupportedLayerError(
            f"{op} is not supported in the exported gradient branch (from {_describe(found, frozen)}): the ONNX "
            f"exporter cannot translate it and oodgate.detectors.gradient has no decomposition for it; "
            f"unsupported ops in this model: {', '.join(unsupported)}")
    module = LogitsAndInputGradient(frozen, graph, list(state), tuple(example.shape[1:]))
    if check:
        _self_check(module, example)
    return module


def export_gradient_onnx(module: nn.Module, example: torch.Tensor, path: str | os.PathLike[str], *,
                         input_names: Sequence[str] = ("x",), output_names: Sequence[str] | None = None,
                         opset_version: int = 18, external_data: bool = False) -> str:
    """Export a module taking one (N, C, H, W) input with torch.onnx (dynamo) and a dynamic 'batch' axis."""
    if output_names is None and isinstance(module, LogitsAndInputGradient):
        output_names = ("logits", "grad")
    torch.onnx.export(
        module.eval(), (example,), os.fspath(path), dynamo=True, opset_version=opset_version,
        input_names=list(input_names), output_names=None if output_names is None else list(output_names),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=external_data, verbose=False,
    )
    return os.fspath(path)
