r"""The proximal step attached to the user's own optimizer, at the step size it actually takes.

Proximal gradient descent minimizes f(w) + R(w) by a gradient step on f and a proximal step on R:

.. math::  w \leftarrow \mathrm{prox}_{tR}(w - t∇f(w))

and its fixed points are exactly the minimizers (0 ∈ ∇f(w) + ∂R(w)) *only* if the proximal step
``t`` equals the step the optimizer actually took along the gradient. :func:`attach_prox` registers
a step post-hook on the optimizer (torch's public ``Optimizer.register_step_post_hook``) that reads
that *effective* step from the optimizer after every ``step()``, at each group's *current* learning
rate (so LR schedulers keep working), and runs ``regularizer.prox_`` with it:

=====================================  ==========================================================
optimizer                              effective step ``t``
=====================================  ==========================================================
``SGD``                                ``lr``
``SGD(momentum=μ, dampening=d)``       ``lr·(1−d)/(1−μ)``; Nesterov too (same steady state)
``Adam``, ``AdamW`` (``amsgrad`` too)  ``lr / (√v̂ + ε)`` per element, ``v̂ = v/(1−β₂ᵏ)`` from the
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

The step count ``k`` is read from the optimizer's ``state["step"]`` tensors as tensors, once per
param group (never ``float(state["step"])`` per parameter: that would synchronize the host with
the device at every parameter under fused or capturable Adam, and ``torch.compile`` traces it
wrongly). Parameters without a gradient at a step (``.grad is None``) were not updated by the
optimizer and get no proximal step either.

Where regtorch's fused C++ kernel is built (``docs/performance.md``), the hook does not
materialize these steps: one kernel call per rule and param group reads the optimizer's own
``exp_avg_sq`` (``sum``, ``square_avg``) and step tensors and applies the proximal step in one
pass, with the same arithmetic (equal to the pure-PyTorch path within 1e-12 in float64, with the
same exact zeros). The hook reaches those calls in one call into C++ per step (``prox_call``,
``regtorch/_fused/prox.cpp``), which reads the strengths, the param groups and the optimizer's
state at that step, as the Python path does, and defers to it for anything it does not cover.
The kernel covers L1, L2, elastic net, group lasso (rows, columns, tensor) and their sums with
float strengths, on plain CPU float32/float64 tensors, for every optimizer above except
centered RMSprop's element-wise step. Everything else — ``[K]`` strengths, half types, other
devices, DTensors, a tensor ``lr``, ``torch.compile`` tracing — takes the pure-PyTorch path
(``effective_steps()`` then ``reg.prox_``), as does every step when ``REGTORCH_FUSED=0``.

Because the hook runs inside ``optimizer.step()``, whatever skips that call skips the proximal
step too: ``torch.amp.GradScaler.step`` does not call ``step()`` when the gradients hold inf/NaN,
and then no proximal step runs — as it must, the weights did not move.
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import SGD, Adagrad, Adam, Optimizer, RMSprop

from regtorch import _fused
from regtorch._fused.reference import group_dims
from regtorch.penalties import L1, L2, GroupLasso, Penalty, Scratch
from regtorch.regularizer import Regularizer

__all__ = ["ProxHandle", "Proximal", "attach_prox"]

Step = float | Tensor

# Optimizers whose effective step is known, and whether that step is preconditioned
# (element-wise). AdamW is an Adam subclass.
_PRECONDITIONED: dict[type[Optimizer], bool] = {SGD: False, Adam: True, Adagrad: True,
                                                RMSprop: True}

_ARGS_DOC = """optimizer: ``SGD``, ``Adam``, ``AdamW``, ``Adagrad`` or ``RMSprop`` (or a subclass)
            over at least the parameters the regularizer penalizes; with ``maximize=False``.
        regularizer: the penalties to apply by their proximal step; every one must have one
            (:class:`~regtorch.Orthogonal` has none: apply it as ``reg()`` with a second
            Regularizer).
        preconditioned: use the optimizer's element-wise step (Adam, Adagrad, RMSprop) instead of
            the plain ``lr``. ``None`` (default): on for those optimizers, off for SGD, which has
            no preconditioner (``True`` with SGD raises)."""

_RAISES_DOC = """TypeError: an optimizer whose effective step is unknown (e.g. ``LBFGS``,
            ``NAdam``), or a penalty without a proximal step.
        ValueError: a penalized parameter the optimizer does not update; ``maximize=True`` in a
            param group (the proximal step minimizes: refused here, before anything steps, and
            before any later step whose groups gained it); ``preconditioned=True`` with SGD;
            momentum ``>= 1``."""


def attach_prox(optimizer: Optimizer, regularizer: Regularizer, *,
                preconditioned: bool | None = None) -> ProxHandle:
    """Run ``regularizer.prox_`` with the optimizer's effective step after each of its steps.

    The optimizer stays the user's object: LR schedulers, ``GradScaler``, checkpoints and
    frameworks that own it (Lightning, the Hugging Face Trainer) keep working. The proximal step
    is a step post-hook (``optimizer.register_step_post_hook``), plus a pre-hook that refuses
    ``maximize=True`` before a step runs. ``handle.remove()`` detaches both.

    Args:
        {args}

    Returns:
        A :class:`ProxHandle`: ``effective_steps()`` and ``remove()``.

    Raises:
        {raises}

    Warns:
        UserWarning: a :class:`~regtorch.GroupLasso` with an element-wise step (its proximal
        step then uses each group's mean step).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(20, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        >>> handle = attach_prox(optimizer, Regularizer(model, L1(0.1)))
        >>> x, y = torch.randn(64, 20), torch.randn(64, 1)
        >>> for _ in range(50):
        ...     optimizer.zero_grad()
        ...     nn.functional.mse_loss(model(x), y).backward()
        ...     _ = optimizer.step()
        >>> handle.effective_steps()  # lr / (1 - momentum) for the one penalized tensor
        [0.1]
        >>> bool((model.weight == 0).any())  # exact zeros, which a subgradient never gives
        True
        >>> handle.remove()  # from here on, optimizer.step() is torch's alone
    """
    return ProxHandle(optimizer, regularizer, preconditioned=preconditioned)


if attach_prox.__doc__:  # None under python -OO
    attach_prox.__doc__ = attach_prox.__doc__.format(args=_ARGS_DOC, raises=_RAISES_DOC)


class ProxHandle:
    """The proximal step attached to an optimizer by :func:`attach_prox`.

    Attributes:
        optimizer: the optimizer it is attached to.
        regularizer: the penalties it applies.
        preconditioned: whether it uses the optimizer's element-wise step.
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
            if preconditioned and _grouped(penalty):
                warnings.warn(f"Rule {selector!r} -> {penalty!r}: with {type(optimizer).__name__}"
                              f"'s element-wise step the group-lasso proximal step uses each "
                              f"group's mean step, so the fixed point is only approximately "
                              f"the group-lasso solution", UserWarning, stacklevel=3)
        self.optimizer = optimizer
        self.regularizer = regularizer
        self.preconditioned = preconditioned
        self._family = family
        self._family_code = _FAMILY_CODES[family]
        self._group_steps: Callable[[dict[str, Any], list[Tensor]], list[Step]] = (
            getattr(self, f"_{family.__name__.lower()}_steps"))
        # The adaptive families read per-parameter state, which exists once a parameter has
        # been stepped.
        self._stateful = family is not SGD
        self._check_groups()
        self._members = self._locate()
        # buffers of the lean proximal step, per (rule, param group)
        self._scratch: dict[tuple[int, int], tuple[Scratch, Scratch]] = {}
        self._scalars: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        self._hooks = [optimizer.register_step_pre_hook(self._before_step),
                       optimizer.register_step_post_hook(self._after_step)]

    @property
    def attached(self) -> bool:
        """Whether the hooks are still registered (false after :meth:`remove`)."""
        return bool(self._hooks)

    def remove(self) -> None:
        """Detach: later ``optimizer.step()`` calls run no proximal step. Idempotent."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # -- the hooks -----------------------------------------------------------------------------
    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # (A C++ version of this check, tried with prox_call, cost more than it saved here: a
        # few dict reads per param group, ~3-5 µs in a training step.)
        self._check_groups()

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if self._call_prox_() or self._fused_prox_() or self._lean_prox_():
            return
        self.regularizer.prox_(self.effective_steps())

    def _call_prox_(self) -> bool:
        """The fused proximal step as one call into C++ (``prox_call`` in ``prox.cpp``); whether
        it ran.

        ``prox_call`` does what :meth:`_fused_prox_` does — :meth:`_covered_calls`,
        :meth:`_kernel_step`, :func:`_kernel_form`, :func:`_coefficient`, then the kernel's
        ``prox_step`` per rule and param group, with the same arguments — reading the
        strengths, the param groups, the optimizer's ``state`` and every tensor at each call
        (nothing is cached but the rules' members, :meth:`_locate`'s). All or nothing: when
        anything is not covered, or not read exactly as Python would read it, it returns
        ``None`` before changing anything, and the caller takes :meth:`_fused_prox_`.
        """
        if not self._rules or _is_compiling():
            return False
        module = _fused.prox_module()
        if module is None:
            return False
        optimizer = self.optimizer
        return module.prox_call(self._rules, optimizer.param_groups, optimizer.state,
                                self._optimized, self._family_code, self.preconditioned,
                                _PROX_KINDS) is not None

    @torch.no_grad()
    def _fused_prox_(self) -> bool:
        """The proximal step by the fused kernel, one call per rule and param group, the
        effective step computed inside it from the optimizer's state; whether it ran.

        All or nothing: every rule must be one the kernel covers (:func:`_kernel_form`), every
        updated parameter a plain CPU float32/float64 tensor, every group's ``lr`` a number;
        otherwise nothing has been changed and the caller takes the pure-PyTorch path. (The
        hook calls this only when :meth:`_call_prox_`, the same step in one call into C++, did
        not cover the step.)
        """
        if not self._rules or torch.compiler.is_compiling():
            return False
        ops = _fused.load_kernel()
        if ops is None:
            return False
        calls = self._covered_calls(groups=True)
        if calls is None:
            return False
        for updated, step, (l1, l2, lam, grouping, scale), _ in calls:
            coefficients = ([_coefficient(p, grouping, scale) for p in updated]
                            if lam != 0.0 else [])
            ops.prox_step(updated, *step, l1, l2, lam, _GROUP_CODES[grouping], coefficients)
        return True

    @torch.no_grad()
    def _lean_prox_(self) -> bool:
        """The proximal step without the kernel for the element-wise penalties (L1, L2,
        elastic net with float strengths) on CPU float32/float64 tensors: the step computed
        from the optimizer's state as the kernel computes it, applied by
        :func:`_lean_elementwise_prox_` into cached buffers; whether it ran.

        All or nothing, like :meth:`_fused_prox_`; a group lasso, a step count that is not a
        CPU tensor (``capturable``/``fused`` Adam: reading it would synchronize the host), and
        every case the kernel does not cover take ``effective_steps()`` then ``reg.prox_``.
        """
        if not self._rules or torch.compiler.is_compiling():
            return False
        calls = self._covered_calls(groups=False)
        if calls is None:
            return False
        plans = []
        for updated, (moments, counts, lr, eps, beta2, lr_decay), form, key in calls:
            rates = _step_rates(counts, len(updated), lr, eps, beta2, lr_decay, bool(moments))
            if rates is None:
                return False
            plans.append((updated, moments, rates, form, key))
        for updated, moments, (lrs, epss), (l1, l2, _, _, _), key in plans:
            scratch = self._scratch.get(key)
            if scratch is None:
                scratch = self._scratch[key] = (Scratch(), Scratch())
            _lean_elementwise_prox_(updated, moments, lrs, epss, l1, l2,
                                    scratch[0].like(updated) if moments else None,
                                    scratch[1].like(updated), self._constants(updated[0]))
        return True

    def _constants(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """0-d ``1`` and ``0`` in ``like``'s dtype and device, made once."""
        key = (like.dtype, like.device)
        constants = self._scalars.get(key)
        if constants is None:
            constants = self._scalars[key] = (torch.ones((), dtype=like.dtype, device=like.device),
                                              torch.zeros((), dtype=like.dtype,
                                                          device=like.device))
        return constants

    def _covered_calls(self, *, groups: bool) -> list[tuple] | None:
        """``(updated params, step arguments, penalty form, (rule, group) index)`` per rule and
        param group for a proximal step computed from the optimizer's state, or ``None`` when a
        rule or a parameter is one neither the kernel nor the lean step covers (``groups``:
        whether a group lasso term is covered)."""
        groups_ = self.optimizer.param_groups
        if sum(len(g["params"]) for g in groups_) != self._optimized:
            self._members = self._locate()  # add_param_group
        state = self.optimizer.state
        calls = []
        for r, rule in enumerate(self._rules):
            form = _kernel_form(rule.penalty) if not rule.sharded else None
            if form is None or (not groups and form[2] != 0.0):
                return None
            for index, params in rule.members:
                updated = [p for p in params if p.grad is not None and p.requires_grad
                           and (not self._stateful or state.get(p))]
                if not updated:
                    continue
                if not all(p.dtype in _KERNEL_DTYPES and p.is_cpu and type(p) in _PLAIN
                           for p in updated):
                    return None
                step = self._kernel_step(groups_[index], updated)
                if step is None:
                    return None
                calls.append((updated, step, form, (r, index)))
        return calls

    def _kernel_step(self, group: dict[str, Any], params: list[Tensor]) -> tuple | None:
        """The kernel's step arguments for one param group, ``(moments, step counts, lr, eps,
        β₂, lr_decay)`` (see ``prox_step`` in ``kernel.cpp``), or ``None`` when the group is one
        the kernel does not cover (a tensor ``lr``; centered RMSprop's element-wise step)."""
        lr = group["lr"]
        if isinstance(lr, Tensor):
            return None
        family, state = self._family, self.optimizer.state
        if family is SGD:
            momentum = _momentum(group)
            if momentum != 0.0:
                lr = lr * (1.0 - float(group["dampening"])) / (1.0 - momentum)
            return [], [], lr, 0.0, 0.0, 0.0
        if family is RMSprop:
            lr = lr / (1.0 - _momentum(group))
            if not self.preconditioned:
                return [], [], lr, 0.0, 0.0, 0.0
            if group["centered"]:
                return None
            return ([state[p]["square_avg"] for p in params], [], lr, float(group["eps"]), 0.0,
                    0.0)
        if family is Adagrad:
            lr_decay = float(group["lr_decay"])
            counts = [state[p]["step"] for p in params] if lr_decay != 0.0 else []
            moments = [state[p]["sum"] for p in params] if self.preconditioned else []
            return moments, counts, lr, float(group["eps"]), 0.0, lr_decay
        if not self.preconditioned:  # Adam, AdamW
            return [], [], lr, 0.0, 0.0, 0.0
        key = "max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"
        return ([state[p][key] for p in params], [state[p]["step"] for p in params], lr,
                float(group["eps"]), float(group["betas"][1]), 0.0)

    def _check_groups(self) -> None:
        """Refuse what would make the proximal step wrong, before the optimizer steps."""
        for index, group in enumerate(self.optimizer.param_groups):
            if group.get("maximize", False):
                raise ValueError(f"Invalid maximize value: True in param group {index} (the "
                                 f"proximal step minimizes; negate the loss instead)")
            _momentum(group)

    # -- effective steps -----------------------------------------------------------------------
    @torch.no_grad()
    def effective_steps(self) -> list[Step]:
        """The step size of each penalized parameter (``regularizer.parameters()`` order) at the
        current learning rates and optimizer state: a float (or a 0-d tensor when the group's
        ``lr`` or step count enters as a tensor), or a tensor of the parameter's shape for
        element-wise steps; 0 for a parameter the optimizer does not update at this step (no
        gradient, or frozen and left out of the optimizer)."""
        groups = self.optimizer.param_groups
        if sum(len(g["params"]) for g in groups) != self._optimized:
            self._members = self._locate()  # add_param_group
        steps: list[Step] = [0.0] * self._penalized
        # One batch per param group: the step count, bias corrections and denominators are
        # computed with a few fused ops per group, not per parameter.
        for index, positions in self._members.items():
            group = groups[index]
            state = self.optimizer.state
            updated = [(k, p) for k, p in positions
                       if p.grad is not None and (not self._stateful or state.get(p))]
            if not updated:
                continue
            for (k, _), step in zip(updated, self._group_steps(group, [p for _, p in updated])):
                steps[k] = step
        return steps

    def _locate(self) -> dict[int, list[tuple[int, Tensor]]]:
        """Map each param group to its penalized tensors with their positions in
        ``regularizer.parameters()``; every penalized tensor that is still trainable must be
        optimized (a frozen one may have been left out of the optimizer)."""
        groups = self.optimizer.param_groups
        group_of = {id(p): index for index, group in enumerate(groups) for p in group["params"]}
        members: dict[int, list[tuple[int, Tensor]]] = {}
        missing = []
        penalized = list(self.regularizer.named_parameters())
        for k, (name, p) in enumerate(penalized):
            index = group_of.get(id(p))
            if index is not None:
                members.setdefault(index, []).append((k, p))
            elif p.requires_grad:
                missing.append(name)
        if missing:
            raise ValueError(f"Penalized parameters not updated by the optimizer: "
                             f"{', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''} "
                             f"(give the optimizer every parameter the regularizer penalizes)")
        self._optimized = len(group_of)
        self._penalized = len(penalized)
        self._rules = _rules(self.regularizer, group_of)
        return members

    # Effective steps per optimizer family, for the updated penalized tensors of one group: the
    # steady-state step along the gradient estimate, a float, or the element-wise
    # lr / (√v / scale + ε).
    def _sgd_steps(self, group: dict[str, Any], params: list[Tensor]) -> list[Step]:
        lr, momentum = group["lr"], _momentum(group)
        if momentum != 0.0:
            lr = lr * (1.0 - float(group["dampening"])) / (1.0 - momentum)
        return [lr] * len(params)

    def _adam_steps(self, group: dict[str, Any], params: list[Tensor]) -> list[Step]:
        if not self.preconditioned:
            return [group["lr"]] * len(params)
        states = [self.optimizer.state[p] for p in params]
        key = "max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"
        # √(1 − β₂ᵏ) from the step tensors, in float64 as torch's Adam computes it from the
        # Python number.
        beta2 = float(group["betas"][1])
        scales = [(1.0 - beta2 ** k).sqrt() for k in _step_counts(states)]
        return _elementwise([s[key] for s in states], scales, float(group["eps"]),
                            group["lr"])

    def _adagrad_steps(self, group: dict[str, Any], params: list[Tensor]) -> list[Step]:
        states = [self.optimizer.state[p] for p in params]
        lr, lr_decay = group["lr"], float(group["lr_decay"])
        if lr_decay == 0.0:
            lrs: list[Any] = [lr] * len(params)
        else:
            lrs = [lr / (1.0 + (k - 1.0) * lr_decay) for k in _step_counts(states)]
        if not self.preconditioned:
            return lrs
        return _elementwise([s["sum"] for s in states], None, float(group["eps"]), lrs)

    def _rmsprop_steps(self, group: dict[str, Any], params: list[Tensor]) -> list[Step]:
        lr = group["lr"] / (1.0 - _momentum(group))
        if not self.preconditioned:
            return [lr] * len(params)
        states = [self.optimizer.state[p] for p in params]
        if group["centered"]:
            v = [s["square_avg"].addcmul(s["grad_avg"], s["grad_avg"], value=-1) for s in states]
        else:
            v = [s["square_avg"] for s in states]
        return _elementwise(v, None, float(group["eps"]), lr)

    def __repr__(self) -> str:
        state = "attached to" if self.attached else "removed from"
        return (f"ProxHandle({state} {type(self.optimizer).__name__}, {self.regularizer!r}, "
                f"preconditioned={self.preconditioned})")


def _family(optimizer: Optimizer) -> type[Optimizer]:
    for cls in _PRECONDITIONED:
        if isinstance(optimizer, cls):
            return cls
    names = ", ".join(cls.__name__ for cls in _PRECONDITIONED)
    raise TypeError(f"attach_prox does not know the effective step of "
                    f"{type(optimizer).__name__} (supported: {names} and AdamW); call "
                    f"reg.prox_(step) yourself after optimizer.step() with the step size that "
                    f"optimizer takes")


class _Rule(NamedTuple):
    """One rule of the regularizer as the fused proximal step sees it: its penalty, whether its
    parameters are DTensors, and its parameters per optimizer param group (by index)."""

    penalty: Penalty
    sharded: bool
    members: list[tuple[int, list[Tensor]]]


def _rules(regularizer: Regularizer, group_of: dict[int, int]) -> list[_Rule]:
    """The regularizer's rules with their parameters split by optimizer param group (a frozen
    parameter the optimizer does not hold is left out: it is never stepped)."""
    rules = []
    for rule in regularizer._groups:  # the rules' parameters, in reg.parameters() order
        members: dict[int, list[Tensor]] = {}
        for p in rule.params:
            index = group_of.get(id(p))
            if index is not None:
                members.setdefault(index, []).append(p)
        rules.append(_Rule(rule.penalty, rule.sharded, list(members.items())))
    return rules


_KERNEL_DTYPES = (torch.float32, torch.float64)
_FAMILY_CODES = {SGD: 0, Adam: 1, Adagrad: 2, RMSprop: 3}  # prox.cpp's Family
_is_compiling = torch.compiler.is_compiling  # bound once: the hook runs on cold caches
# prox_call's ``kinds``: the term classes it covers (exactly, as _kernel_form does) and the state
# mapping type it reads besides dict (torch's optimizers keep a defaultdict).
_PROX_KINDS = (L1, L2, GroupLasso, collections.defaultdict)
_PLAIN = (Tensor, torch.nn.Parameter)  # not DTensor, not a functorch wrapper, not a subclass
_GROUP_CODES = {None: -1, "rows": 0, "columns": 1, "tensor": 2}


def _kernel_form(penalty: Penalty) -> tuple[float, float, float, str | None, str] | None:
    """``(l1, l2, λ, groups, scale)`` of a penalty that is a sum of L1, L2 and GroupLasso terms
    with float strengths — merged as :meth:`~regtorch.Sum.prox_` merges them — or ``None``
    (``[K]`` strengths, another kind of term: the pure-PyTorch path)."""
    l1 = l2 = lam = 0.0
    grouping, scale = None, "none"
    for term in penalty.terms:
        strength = term.lam
        if isinstance(strength, Tensor):
            return None
        kind = type(term)
        if kind is L1:
            l1 = l1 + strength
        elif kind is L2:
            l2 = l2 + strength
        elif kind is GroupLasso:
            lam = lam + strength
            grouping, scale = term.groups, term.scale
        else:
            return None
    return l1, l2, lam, grouping, scale


def _coefficient(param: Tensor, grouping: str | None, scale: str) -> float:
    """GroupLasso's ``c_g``: √(group size) with ``scale="sqrt"``, else 1."""
    if scale == "none" or grouping is None:
        return 1.0
    size = 1
    for d in group_dims(param, grouping):
        size *= param.shape[d]
    return math.sqrt(size)


def _step_counts(states: Sequence[dict[str, Any]]) -> list[Tensor]:
    """The step count ``k`` of each state as a float64 0-d tensor on its step's device, stacked
    per device (a few ops per group; no host synchronization)."""
    steps = [torch.as_tensor(s["step"]) for s in states]
    by_device: dict[torch.device, list[int]] = {}
    for i, k in enumerate(steps):
        by_device.setdefault(k.device, []).append(i)
    counts: list[Tensor] = [steps[0]] * len(steps)
    for indices in by_device.values():
        stacked = torch.stack([steps[i] for i in indices]).to(torch.float64)
        for i, k in zip(indices, stacked.unbind()):
            counts[i] = k
    return counts


def _elementwise(v: list[Tensor], scales: list[Tensor] | None, eps: float,
                 lr: Any) -> list[Step]:
    """``lr / (√v / scale + eps)`` with fused kernels, in the order torch's optimizers compute
    their denominators; ``lr`` one value for all, or one per tensor."""
    denominators = torch._foreach_sqrt(v)
    if scales is not None:
        torch._foreach_div_(denominators, scales)
    torch._foreach_add_(denominators, eps)
    torch._foreach_reciprocal_(denominators)
    if isinstance(lr, list):
        for d, lr_i in zip(denominators, lr):
            d.mul_(lr_i)
    else:
        torch._foreach_mul_(denominators, lr)
    return list(denominators)


def _step_rates(counts: Sequence[Any], n: int, lr: float, eps: float, beta2: float,
                lr_decay: float, preconditioned: bool) -> tuple[list[float], list[float]] | None:
    """Per tensor, the numerator ``lr_k·s`` and the ε term ``ε·s`` of the effective step
    ``t = lr_k·s / (√v + ε·s)`` (``s = √(1 − β₂ᵏ)`` for Adam, else 1; ``lr_k`` Adagrad's
    decayed lr, else ``lr``), from the step counts ``k`` the kernel reads (``_kernel_step``'s
    ``counts``), as floats in float64 as torch's optimizers compute them; ``None`` when a count
    is a tensor off the CPU (reading it would synchronize the host)."""
    if not counts or (lr_decay == 0.0 and not (preconditioned and beta2 != 0.0)):
        return [lr] * n, [eps] * n
    lrs, epss = [], []
    for count in counts:
        if isinstance(count, Tensor):
            if not count.is_cpu:
                return None
            count = count.item()
        k = float(count)
        lr_k = lr / (1.0 + (k - 1.0) * lr_decay) if lr_decay != 0.0 else lr
        s = math.sqrt(1.0 - beta2 ** k) if preconditioned and beta2 != 0.0 else 1.0
        lrs.append(lr_k * s)
        epss.append(eps * s)
    return lrs, epss


def _lean_elementwise_prox_(params: Sequence[Tensor], moments: Sequence[Tensor],
                            lrs: Sequence[float], epss: Sequence[float], l1: float, l2: float,
                            denominators: Sequence[Tensor] | None, others: Sequence[Tensor],
                            constants: tuple[Tensor, Tensor]) -> None:
    r"""The proximal step of :math:`l_1‖w‖_1 + \frac{l_2}{2}‖w‖^2` in place, with the
    optimizer's step ``t = lrs[i] / (√v + epss[i])`` per element (``moments`` the ``v``'s) or the
    scalar ``t = lrs[i]`` (no moments), through the buffers ``denominators`` and ``others``
    (nothing is allocated):

    .. math::  d = \sqrt{v} + ε s, \qquad τ = \frac{l_1 \, lr\, s}{d}, \qquad
               w ← \mathrm{clamp}(0, w − τ, w + τ) = w − \mathrm{clamp}(w, −τ, τ),
               \qquad w ← \frac{w}{1 + l_2\, lr\, s / d}

    ``w − τ`` and ``w + τ`` are each one ``addcdiv`` (τ itself is never written) and the median
    of them and 0 one ``clamp``: the soft threshold by an element-wise τ takes three passes
    after the denominator's two (``√v`` and ``+ ε·s``), where materializing ``t``, ``τ`` and
    ``−τ`` then ``w − clamp(w, −τ, τ)`` took nine. The two forms are equal element for element:
    where |w| > τ, ``w ∓ τ`` rounds as ``w − clamp(w, −τ, τ)`` does; elsewhere the result is an
    exact 0. With a scalar step: ``clamp`` into a buffer, then one subtraction.
    """
    one, zero = constants  # 0-d, in the parameters' dtype
    for i, p in enumerate(params):
        other = others[i]
        if not moments:
            t = lrs[i]
            if l1 != 0.0:
                torch.clamp(p, -(t * l1), t * l1, out=other)
                p.sub_(other)
            if l2 != 0.0:
                p.div_(1.0 + t * l2)
            continue
        d = denominators[i]
        torch.sqrt(moments[i], out=d)
        d.add_(epss[i])
        if l1 != 0.0:
            tau = lrs[i] * l1
            torch.addcdiv(p, one, d, value=-tau, out=other)  # w − τ
            p.addcdiv_(one, d, value=tau)  # w + τ
            torch.clamp(zero, other, p, out=p)  # the median of w − τ, 0 and w + τ
        if l2 != 0.0:
            torch.addcdiv(one, one, d, value=lrs[i] * l2, out=other)  # 1 + t·l2
            p.div_(other)


def _momentum(group: dict[str, Any]) -> float:
    momentum = float(group.get("momentum", 0.0))
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum value: {momentum} (the effective step "
                         f"lr/(1-momentum) needs 0 <= momentum < 1)")
    return momentum


_SHARED = ("param_groups", "state", "defaults")


def _grouped(penalty: Penalty) -> bool:
    """Whether ``penalty`` shrinks groups as one (:class:`~regtorch.GroupLasso`,
    :class:`~regtorch.ChannelLasso`): under an element-wise step each group then takes the mean
    of its elements' steps."""
    from regtorch.structure.penalty import ChannelLasso  # structure imports the penalties

    return isinstance(penalty, ChannelLasso) or any(isinstance(t, GroupLasso)
                                                    for t in penalty.terms)


class Proximal(Optimizer):
    """An optimizer whose ``step()`` runs the wrapped optimizer's step, then the proximal step.

    A thin convenience over :func:`attach_prox` for code that wants one object:
    ``Proximal(optimizer, reg)`` attaches the proximal step to ``optimizer`` (so
    ``optimizer.step()`` runs it too) and is itself a :class:`torch.optim.Optimizer` sharing the
    wrapped optimizer's ``param_groups``, ``state`` and ``defaults``: LR schedulers,
    ``ReduceLROnPlateau`` and ``GradScaler.step`` accept either. ``zero_grad``,
    ``add_param_group``, ``state_dict`` and ``load_state_dict`` are the wrapped optimizer's (the
    regularizer's strengths have their own ``state_dict``). When a framework owns the optimizer,
    use :func:`attach_prox` on it instead.

    Args:
        {args}

    Raises:
        {raises}

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
        >>> optimizer.effective_steps()
        [0.1]
        >>> bool((model.weight == 0).any())
        True
    """

    def __init__(self, optimizer: Optimizer, regularizer: Regularizer, *,
                 preconditioned: bool | None = None) -> None:
        self.handle = attach_prox(optimizer, regularizer, preconditioned=preconditioned)
        # torch's own __init__ builds this object's hook tables (the groups, state and defaults
        # it sets aside are dropped: from here on they are the wrapped optimizer's, read through
        # the properties below, which also follow its load_state_dict replacing them).
        super().__init__([p for g in optimizer.param_groups for p in g["params"]], {})
        self.optimizer = optimizer
        self.regularizer = regularizer
        self.preconditioned = self.handle.preconditioned
        for name in _SHARED:
            self.__dict__.pop("_own_" + name, None)

    # -- the wrapped optimizer's state, shared ---------------------------------------------------
    param_groups = property(lambda self: self._shared("param_groups"),
                            lambda self, value: self._share("param_groups", value))
    state = property(lambda self: self._shared("state"),
                     lambda self, value: self._share("state", value))
    defaults = property(lambda self: self._shared("defaults"),
                        lambda self, value: self._share("defaults", value))

    def _shared(self, name: str) -> Any:
        if "optimizer" in self.__dict__:
            return getattr(self.optimizer, name)
        return self.__dict__["_own_" + name]  # inside torch's __init__

    def _share(self, name: str, value: Any) -> None:
        if "optimizer" in self.__dict__:
            setattr(self.optimizer, name, value)
        else:
            self.__dict__["_own_" + name] = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "optimizer"):  # torch's __init__, before the groups are shared
            super().add_param_group(param_group)
            return
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Run the wrapped optimizer's step (which runs the attached proximal step). torch's
        ``Optimizer.__init__`` wraps this method so that hooks registered on this object run.

        Returns:
            What the wrapped optimizer's ``step`` returns (the closure's loss, if given).
        """
        return self.optimizer.step(closure) if closure is not None else self.optimizer.step()

    def effective_steps(self) -> list[Step]:
        """:meth:`ProxHandle.effective_steps` of the attached proximal step."""
        return self.handle.effective_steps()

    def __repr__(self) -> str:
        inner = "\n".join("    " + line for line in repr(self.optimizer).splitlines())
        return (f"Proximal(\n{inner},\n    {self.regularizer!r},\n"
                f"    preconditioned={self.preconditioned}\n)")


if Proximal.__doc__:
    Proximal.__doc__ = Proximal.__doc__.format(args=_ARGS_DOC, raises=_RAISES_DOC)
