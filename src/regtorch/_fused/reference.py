r"""The fused kernel's contract in pure PyTorch (private): the fallback and the tests' reference.

Every function here does what the kernel op of the same name does, with the same arithmetic per
element (so gradients and proximal results are bit-identical to the kernel's, except where a
square root or a float64 sum in another order may round differently: group norms, Adam's
threshold), in several passes instead of one. Values are accumulated in float64 (each tensor
upcast: exact enough to be a reference, not fast).

Conventions (strengths ≥ 0 floats; ``[K]`` strengths are not part of this contract):

- ``elementwise_grad_``: ``g += l1·sign(w)``, then ``g += l2·w``; value
  :math:`l_1 Σ|w| + \frac{l_2}{2} Σ w^2`;
- ``group_grad_``: ``g += w · ((lam·c) / max(‖w_g‖, √tiny))`` per group; value
  :math:`λ Σ_t c_t Σ_g ‖w_g‖_2`, groups ``"rows"`` (slices along dim 0), ``"columns"`` (along
  dim 1) or ``"tensor"``;
- ``elementwise_prox_``: ``w ← w − clamp(w, −t·l1, t·l1)``, then ``w ← w / (1 + t·l2)``;
- ``adam_prox_``: the same with the element-wise step
  :math:`t = lr · 1/(\sqrt{v}/s + ε)`, ``v`` the optimizer's ``exp_avg_sq`` and
  :math:`s = \sqrt{1 − β_2^k}`.

A strength that is exactly 0 skips its term (no pass, no change to ``-0.0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["GROUPS", "adam_prox_", "elementwise_grad_", "elementwise_prox_", "group_dims",
           "group_grad_"]

GROUPS = ("rows", "columns", "tensor")


def _float64_sum(tensors: Sequence[Tensor]) -> Tensor:
    return sum((t.to(torch.float64).sum() for t in tensors),
               torch.zeros((), dtype=torch.float64))


def elementwise_grad_(params: Sequence[Tensor], grads: Sequence[Tensor], l1: float, l2: float,
                      *, value: bool = False) -> Tensor | None:
    """``grads += l1·sign(params) + l2·params`` in place; R (0-d float64) when ``value``."""
    params, grads = list(params), list(grads)
    if params and l1 != 0.0:
        torch._foreach_add_(grads, torch._foreach_sign(params), alpha=l1)
    if params and l2 != 0.0:
        torch._foreach_add_(grads, params, alpha=l2)
    if not value:
        return None
    total = torch.zeros((), dtype=torch.float64)
    if l1 != 0.0:
        total = total + l1 * _float64_sum([p.abs() for p in params])
    if l2 != 0.0:
        total = total + 0.5 * l2 * _float64_sum([p.to(torch.float64).square() for p in params])
    return total


def group_dims(param: Tensor, groups: str) -> tuple[int, ...]:
    """Dims summed within one group: ``"rows"`` all but 0, ``"columns"`` all but 1, ``"tensor"``
    all."""
    if groups == "rows":
        return tuple(range(1, param.ndim))
    if groups == "columns":
        return (0, *range(2, param.ndim))
    return tuple(range(param.ndim))


def group_grad_(params: Sequence[Tensor], grads: Sequence[Tensor], lam: float, groups: str,
                coefficients: Sequence[float], *, value: bool = False) -> Tensor | None:
    """``grads += lam·c·w_g/max(‖w_g‖, √tiny)`` in place; R (0-d float64) when ``value``."""
    total = torch.zeros((), dtype=torch.float64)
    for p, g, c in zip(params, grads, coefficients):
        if p.numel() == 0:
            continue
        dims = group_dims(p, groups)
        norms = (torch.linalg.vector_norm(p.to(torch.float64), 2, dim=dims, keepdim=True)
                 if dims else p.to(torch.float64).abs())
        if value:
            total = total + c * norms.sum()
        if lam != 0.0:
            floor = math.sqrt(torch.finfo(p.dtype).tiny)
            factor = (lam * c) / norms.to(p.dtype).clamp_min_(floor)
            g.addcmul_(p, factor)
    return lam * total if value else None


def elementwise_prox_(params: Sequence[Tensor], steps: Sequence[float], l1: float,
                      l2: float) -> None:
    """``w ← (w − clamp(w, −t·l1, t·l1)) / (1 + t·l2)`` in place, ``t`` one float per tensor."""
    for p, t in zip(params, steps):
        if l1 != 0.0:
            p.sub_(p.clamp(-(t * l1), t * l1))
        if l2 != 0.0:
            p.div_(1.0 + t * l2)


def adam_prox_(params: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor], lrs: Sequence[float],
               scales: Sequence[float], eps: Sequence[float], l1: float, l2: float) -> None:
    """The proximal step with Adam's element-wise step ``t = lr / (√v / scale + eps)``."""
    for p, v, lr, scale, e in zip(params, exp_avg_sqs, lrs, scales, eps):
        t = torch.sqrt(v).div_(scale).add_(e).reciprocal_().mul_(lr)
        if l1 != 0.0:
            tau = t * l1
            p.sub_(torch.minimum(torch.maximum(p, -tau), tau))
        if l2 != 0.0:
            p.div_(1.0 + t * l2)
