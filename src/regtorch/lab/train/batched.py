"""The members' forward written out for known layers: K stacked models in one pass, without vmap.

``vmap`` runs any model, but it chooses the layout of every batched activation itself, and for
convolutional models the one it chooses is slow on CPU: each convolution becomes a grouped
convolution on ``[N, K·C, H, W]``, then pooling and BatchNorm get the member dimension moved to
the front, a copy, and pool over a strided tensor (measured on ``digits-cnn``, 16 members: the
group's step and evaluation cost 0.5× and 2× of 16 plain members' — no gain from stacking).

:func:`batched_forward` writes the stacked forward of an ``nn.Sequential`` of known layers
(possibly nested) with the layout chosen per layer, so that every op is one dense kernel:

* an input shared by every member, ``[N, ...]``, goes into a first convolution as one
  convolution with the members' ``K·O`` filters side by side;
* convolution feature maps stay *channel-folded*, ``[N, K·C, H, W]`` (member ``k``'s channel
  ``c`` is channel ``k·C + c``): a convolution is one grouped convolution (``groups = K``),
  BatchNorm is torch's own kernel over ``K·C`` channels (its running statistics are views of
  the stacked ``[K, C]`` buffers, updated in place), pooling and activations act per channel;
* a ``Linear`` is one batched matrix product ``[K, N, I] @ [K, I, O]`` (the shared input
  expanded, not copied): each member's product has the same shape whatever K, so a member's
  result does not depend on the group it trains in (one product ``[N, I] @ [I, K·O]`` would be
  as fast, but its rounding changes with K: float32 results of equal members in groups of
  different sizes then differ by ~1e-6).

2-D feature maps are kept channels-last (``[N, H, W, K·C]`` in memory): with ``K·C`` channels
of a few pixels each, torch's CPU max-pooling on contiguous ``[N, K·C, 8, 8]`` maps costs 3–6 ns
per element, channels-last about a quarter of that (measured on ``digits-cnn``'s first block,
16 members, 64 rows: conv → BatchNorm → ReLU → pool 3.5 ms contiguous, 1.0 ms channels-last,
2.5 ms for the 16 plain members one after the other), and the convolution with channels-last
filters is ten times faster than with contiguous ones (0.48 ms vs 5.1 ms for the first layer
of 128 rows).

Each member computes exactly what its plain module computes (the same ops on its own slices; in
float64 equal to rounding), BatchNorm's running statistics and batch count included. Dropout
draws its mask over the whole stacked activation: a different mask per member.

A model with any other layer (or a subclass, or hooks) gets None: it runs under ``vmap``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BatchedForward", "batched_forward"]

# Layers that act on each channel (or element) of [N, C, ...] alone: the channel-folded layout
# [N, K·C, ...] is the K members' inputs side by side.
_PER_CHANNEL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish,
                nn.Hardsigmoid, nn.Identity)
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# How an activation is laid out (see the module docstring).
_SHARED, _FOLDED, _STACKED = "shared", "folded", "stacked"


class _Activation:
    """The members' activation and its layout: ``shared`` ``[N, ...]`` (the same for every
    member), ``folded`` ``[N, K·C, ...]``, or ``stacked`` ``[K, N, ...]``."""

    __slots__ = ("layout", "members", "tensor")

    def __init__(self, tensor: Tensor, layout: str, members: int) -> None:
        self.tensor, self.layout, self.members = tensor, layout, members

    def stacked(self) -> Tensor:
        t, k = self.tensor, self.members
        if self.layout == _SHARED:
            return t.expand(k, *t.shape)
        if self.layout == _FOLDED:
            return t.unflatten(1, (k, t.shape[1] // k)).transpose(0, 1)
        return t

    def folded(self) -> Tensor:
        t, k = self.tensor, self.members
        if self.layout == _FOLDED:
            return t
        if self.layout == _SHARED:
            return t.repeat(1, k, *([1] * (t.ndim - 2)))
        return t.transpose(0, 1).flatten(1, 2)

    def with_tensor(self, tensor: Tensor, layout: str | None = None) -> _Activation:
        return _Activation(tensor, self.layout if layout is None else layout, self.members)


Layer = Callable[[_Activation, dict[str, Tensor], bool], _Activation]


class BatchedForward:
    """Every member's output ``[K, N, ...]`` from the stacked tensors, layer by layer (see the
    module docstring); made by :func:`batched_forward`."""

    def __init__(self, layers: list[tuple[Layer, list[tuple[str, int]]]]) -> None:
        self.layers = layers  # each layer, with its own tensors' names and indices

    def __call__(self, params: tuple[Tensor, ...], buffers: tuple[Tensor, ...], x: Tensor,
                 training: bool, sizes: list[int] | None = None) -> Tensor:
        """In training mode BatchNorm updates the stacked running statistics in place, as each
        plain module would its own. With ``sizes``, the bytes of every activation are
        appended to it."""
        tensors = (*params, *buffers)
        h = _Activation(x, _SHARED, params[0].shape[0])
        for layer, own in self.layers:
            h = layer(h, {name: tensors[i] for name, i in own}, training)
            if sizes is not None:
                sizes.append(h.tensor.numel() * h.tensor.element_size())
        return h.stacked()

    @torch.no_grad()
    def widest_row_bytes(self, params: tuple[Tensor, ...], buffers: tuple[Tensor, ...],
                         x: Tensor) -> int:
        """Bytes per input row of the widest activation of every member (eval mode, on ``x``)."""
        sizes: list[int] = []
        self(params, buffers, x, False, sizes)
        return max(sizes) // x.shape[0]


def batched_forward(template: nn.Module, names: Sequence[str], buffer_names: Sequence[str]
                    ) -> BatchedForward | None:
    """The stacked forward of ``template`` for known layers, or None (the model runs under vmap).

    Args:
        template: the members' shared structure.
        names: the names of the stacked parameters, in the order the forward receives them.
        buffer_names: the names of the stacked buffers, likewise.
    """
    leaves = _leaves(template)
    if leaves is None or not names:
        return None
    position = {name: i for i, name in enumerate([*names, *buffer_names])}
    layers: list[tuple[Layer, list[tuple[str, int]]]] = []
    for prefix, module in leaves:
        layer = _layer(module)
        local = [n for n, _ in [*module.named_parameters(recurse=False),
                                *module.named_buffers(recurse=False)]]
        qualified = [f"{prefix}.{n}" if prefix else n for n in local]
        if layer is None or not set(qualified) <= set(position):
            return None
        layers.append((layer, [(n, position[q]) for n, q in zip(local, qualified)]))
    if sum(len(own) for _, own in layers) != len(position):
        return None
    return BatchedForward(layers)


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """The leaf modules of nested ``nn.Sequential`` containers, in order, with their names;
    None for any other container, or a module with hooks."""
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    if type(module) is not nn.Sequential:
        return [(prefix, module)] if not any(True for _ in module.children()) else None
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        inner = _leaves(child, f"{prefix}.{name}" if prefix else name)
        if inner is None:
            return None
        out.extend(inner)
    return out


def _layer(module: nn.Module) -> Layer | None:
    kind = type(module)
    if kind is nn.Linear:
        return _linear
    if kind in _CONV and module.padding_mode == "zeros":
        return _conv(module)
    if kind in _NORM and (module.momentum is not None or not module.track_running_stats):
        return _norm(module)
    if kind in _ELEMENTWISE:
        plain = copy.copy(module)
        if getattr(plain, "inplace", False):
            plain.inplace = False  # the stacked tensor may be shared or an expanded view
        return lambda h, own, training: h.with_tensor(plain(h.tensor))
    if kind in _PER_CHANNEL and not getattr(module, "return_indices", False):
        return lambda h, own, training: h.with_tensor(
            module(h.folded()) if h.layout != _SHARED else module(h.tensor))
    if kind is nn.Dropout:
        return _dropout(module)
    if kind is nn.Flatten and module.start_dim != 0:
        return _reshape(module, lambda t, d: t.flatten(d(module.start_dim), d(module.end_dim)))
    if kind is nn.Unflatten and module.dim != 0:
        return _reshape(module, lambda t, d: t.unflatten(d(module.dim), module.unflattened_size))
    return None


def _linear(h: _Activation, own: dict[str, Tensor], training: bool) -> _Activation:
    weight, bias = own["weight"], own.get("bias")  # [K, O, I], [K, O]
    members, outputs, inputs = weight.shape
    x = h.stacked()
    rows = x.reshape(members, -1, inputs)
    out = (torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2)) if bias is not None
           else torch.bmm(rows, weight.transpose(1, 2)))
    return h.with_tensor(out.reshape(*x.shape[:-1], outputs), _STACKED)


def _conv(module: nn.Module) -> Layer:
    conv = _CONV[type(module)]
    options = dict(stride=module.stride, padding=module.padding, dilation=module.dilation)

    def layer(h: _Activation, own: dict[str, Tensor], training: bool) -> _Activation:
        weight, bias = own["weight"], own.get("bias")  # [K, O, C/g, *kernel], [K, O]
        members = weight.shape[0]
        flat = weight.flatten(0, 1)
        if flat.ndim == 4:  # channels-last filters: torch's fast convolution kernel here
            flat = flat.contiguous(memory_format=torch.channels_last)
        flat_bias = None if bias is None else bias.reshape(-1)
        if h.layout == _SHARED and module.groups == 1:
            # One convolution of the shared input with every member's filters side by side.
            out = conv(h.tensor, flat, flat_bias, groups=1, **options)
        else:
            # Member k's group g is group k·groups + g of one grouped convolution.
            out = conv(h.folded(), flat, flat_bias, groups=members * module.groups, **options)
        if out.ndim == 4:  # see the module docstring: channels-last feature maps
            out = out.contiguous(memory_format=torch.channels_last)
        return h.with_tensor(out, _FOLDED)

    return layer


def _norm(module: nn.Module) -> Layer:
    eps, momentum = module.eps, module.momentum
    track = module.track_running_stats

    def layer(h: _Activation, own: dict[str, Tensor], training: bool) -> _Activation:
        # nn.BatchNorm's forward, on K·C channels: each member's channels are its own.
        flat = {name: t.reshape(-1) for name, t in own.items()
                if name != "num_batches_tracked"}
        if training and track:
            own["num_batches_tracked"].add_(1)
        out = F.batch_norm(h.folded(), flat.get("running_mean"), flat.get("running_var"),
                           flat.get("weight"), flat.get("bias"), training or not track,
                           0.0 if momentum is None else momentum, eps)
        return h.with_tensor(out, _FOLDED)

    return layer


def _dropout(module: nn.Dropout) -> Layer:
    def layer(h: _Activation, own: dict[str, Tensor], training: bool) -> _Activation:
        if not training or module.p == 0:
            return h
        if h.layout == _SHARED:  # one mask per member: the input is no longer shared
            return h.with_tensor(F.dropout(h.stacked(), module.p, True), _STACKED)
        return h.with_tensor(F.dropout(h.tensor, module.p, True))

    return layer


def _reshape(module: nn.Module, reshape: Callable[[Tensor, Callable[[int], int]], Tensor]
             ) -> Layer:
    """Flatten / Unflatten on each member's ``[N, ...]``: on the shared input as it is, else on
    ``[K, N, ...]`` with the dimensions ≥ 1 shifted by one."""
    def layer(h: _Activation, own: dict[str, Tensor], training: bool) -> _Activation:
        if h.layout == _SHARED:
            return h.with_tensor(reshape(h.tensor, lambda d: d))
        return h.with_tensor(reshape(h.stacked(), lambda d: d + 1 if d >= 0 else d), _STACKED)

    return layer

