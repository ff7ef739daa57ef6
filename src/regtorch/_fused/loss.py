r"""Loss mode as one :class:`torch.autograd.Function` (private).

``loss + reg()`` through autograd records every op of the penalty's value (``pow``, ``sum``,
chunked dots, a float64 cast) and runs each one's backward: for L2 that is several passes over
every weight where one suffices. :func:`penalty_term` instead returns R(w) from one node: its
forward runs ``penalty.add_grad_(value=True)`` into fresh buffers (value and closed-form gradient
together, one pass with the fused kernel), its backward hands those buffers to autograd, scaled by
the incoming gradient. The same value and the same gradients, with no graph through the value's
ops. (The gradient is computed even if no backward follows: a term built under grad mode is
normally differentiated.)

The plain autograd path (``penalty.value(params)``) is kept where the function cannot be used:

- under ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``...), which the lab trains
  through: a custom Function without a ``vmap`` rule fails there;
- while ``torch.compile`` traces (dynamo sees the ordinary ops);
- for penalties without a closed-form gradient (:class:`~regtorch.Orthogonal`);
- for half-precision parameters and under ``torch.autocast``;
- when no tensor needs a gradient (grad mode off, or every tensor frozen).

Double backward (``create_graph=True``) works: the backward then differentiates
``penalty.value`` itself, so the gradient it returns is differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["penalty_term", "uses_function"]

# Half-precision parameters and autocast keep autograd: the penalty is then computed in float32
# by ``penalty.value`` (see regularizer.py), which the closed-form gradients do not do.
_DTYPES = (torch.float32, torch.float64)


def _closed_form(penalty) -> bool:
    from regtorch.penalties import L1, L2, GroupLasso

    return all(isinstance(term, (L1, L2, GroupLasso)) for term in penalty.terms)


def _transformed(params: Sequence[Tensor]) -> bool:
    """True inside ``torch.func`` transforms (or when handed their wrapped tensors)."""
    return (torch._C._are_functorch_transforms_active()
            or torch._C._functorch.is_functorch_wrapped_tensor(params[0]))


def uses_function(penalty, params: Sequence[Tensor]) -> bool:
    """Whether :func:`penalty_term` takes the custom-Function path for this call."""
    if torch.compiler.is_compiling():  # first: dynamo traces the plain path, nothing else here
        return False
    return (bool(params) and torch.is_grad_enabled() and _closed_form(penalty)
            and params[0].dtype in _DTYPES and not torch.is_autocast_enabled()
            and not _transformed(params) and any(p.requires_grad for p in params))


def penalty_term(penalty, params: Sequence[Tensor]) -> Tensor:
    """R(w) of ``penalty`` over ``params`` as a 0-d float64 tensor to add to a loss.

    Args:
        penalty: a regtorch penalty.
        params: the tensors it acts on.

    Returns:
        ``penalty.value(params)``, differentiable with the gradients of
        ``penalty.add_grad_``; through autograd in the cases the module docstring lists.
    """
    if not uses_function(penalty, params):
        return penalty.value(params)
    return _PenaltyTerm.apply(penalty, *params)


class _PenaltyTerm(torch.autograd.Function):
    """R(w) forward, computed together with ∇R(w) by one ``add_grad_(value=True)`` into fresh
    buffers (one pass with the fused kernel); backward returns ``grad_output · ∇R(w)``."""

    @staticmethod
    def forward(ctx, penalty, *params: Tensor) -> Tensor:
        grads = [torch.zeros_like(p) for p in params]
        value = penalty.add_grad_(list(params), grads, value=True)
        ctx.penalty = penalty
        ctx.grads = grads
        ctx.save_for_backward(*params)
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        needed = ctx.needs_input_grad[1:]
        if torch.is_grad_enabled():  # create_graph=True: a differentiable gradient
            params = list(ctx.saved_tensors)
            leaves = [p for p, need in zip(params, needed) if need]
            value = ctx.penalty.value(params)
            found = iter(torch.autograd.grad(value, leaves, grad_output, create_graph=True,
                                             allow_unused=True))
            return (None, *(next(found) if need else None for need in needed))
        grads, ctx.grads = ctx.grads, None
        # The usual case is d(loss)/d(R) = 1: skip the scaling pass (a CPU scalar costs no sync).
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            torch._foreach_mul_(grads, grad_output.to(grads[0].dtype))
        return (None, *(g if need else None for g, need in zip(grads, needed)))
