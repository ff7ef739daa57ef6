r"""The fused gradient attached to the user's own optimizer: ``reg.add_grad_()`` before each step.

:meth:`~regtorch.Regularizer.add_grad_` adds ∇R to ``.grad``: the gradient of ``f + R``, the
objective to *minimize*. It knows no optimizer, so it cannot see ``maximize=True``, under which
torch's optimizers step along ``+grad``: called by hand there, it would push the weights *up* the
penalty. :func:`attach_grad` knows the optimizer. It registers a step pre-hook
(``optimizer.register_step_pre_hook``) that runs ``add_grad_`` right before every step, and for
the penalized parameters of a param group with ``maximize=True`` it adds ``−∇R`` instead: the
optimizer then maximizes ``f − R``, which is what torch's own ``weight_decay`` does under
``maximize`` (it adds ``λ·w`` to the *negated* gradient). So with SGD and ``L2(λ)``,

.. math::  w \leftarrow w - \mathrm{lr}\,(\mp ∇f(w) + λ w)

for ``maximize=False`` / ``True``: the trajectory of ``SGD(weight_decay=λ, maximize=...)``.

Running inside ``optimizer.step()`` has two more consequences: with ``torch.amp.GradScaler``,
``scaler.step(optimizer)`` unscales the gradients before it calls ``step()``, so ∇R is added to
unscaled gradients, as it must be (by hand: ``scaler.unscale_(optimizer)`` first); and a step the
scaler skips (inf/NaN gradients) adds nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from regtorch.regularizer import Regularizer

__all__ = ["GradHandle", "attach_grad"]


def attach_grad(optimizer: Optimizer, regularizer: Regularizer, *,
                value: bool = False) -> GradHandle:
    """Run ``regularizer.add_grad_()`` before each ``optimizer.step()``, right under ``maximize``.

    Args:
        optimizer: any ``torch.optim`` optimizer (the user's own object: schedulers, GradScaler
            and frameworks keep working).
        regularizer: the penalties whose gradient to add.
        value: also compute R(w) at each step (an extra pass) into ``handle.value_``.

    Returns:
        A :class:`GradHandle`: ``value_`` and ``remove()``.

    Raises:
        TypeError: ``optimizer`` is not a torch optimizer, ``regularizer`` not a Regularizer, or
            ``value`` not a bool.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> handle = attach_grad(optimizer, Regularizer(model, L2(0.01)), value=True)
        >>> nn.functional.mse_loss(model(torch.ones(4, 3)), torch.zeros(4, 1)).backward()
        >>> optimizer.step()  # the gradient of 0.005·‖W‖² was added just before the step
        >>> handle.value_.dtype
        torch.float64
        >>> handle.remove()
    """
    return GradHandle(optimizer, regularizer, value=value)


class GradHandle:
    """The fused gradient attached to an optimizer by :func:`attach_grad`.

    Attributes:
        optimizer: the optimizer it is attached to.
        regularizer: the penalties whose gradient it adds.
        value_: R(w) (detached, float64) at the latest step, when built with ``value=True``;
            ``None`` before the first step or without ``value``.
    """

    def __init__(self, optimizer: Optimizer, regularizer: Regularizer, *,
                 value: bool = False) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Invalid optimizer: {optimizer!r} (expected a torch.optim "
                            f"optimizer)")
        if not isinstance(regularizer, Regularizer):
            raise TypeError(f"Invalid regularizer: {regularizer!r} (expected a "
                            f"regtorch.Regularizer)")
        if not isinstance(value, bool):
            raise TypeError(f"Invalid value: {value!r} (expected a bool)")
        self.optimizer = optimizer
        self.regularizer = regularizer
        self.value = value
        self.value_: Tensor | None = None
        self._penalized = {id(p) for p in regularizer.parameters()}
        self._hook: Any = optimizer.register_step_pre_hook(self._before_step)

    @property
    def attached(self) -> bool:
        """Whether the hook is still registered (false after :meth:`remove`)."""
        return self._hook is not None

    def remove(self) -> None:
        """Detach: later steps add nothing. Idempotent."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @torch.no_grad()
    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # Under maximize the optimizer steps along +grad: add −∇R there, by negating those
        # gradients around add_grad_ (g ← −(−g + ∇R) = g − ∇R; a missing one becomes −∇R).
        ascending = [p for group in optimizer.param_groups if group.get("maximize", False)
                     for p in group["params"] if id(p) in self._penalized and p.requires_grad]
        present = [p.grad for p in ascending if p.grad is not None]
        if present:
            torch._foreach_neg_(present)
        self.value_ = self.regularizer.add_grad_(value=self.value)
        if ascending:
            torch._foreach_neg_([p.grad for p in ascending])

    def __repr__(self) -> str:
        state = "attached to" if self.attached else "removed from"
        return f"GradHandle({state} {type(self.optimizer).__name__}, {self.regularizer!r})"
