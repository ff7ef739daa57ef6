r"""Constraints: Keras' weight constraints, projected onto a model's parameters after each step.

A constraint is not a penalty: it adds nothing to the loss and nothing to the gradient. After the
optimizer has moved the weights, it puts them back into a set — norms at most ``c``
(:class:`MaxNorm`), norms equal to 1 (:class:`UnitNorm`), norms within ``[a, b]``
(:class:`MinMaxNorm`), non-negative entries (:class:`NonNeg`) — exactly as Keras does after every
update for a layer's ``kernel_constraint``. The formulas are those of Keras 3, ``ε = 10⁻⁷`` being
Keras' ``backend.epsilon()``:

- ``MaxNorm(c)``: :math:`w_u ← w_u · \min(‖w_u‖, c) / (ε + ‖w_u‖)`;
- ``UnitNorm()``: :math:`w_u ← w_u / (ε + ‖w_u‖)`;
- ``MinMaxNorm(a, b, r)``: :math:`w_u ← w_u · (r·\mathrm{clip}(‖w_u‖, a, b) + (1 − r)·‖w_u‖)
  / (ε + ‖w_u‖)`;
- ``NonNeg()``: :math:`w ← \max(w, 0)`, element-wise.

Norms are taken per output unit ``u`` (see :class:`MaxNorm`). A :class:`Constraint` acts in place
on a list of tensors (``apply_``); :class:`Constraints` binds constraints to a model's parameters
with the same selection as :class:`~regtorch.Regularizer` (default :data:`~regtorch.WEIGHTS`)::

    constraints = Constraints(model, MaxNorm(3.0))
    for x, y in loader:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        constraints.apply_()  # right after the step: the weights the next batch sees obey it
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from regtorch._reduce import accumulation_dtype
from regtorch._table import Row, binding_summary, binding_table
from regtorch.selection import bind, stores_in_out

__all__ = ["Constraint", "Constraints", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"]

logger = logging.getLogger("regtorch")

# Keras divides by ε + ‖w_u‖ with its backend epsilon 1e-7.
_KERAS_EPSILON = 1e-7

# Shared by the docstrings of the norm constraints (spliced in at "{units}").
_UNITS_DOC = """Norms are Euclidean, one per output unit: over every dim but dim 0. A unit is a row
    ``w[i]`` of a Linear weight ``(out, in)``, a filter ``w[o]`` of a conv weight
    ``(out, in/groups, *kernel)``; each element of a 1-D tensor (a bias, a norm layer's gain) is
    its own unit, so its norm is ``|w_i|``; a 0-d tensor is one unit. Keras stores a Dense kernel
    as ``(in, out)`` and a Conv2D kernel as ``(kh, kw, in, out)``, and its default ``axis`` (0,
    resp. ``[0, 1, 2]``) takes the norm over the inputs of each output unit: the same norm as
    here on the equivalent torch layer. (A ``ConvTranspose`` weight is stored
    ``(in, out/groups, *kernel)``: there dim 0 is the input channel.) Hugging Face's ``Conv1D``
    (GPT-2) stores its weight ``(in, out)``: :class:`Constraints` bound to a model knows it and
    takes the norms over its output units (the columns) as for ``nn.Linear``; ``apply_`` on bare
    tensors cannot, and takes dim 0. Norms are computed in the tensor's dtype, half types in
    float32; a zero unit stays exactly zero."""


def _splice_units_doc(cls: type) -> type:
    cls.__doc__ = cls.__doc__.replace("{units}", _UNITS_DOC)
    return cls


# --------------------------------------------------------------------------------------------
# Functional kernels on lists of tensors (in place; the caller disables autograd).
# --------------------------------------------------------------------------------------------


def _unit_norms(p: Tensor) -> Tensor:
    """‖w_u‖₂ per output unit, shape ``[units]`` (one unit for a 0-d tensor)."""
    rows = p.reshape(p.shape[0] if p.ndim else 1, -1)
    return torch.linalg.vector_norm(rows, dim=1, dtype=accumulation_dtype(p.dtype))


def _rescale_units_(params: Sequence[Tensor], min_value: float, max_value: float,
                    rate: float) -> None:
    """``w_u ← w_u · (rate·clip(‖w_u‖, min, max) + (1 − rate)·‖w_u‖) / (ε + ‖w_u‖)``.

    One kernel for the three norm constraints: ``MaxNorm(c)`` is ``(0, c, 1)`` and ``UnitNorm`` is
    ``(1, 1, 1)`` (``clip(n, 1, 1) = 1``). A zero unit gets a finite factor and stays zero.
    """
    for p in params:
        if p.numel() == 0:  # nothing to rescale (and no unit to reshape into)
            continue
        norms = _unit_norms(p)
        factor = norms.clamp(min_value, max_value)
        if rate != 1.0:  # Keras' blend; with rate 1 it is the clipped norm itself
            factor.mul_(rate).add_(norms, alpha=1.0 - rate)
        factor.div_(norms.add_(_KERAS_EPSILON))
        p.mul_(factor.reshape(p.shape[:1] + (1,) * (p.ndim - 1)))  # 0-d: shape ()


def _clamp_nonnegative_(params: Sequence[Tensor]) -> None:
    """``w ← max(w, 0)``: one fused kernel over every tensor."""
    if params:
        torch._foreach_clamp_min_(list(params), 0.0)


# --------------------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------------------


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Invalid {name} value: {value!r} (expected a real number)")
    return float(value)


def _max_value(value: object) -> float:
    value = _real(value, "max_value")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Invalid max_value value: {value!r} (must be finite and > 0)")
    return value


# --------------------------------------------------------------------------------------------
# Constraint objects.
# --------------------------------------------------------------------------------------------


class Constraint:
    """Base class of the constraints: a projection applied in place after the optimizer step.

    Subclasses implement ``_apply_(params)`` on a list of tensors; :meth:`apply_` checks the
    argument and disables autograd around it.
    """

    @torch.no_grad()
    def apply_(self, params: Iterable[Tensor]) -> None:
        """Project every tensor of ``params`` in place (autograd off; zero-size tensors untouched).

        Args:
            params: the tensors, e.g. ``[layer.weight]`` (a list: a bare tensor raises, since
                iterating it would visit its rows).

        Raises:
            TypeError: ``params`` is a single tensor.
        """
        if isinstance(params, Tensor):
            raise TypeError(f"Invalid params: a single tensor of shape {tuple(params.shape)} "
                            f"(expected a list of tensors, e.g. [tensor])")
        self._apply_(list(params))

    def _apply_(self, params: list[Tensor]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@_splice_units_doc
class MaxNorm(Constraint):
    r"""Keras ``MaxNorm``: caps the norm of every output unit (max-norm regularization).

    .. math::  w_u ← w_u \cdot \frac{\min(‖w_u‖_2,\ c)}{ε + ‖w_u‖_2}, \qquad ε = 10^{-7}

    {units}

    As in Keras, every unit is multiplied by the factor: one within the bound is scaled by
    ``‖w_u‖/(ε + ‖w_u‖)``, a relative change of about ``ε/‖w_u‖``. Max-norm is the constraint
    Srivastava et al. (2014, "Dropout: a simple way to prevent neural networks from overfitting",
    §5.1) pair with dropout.

    Args:
        max_value: the largest norm ``c`` > 0 a unit may have (Keras' default 2).

    Raises:
        TypeError: ``max_value`` is not a real number.
        ValueError: ``max_value`` is ≤ 0, NaN or infinite.

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # row norms 5 and 0.5
        >>> MaxNorm(1.0).apply_([w]); w
        tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]])
    """

    def __init__(self, max_value: float = 2.0) -> None:
        self.max_value = _max_value(max_value)

    def _apply_(self, params: list[Tensor]) -> None:
        _rescale_units_(params, 0.0, self.max_value, 1.0)

    def __repr__(self) -> str:
        return f"MaxNorm(max_value={self.max_value!r})"


@_splice_units_doc
class UnitNorm(Constraint):
    r"""Keras ``UnitNorm``: every output unit to norm 1.

    .. math::  w_u ← \frac{w_u}{ε + ‖w_u‖_2}, \qquad ε = 10^{-7}

    {units}

    A unit's norm afterwards is ``‖w_u‖/(ε + ‖w_u‖)``: 1 up to ``ε/‖w_u‖``; a zero unit stays 0.

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
        >>> UnitNorm().apply_([w]); w
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
    """

    def _apply_(self, params: list[Tensor]) -> None:
        _rescale_units_(params, 1.0, 1.0, 1.0)


@_splice_units_doc
class MinMaxNorm(Constraint):
    r"""Keras ``MinMaxNorm``: moves the norm of every output unit into ``[min_value, max_value]``.

    .. math::  w_u ← w_u \cdot \frac{r \cdot \mathrm{clip}(‖w_u‖_2, a, b) + (1 − r)‖w_u‖_2}
               {ε + ‖w_u‖_2}, \qquad ε = 10^{-7}

    {units}

    With ``rate`` ``r = 1`` the norm is clipped at once; with ``r < 1`` it moves a fraction ``r``
    of the way to the interval per call (Keras: "for a rate < 1, the constraint is applied
    gradually"). A zero unit stays zero even when ``min_value > 0``.

    Args:
        min_value: the smallest norm ``a`` ≥ 0 (Keras' default 0).
        max_value: the largest norm ``b`` > 0, ``b ≥ a`` (Keras' default 1).
        rate: ``r`` in ``(0, 1]`` (Keras' default 1).

    Raises:
        TypeError: an argument is not a real number.
        ValueError: ``min_value`` < 0 or NaN; ``max_value`` ≤ 0, NaN or infinite;
            ``max_value < min_value``; ``rate`` outside ``(0, 1]`` or NaN.

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # row norms 5 and 0.5
        >>> MinMaxNorm(1.0, 2.0, rate=0.5).apply_([w]); w  # norms 3.5 and 0.75
        tensor([[2.1000, 2.8000],
                [0.4500, 0.6000]])
    """

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0,
                 rate: float = 1.0) -> None:
        min_value = _real(min_value, "min_value")
        if not min_value >= 0:
            raise ValueError(f"Invalid min_value value: {min_value!r} (must be >= 0)")
        max_value = _max_value(max_value)
        if max_value < min_value:
            raise ValueError(f"Invalid max_value value: {max_value!r} (must be >= "
                             f"min_value={min_value!r})")
        rate = _real(rate, "rate")
        if not 0 < rate <= 1:
            raise ValueError(f"Invalid rate value: {rate!r} (must be in (0, 1])")
        self.min_value = min_value
        self.max_value = max_value
        self.rate = rate

    def _apply_(self, params: list[Tensor]) -> None:
        _rescale_units_(params, self.min_value, self.max_value, self.rate)

    def __repr__(self) -> str:
        return (f"MinMaxNorm(min_value={self.min_value!r}, max_value={self.max_value!r}, "
                f"rate={self.rate!r})")


class NonNeg(Constraint):
    r"""Keras ``NonNeg``: negative entries to zero, element-wise.

    .. math::  w ← \max(w, 0)

    Keras writes ``w · (w ≥ 0)``: the same values (NaN stays NaN, ``-0.0`` stays ``-0.0``). One
    fused ``torch._foreach_clamp_min_`` over every tensor.

    Example:
        >>> w = torch.tensor([0.5, -2.0, 0.0])
        >>> NonNeg().apply_([w]); w
        tensor([0.5000, 0.0000, 0.0000])
    """

    def _apply_(self, params: list[Tensor]) -> None:
        _clamp_nonnegative_(params)


# --------------------------------------------------------------------------------------------
# Constraints bound to a model.
# --------------------------------------------------------------------------------------------


@dataclass
class _Group:
    """One rule's constraint and the parameters it claimed."""

    label: str
    constraint: Constraint
    names: list[str]
    params: list[Tensor]
    in_out: list[bool]  # stored (in, out): constrained through the transpose


class Constraints:
    """Constraints bound to a model's parameters; :meth:`apply_` projects them in place.

    Call ``constraints.apply_()`` right after ``optimizer.step()``, every step, as Keras does.
    With a proximal step — ``reg.prox_(step)``, or the :class:`~regtorch.Proximal` optimizer
    wrapper, whose ``prox.step()`` is the optimizer step followed by the proximal step — call it
    after that (after ``prox.step()``): the constraint is the last thing that touches the weights,
    so they obey it when the next batch sees them.

    Selection is that of :class:`~regtorch.Regularizer` and happens once, at construction (see
    :mod:`regtorch.selection`): frozen parameters are never selected, and a parameter frozen
    later (``requires_grad=False``) is skipped by :meth:`apply_`.

    Args:
        model: the model (``DataParallel``/``DistributedDataParallel`` and ``torch.compile``
            wrappers are looked through: names are those of the unwrapped model).
        rules: a single :class:`Constraint`, applied to :data:`~regtorch.WEIGHTS`; or rules, a
            dict or a list of ``(selector, constraint or None)`` pairs: every trainable parameter
            goes to the first rule whose selector matches it; ``None`` leaves it unconstrained;
            parameters no rule matches are not constrained; a rule left with no parameter is an
            error.

    Raises:
        TypeError: a rule's value is not a constraint or ``None``, or a selector is invalid.
        ValueError: a rule matches no trainable parameter.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 1))
        >>> constraints = Constraints(model, {"2.*": NonNeg(), WEIGHTS: MaxNorm(2.0)})
        >>> print(constraints)
        Constraints: 3 tensors (16 elements) constrained, 3 tensors (9 elements) not
          parameter  shape   rule          constraint
          2.weight   (1, 3)  named('2.*')  NonNeg()
          2.bias     (1,)    named('2.*')  NonNeg()
          0.weight   (3, 4)  WEIGHTS       MaxNorm(max_value=2.0)
          not constrained: 0.bias, 1.weight, 1.bias
        >>> with torch.no_grad():
        ...     _ = model[0].weight.fill_(3.0)  # row norms 6
        >>> constraints.apply_()
        >>> model[0].weight.detach().norm(dim=1)
        tensor([2., 2., 2.])
    """

    def __init__(self, model: nn.Module, rules: Constraint | Any) -> None:
        self._all, bound = bind(model, rules, Constraint, "a regtorch constraint or None")
        # A weight stored (in, out) (transformers' Conv1D) is constrained through its transpose,
        # so that units are output units there too.
        self._groups = [_Group(label, constraint, [i.name for i in got], [i.param for i in got],
                               [i.tensor_name == "weight" and stores_in_out(i.module)
                                for i in got])
                        for label, _, constraint, got in bound]
        logger.info("regtorch: %s", binding_summary(self._rows(),
                                                    [(i.name, i.param) for i in self._all],
                                                    "constrained"))

    @torch.no_grad()
    def apply_(self) -> None:
        """Apply every rule's constraint in place to its parameters (those still trainable)."""
        for group in self._groups:
            # The transposed view is taken here, not stored: it follows a parameter whose data
            # is replaced (model.to(...)).
            params = [p.T if transposed else p
                      for p, transposed in zip(group.params, group.in_out) if p.requires_grad]
            if params:
                group.constraint.apply_(params)

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """(name, tensor) of every constrained parameter, once each, in rule order."""
        for group in self._groups:
            yield from zip(group.names, group.params)

    # -- printing ----------------------------------------------------------------------------
    def _rows(self) -> list[Row]:
        return [(name, p, g.label, g.constraint) for g in self._groups
                for name, p in zip(g.names, g.params)]

    def __str__(self) -> str:
        return binding_table("Constraints", "constrained", "constraint", self._rows(),
                             [(i.name, i.param) for i in self._all])

    def __repr__(self) -> str:
        rules = ", ".join(f"{g.label}: {g.constraint!r}" for g in self._groups)
        return f"Constraints({{{rules}}})"
