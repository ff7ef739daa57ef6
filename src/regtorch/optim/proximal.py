r"""Proximal: an optimizer step followed by the regularizer's proximal step, at the right step size.

Proximal gradient descent minimizes f(w) + R(w) by a gradient step on f and a proximal step on R:

.. math::  w \leftarrow \mathrm{prox}_{tR}(w - t∇f(w))

and its fixed points are exactly the minimizers (0 ∈ ∇f(w) + ∂R(w)) *only* if the proximal step
``t`` equals the step the optimizer actually took along the gradient. :class:`Proximal` reads that
*effective* step from the optimizer at every step, at the group's *current* learning rate (so LR
schedulers keep working):

=====================================  ==========================================================
optimizer                              effective step ``t``
=====================================  ==========================================================
``SGD``                                ``lr``
``SGD(momentum=μ, dampening=d)``       ``lr·(1−d)/(1−μ)``; Nesterov too (same steady state)
``Adam``, ``AdamW`` (``amsgrad`` too)  ``lr / (√v̂ + ε)`` per element, ``v̂ = v/(1−β₂ᵗ)`` from the
                                       optimizer's own ``exp_avg_sq`` (``max_exp_avg_sq``)
``Adagrad``                            ``lr / (1 + (k−1)·lr_decay) / (√G + ε)`` per element
``RMSprop``                            ``lr / (√v + ε)`` per element (centered: ``√(v − m²)``),
                                       divided by ``1−μ`` with momentum μ
=====================================  ==========================================================

With momentum, ``lr/(1−μ)`` is the step of the steady state (the momentum buffer of a constant
gradient g tends to g/(1−μ)); with the plain ``lr`` the fixed point would solve the problem for
λ(1−μ) instead of λ. For the adaptive optimizers the step is the element-wise preconditioned one;
thresholding by the plain ``lr`` there converges to the wrong point and leaves no exact zeros.
With a diagonal step the proximal step is exact for the separable penalties (L1, L2, elastic
net); :class:`~regtorch.GroupLasso` uses each group's mean step, so its fixed point is then only
approximately the group-lasso solution (a warning says so).

Parameters without a gradient at a step (``.grad is None``) were not updated by the optimizer and
get no proximal step either.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import SGD, Adagrad, Adam, Optimizer, RMSprop

from regtorch.penalties import GroupLasso
from regtorch.regularizer import Regularizer

__all__ = ["Proximal"]

Step = float | Tensor

# Optimizers whose effective step Proximal knows, and whether that step is preconditioned
# (element-wise). AdamW is an Adam subclass.
_PRECONDITIONED: dict[type[Optimizer], bool] = {SGD: False, Adam: True, Adagrad: True,
                                                RMSprop: True}


def _family(optimizer: Optimizer) -> type[Optimizer]:
    for cls in _PRECONDITIONED:
        if isinstance(optimizer, cls):
            return cls
    names = ", ".join(cls.__name__ for cls in _PRECONDITIONED)
    raise TypeError(f"Proximal does not know the effective step of {type(optimizer).__name__} "
                    f"(supported: {names} and AdamW); call reg.prox_(step) yourself after "
                    f"optimizer.step() with the step size that optimizer takes")


class Proximal(Optimizer):
    """Wrap an optimizer: ``step()`` runs it, then ``regularizer.prox_`` with its effective step.

    ``Proximal`` is a :class:`torch.optim.Optimizer` that shares the wrapped optimizer's
    ``param_groups``, ``state`` and ``defaults``: LR schedulers, ``ReduceLROnPlateau`` and
    ``GradScaler.step`` accept it, and a scheduler attached to the wrapped optimizer acts on it
    too. ``zero_grad``, ``add_param_group``, ``state_dict`` and ``load_state_dict`` are the wrapped
    optimizer's (the regularizer's strengths have their own ``state_dict``).

    Args:
        optimizer: ``SGD``, ``Adam``, ``AdamW``, ``Adagrad`` or ``RMSprop`` (or a subclass) over at
            least the parameters the regularizer penalizes.
        regularizer: the penalties to apply by their proximal step; every one must have one
            (:class:`~regtorch.Orthogonal` has none: apply it as ``reg()`` with a second
            Regularizer).
        preconditioned: use the optimizer's element-wise step (Adam, Adagrad, RMSprop) instead of
            the plain ``lr``. ``None`` (default): on for those optimizers, off for SGD, which has
            no preconditioner (``True`` with SGD raises).

    Raises:
        TypeError: an optimizer whose effective step is unknown (e.g. ``LBFGS``, ``NAdam``), or a
            penalty without a proximal step.
        ValueError: a penalized parameter the optimizer does not update; ``maximize=True`` (the
            proximal step minimizes); ``preconditioned=True`` with SGD; momentum ``>= 1``.

    Warns:
        UserWarning: a :class:`~regtorch.GroupLasso` with an element-wise step (see above).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(20, 1)
        >>> reg = Regularizer(model, L1(0.1))
        >>> optimizer = Proximal(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5), reg)
        >>> x, y = torch.randn(64, 20), torch.randn(64, 1)
        >>> for _ in range(50):
        ...     optimizer.zero_grad()
        ...     nn.functional.mse_loss(model(x), y).backward()
        ...     _ = optimizer.step()
        >>> optimizer.effective_steps()  # lr / (1 - momentum) for the one penalized tensor
        [0.1]
        >>> bool((model.weight == 0).any())  # exact zeros, which a subgradient never gives
        True
    """

    def __init__(self, optimizer: Optimizer, regularizer: Regularizer, *,
                 preconditioned: bool | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Invalid optimizer: {optimizer!r} (expected a torch.optim "
                            f"optimizer)")
        if not isinstance(regularizer, Regularizer):
            raise TypeError(f"Invalid regularizer: {regularizer!r} (expected a "
                            f"regtorch.Regularizer)")
        family = _family(optimizer)
        if preconditioned is None:
            preconditioned = _PRECONDITIONED[family]
        elif not isinstance(preconditioned, bool):
            raise TypeError(f"Invalid preconditioned value: {preconditioned!r} (expected True, "
                            f"False or None)")
        elif preconditioned and not _PRECONDITIONED[family]:
            raise ValueError(f"Invalid preconditioned value: True ({type(optimizer).__name__} "
                             f"has no preconditioner; its effective step is the plain lr)")
        for selector, penalty in regularizer.rules:
            if not penalty.has_prox:
                raise TypeError(f"Rule {selector!r} -> {penalty!r} has no proximal step; apply "
                                f"it as a loss term (reg()) with a separate Regularizer")
            if preconditioned and any(isinstance(t, GroupLasso) for t in penalty.terms):
                warnings.warn(f"Rule {selector!r} -> {penalty!r}: with {type(optimizer).__name__}"
                              f"'s element-wise step the group-lasso proximal step uses each "
                              f"group's mean step, so the fixed point is only approximately "
                              f"the group-lasso solution", UserWarning, stacklevel=2)
        self.optimizer = optimizer
        self.regularizer = regularizer
        self.preconditioned = preconditioned
        self._effective_step: Callable[[dict[str, Any], Tensor], Any] = (
            getattr(self, f"_{family.__name__.lower()}_step"))
        # Per-instance hook tables, as torch.optim.Optimizer.__init__ creates them (it is not
        # called: the parameters, state and groups are the wrapped optimizer's).
        for name in ("step_pre", "step_post", "state_dict_pre", "state_dict_post",
                     "load_state_dict_pre", "load_state_dict_post"):
            setattr(self, f"_optimizer_{name}_hooks", OrderedDict())
        self._group_of = self._locate()

    # -- the wrapped optimizer's state, shared ---------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)
        self._group_of = self._locate()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    # -- the step ------------------------------------------------------------------------------
    @Optimizer.profile_hook_step
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Run the optimizer's step, then ``regularizer.prox_(self.effective_steps())``.

        Returns:
            What the wrapped optimizer's ``step`` returns (the closure's loss, if given).
        """
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.regularizer.prox_(self.effective_steps())
        return loss

    @torch.no_grad()
    def effective_steps(self) -> list[Step]:
        """The step size of each penalized parameter (``regularizer.parameters()`` order) at the
        current learning rates and optimizer state: a float, or a tensor of the parameter's
        shape for element-wise steps; 0 for a parameter the optimizer does not update at this
        step (no gradient, or frozen and left out of the optimizer)."""
        if len(self._group_of) != sum(len(g["params"]) for g in self.param_groups):
            self._group_of = self._locate()
        steps: list[Step | _Elementwise] = []
        for p in self.regularizer.parameters():
            index = self._group_of.get(id(p))
            if index is None or p.grad is None:  # not updated by the optimizer at this step
                steps.append(0.0)
                continue
            group = self.param_groups[index]
            if group.get("maximize", False):
                raise ValueError("Invalid maximize value: True (the proximal step minimizes)")
            steps.append(self._effective_step(group, p))
        return _evaluate(steps)

    def _locate(self) -> dict[int, int]:
        """Map each optimized tensor to its param group; every penalized tensor that is still
        trainable must be there (a frozen one may have been left out of the optimizer)."""
        group_of = {id(p): index for index, group in enumerate(self.param_groups)
                    for p in group["params"]}
        missing = [name for name, p in self.regularizer.named_parameters()
                   if p.requires_grad and id(p) not in group_of]
        if missing:
            raise ValueError(f"Penalized parameters not updated by the optimizer: "
                             f"{', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''} "
                             f"(give the optimizer every parameter the regularizer penalizes)")
        return group_of

    # Effective steps per optimizer family: the steady-state step along the gradient estimate,
    # a float, or the element-wise lr / (√v / scale + ε) evaluated in one batch by _evaluate.
    def _sgd_step(self, group: dict[str, Any], p: Tensor) -> Step:
        lr, momentum = float(group["lr"]), _momentum(group)
        if momentum == 0.0:
            return lr
        return lr * (1.0 - float(group["dampening"])) / (1.0 - momentum)

    def _adam_step(self, group: dict[str, Any], p: Tensor) -> Step | _Elementwise:
        lr = float(group["lr"])
        state = self.state.get(p)
        if not self.preconditioned:
            return lr
        if not state:
            return 0.0
        v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        bias_correction2 = 1.0 - float(group["betas"][1]) ** float(state["step"])
        return _Elementwise(v, math.sqrt(bias_correction2), float(group["eps"]), lr)

    def _adagrad_step(self, group: dict[str, Any], p: Tensor) -> Step | _Elementwise:
        state = self.state.get(p)
        if not state:
            return 0.0
        lr = float(group["lr"]) / (1.0 + (float(state["step"]) - 1.0) * float(group["lr_decay"]))
        if not self.preconditioned:
            return lr
        return _Elementwise(state["sum"], 1.0, float(group["eps"]), lr)

    def _rmsprop_step(self, group: dict[str, Any], p: Tensor) -> Step | _Elementwise:
        lr = float(group["lr"]) / (1.0 - _momentum(group))
        state = self.state.get(p)
        if not self.preconditioned:
            return lr
        if not state:
            return 0.0
        v = state["square_avg"]
        if group["centered"]:
            v = v.addcmul(state["grad_avg"], state["grad_avg"], value=-1)
        return _Elementwise(v, 1.0, float(group["eps"]), lr)

    def __repr__(self) -> str:
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return (f"Proximal(\n{inner},\n    {self.regularizer!r},\n"
                f"    preconditioned={self.preconditioned}\n)")



