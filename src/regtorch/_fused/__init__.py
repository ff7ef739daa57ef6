"""Fused single-pass penalty kernels (private).

One call per penalty rule over a list of tensors: the gradient update ``g += ∇R(w)`` and the
value R(w), accumulated in float64, in one read of ``w``; and the proximal steps of L1, L2 and
elastic net with a scalar step (SGD) or Adam's element-wise step ``lr/(√v̂+ε)`` from the
optimizer's own ``exp_avg_sq``, in one pass. The C++ kernel (``kernel.cpp``) is built at first
use (see :mod:`regtorch._fused._build`); :mod:`regtorch._fused.reference` is the same contract in
pure PyTorch.

Each function below runs the kernel when it is available and the call is one it covers (CPU
tensors, float strengths), else the reference: the dispatch point is :func:`kernel_for`.

:func:`penalty_term` is the loss-mode term (one :class:`torch.autograd.Function`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

from torch import Tensor

from regtorch._fused import _build, reference
from regtorch._fused._build import disabled, load_kernel
from regtorch._fused.loss import penalty_term

__all__ = ["adam_prox_", "disabled", "elementwise_grad_", "elementwise_prox_", "group_grad_",
           "kernel_for", "load_kernel", "penalty_term", "prox_module", "reference"]

_GROUP_CODES = {"rows": 0, "columns": 1, "tensor": 2}


def kernel_for(params: Sequence[Tensor]) -> SimpleNamespace | None:
    """The kernel's ops if they are built and can take ``params`` (CPU tensors), else ``None``.

    Only the first tensor is looked at (a rule's tensors share a device); the kernel itself
    stages a half-precision or non-contiguous tensor through a float copy.
    """
    if not params or params[0].device.type != "cpu":
        return None
    return load_kernel()


def prox_module():
    """The kernel library's Python module, whose ``prox_call`` (``prox.cpp``) is the attached
    proximal step's fast path, or ``None`` when the kernel is not available (this package's
    :func:`load_kernel`, which tests and benchmarks switch off)."""
    if load_kernel() is None:
        return None
    return _build.load_loss_module()


def elementwise_grad_(params: Sequence[Tensor], grads: Sequence[Tensor], l1: float, l2: float,
                      *, value: bool = False) -> Tensor | None:
    """See :func:`regtorch._fused.reference.elementwise_grad_`."""
    ops = kernel_for(params)
    if ops is None:
        return reference.elementwise_grad_(params, grads, l1, l2, value=value)
    total = ops.elementwise_grad(params, grads, l1, l2, bool(value))
    return total if value else None


def group_grad_(params: Sequence[Tensor], grads: Sequence[Tensor], lam: float, groups: str,
                coefficients: Sequence[float], *, value: bool = False) -> Tensor | None:
    """See :func:`regtorch._fused.reference.group_grad_`."""
    ops = kernel_for(params)
    if ops is None:
        return reference.group_grad_(params, grads, lam, groups, coefficients, value=value)
    total = ops.group_grad(params, grads, lam, _GROUP_CODES[groups], coefficients, bool(value))
    return total if value else None


def elementwise_prox_(params: Sequence[Tensor], steps: Sequence[float], l1: float,
                      l2: float) -> None:
    """See :func:`regtorch._fused.reference.elementwise_prox_`."""
    ops = kernel_for(params)
    if ops is None:
        reference.elementwise_prox_(params, steps, l1, l2)
    else:
        ops.elementwise_prox(params, steps, l1, l2)


def adam_prox_(params: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor], lrs: Sequence[float],
               scales: Sequence[float], eps: Sequence[float], l1: float, l2: float) -> None:
    """See :func:`regtorch._fused.reference.adam_prox_`."""
    ops = kernel_for(params)
    if ops is None:
        reference.adam_prox_(params, exp_avg_sqs, lrs, scales, eps, l1, l2)
    else:
        ops.adam_prox(params, exp_avg_sqs, lrs, scales, eps, l1, l2)