class _Elementwise(NamedTuple):
    """The element-wise step ``lr / (√v / scale + eps)`` of an adaptive optimizer, to evaluate."""

    v: Tensor
    scale: float
    eps: float
    lr: float


def _evaluate(steps: list[Step | _Elementwise]) -> list[Step]:
    """Evaluate the element-wise steps with fused kernels, in the order torch's optimizers
    compute their denominators (``√v / scale + eps``)."""
    todo = [i for i, s in enumerate(steps) if isinstance(s, _Elementwise)]
    if not todo:
        return steps  # type: ignore[return-value]
    pending = [steps[i] for i in todo]
    denominators = torch._foreach_sqrt([s.v for s in pending])
    torch._foreach_div_(denominators, [s.scale for s in pending])
    torch._foreach_add_(denominators, [s.eps for s in pending])
    torch._foreach_reciprocal_(denominators)
    torch._foreach_mul_(denominators, [s.lr for s in pending])
    for i, step in zip(todo, denominators):
        steps[i] = step
    return steps  # type: ignore[return-value]


def _momentum(group: dict[str, Any]) -> float:
    momentum = float(group.get("momentum", 0.0))
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum value: {momentum} (the effective step "
                         f"lr/(1-momentum) needs 0 <= momentum < 1)")
    return momentum
