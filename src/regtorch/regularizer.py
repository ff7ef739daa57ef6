"""The Regularizer: penalties bound to a model's parameters, applied three ways with one meaning.

1. As a loss term (autograd, any optimizer; the printed loss includes the penalty)::

       loss = criterion(model(x), y) + reg()

2. As a fused gradient (fast): after ``loss.backward()``, ``reg.add_grad_()`` adds ∇R into ``.grad``
   with ``torch._foreach_*`` kernels — the same gradients as (1) at a fraction of the cost —
   and returns R's value when asked (``value=True``, an extra pass).

3. As a proximal step (exact sparsity): after ``optimizer.step()``, ``reg.prox_(step)`` with the
   optimizer's *effective* step size: ``lr`` for plain SGD, ``lr/(1−μ)`` for heavy-ball momentum μ,
   ``lr/(√v̂+ε)`` per element for Adam. L1 and group lasso then give exact zeros.

Selection happens once, at construction (see :mod:`regtorch.selection`). A parameter frozen later
(``requires_grad=False``) is no longer penalized in any mode: it is left out of the value, gets no
gradient and no proximal step.

DTensor parameters (FSDP2 ``fully_shard``, tensor parallel; build the Regularizer *after*
sharding, like the optimizer) work in all three modes: values are global on every rank, computed
from the local shards with one all-reduce of partial sums per call; gradients and proximal steps
act on the local shards with global group norms (see ``docs/distributed.md``).

With mixed precision (``torch.amp.GradScaler``) the gradients are scaled until ``unscale_``: call
``scaler.unscale_(optimizer)`` first, then ``reg.add_grad_()``, then ``scaler.step(optimizer)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from regtorch import _distributed
from regtorch._fused import penalty_term
from regtorch._fused.loss import node_term_for
from regtorch._strength import Strength
from regtorch._table import Row, binding_summary, binding_table
from regtorch.penalties import GroupLasso, Orthogonal, Penalty, Scratch
from regtorch.selection import Selector, bind, bound_tensor, stores_in_out

__all__ = ["Regularizer"]

logger = logging.getLogger("regtorch")

@dataclass
class _Group:
    """One rule's penalty and the parameters it claimed."""

    label: str
    selector: Selector
    penalty: Penalty
    names: list[str]
    params: list[Tensor]
    scratch: Scratch = field(default_factory=Scratch)
    sharded: bool = False

    def __post_init__(self) -> None:
        # DTensor parameters (FSDP2, tensor parallel) go through regtorch._distributed.
        self.sharded = _distributed.uses_dtensors(self.params)
        if self.sharded:
            try:
                _distributed.check(self.penalty, self.params)
            except (TypeError, ValueError) as error:
                raise type(error)(f"Rule {self.label} -> {self.penalty!r}: {error}") from None

    def trainable(self) -> list[Tensor]:
        return [p for p in self.params if p.requires_grad]


class Regularizer:
    """Penalties bound to a model's parameters.

    Args:
        model: the model (wrappers from ``DistributedDataParallel`` and ``torch.compile`` are
            looked through: names are those of the unwrapped model).
        penalty_or_rules: a single penalty, applied to :data:`~regtorch.WEIGHTS`; or rules, a dict
            or a list of ``(selector, penalty or None)`` pairs: every trainable parameter goes to
            the first rule whose selector matches it; ``None`` leaves it unpenalized; parameters no
            rule matches are not penalized; a rule left with no parameter is an error.
        parameters: tensors to penalize *instead of* the model's own parameters, by name (the
            model then only decides selection) — e.g. the stacked ``[K, ...]`` parameters of K
            copies of the model from :func:`torch.func.stack_module_state`, used with ``[K]``
            strengths.
        as_stored: let ``GroupLasso(groups="rows"/"columns")`` and ``Orthogonal(mode=...)`` act
            on the weights of layers that store them ``(in, out)`` — Hugging Face's ``Conv1D``
            (GPT-2) — with "rows" and "columns" meaning the *stored* tensor's dims 0 and 1 (there:
            input features, resp. output units). By default (``False``) such a rule is refused,
            because on ``nn.Linear`` "rows" are output units and a rule over both kinds of layer
            would silently mean opposite things; write ``"columns"`` for Conv1D's output units in
            a rule of its own with ``as_stored=True``.

    Raises:
        TypeError: for a rule whose value is not a penalty or ``None``, or a bad selector.
        ValueError: for empty rules, a rule matching no parameter, or a penalty that cannot act
            on a parameter (the message names the parameter, its shape and the penalty; a
            rows/columns penalty on a Conv1D weight without ``as_stored=True`` included).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 1))
        >>> reg = Regularizer(model, L2(1e-4))
        >>> [name for name, _ in reg.named_parameters()]
        ['0.weight', '2.weight']
        >>> reg = Regularizer(model, {"2.*": L1(1e-3), WEIGHTS: L2(1e-4)})
        >>> print(reg)
        Regularizer: 3 tensors (16 elements) penalized, 3 tensors (9 elements) not
          parameter  shape   rule          penalty
          2.weight   (1, 3)  named('2.*')  L1(0.001)
          2.bias     (1,)    named('2.*')  L1(0.001)
          0.weight   (3, 4)  WEIGHTS       L2(0.0001)
          not penalized: 0.bias, 1.weight, 1.bias
    """

    def __init__(self, model: nn.Module, penalty_or_rules: Penalty | Any, *,
                 parameters: Mapping[str, Tensor] | None = None,
                 as_stored: bool = False) -> None:
        if not isinstance(as_stored, bool):
            raise TypeError(f"Invalid as_stored value: {as_stored!r} (expected a bool)")
        self._all, bound = bind(model, penalty_or_rules, Penalty, "a regtorch penalty or None")
        self._groups: list[_Group] = []
        for label, selector, penalty, got in bound:
            tensors = [info.param if parameters is None else bound_tensor(info.name, parameters)
                       for info in got]
            for info, tensor in zip(got, tensors):
                try:
                    penalty.check(tensor)
                    if (not as_stored and info.tensor_name == "weight"
                            and stores_in_out(info.module)):
                        _check_in_out_layout(penalty)
                except ValueError as error:
                    raise ValueError(f"Rule {label} -> {penalty!r} cannot act on parameter "
                                     f"{info.name!r} of shape {tuple(tensor.shape)}: {error}"
                                     ) from None
            self._groups.append(_Group(label, selector, penalty, [i.name for i in got], tensors))
        # loss mode's fast path: one call into the C++ node (one rule, no DTensors)
        single = len(self._groups) == 1 and not self._groups[0].sharded
        self._node_term = node_term_for(self._groups[0].penalty) if single else None
        logger.info("regtorch: %s", binding_summary(self._rows(),
                                                    [(i.name, i.param) for i in self._all],
                                                    "penalized"))

    # -- the three modes ---------------------------------------------------------------------
    def __call__(self) -> Tensor:
        """The penalty R(w), a differentiable 0-d tensor to add to the loss.

        Its dtype is decided at each call from the parameters penalized then: float64 when any
        of them is float64, else float32 — for float16 and bfloat16 parameters too, since the
        penalty is computed in float32 (also under ``torch.autocast``). Adding it to a float32
        loss (what autocast's losses are) keeps float32; adding it to a half-precision loss
        promotes the sum to float32, so the penalty's precision is not rounded away.
        """
        if self._node_term is not None:
            # The fast path: one call into the C++ node, which selects the trainable tensors
            # and returns the value in the loss dtype (None: it cannot take this call).
            term = self._node_term(self._groups[0].params)
            if term is not None:
                return term
        dtype = _loss_dtype(self._groups)
        if len(self._groups) == 1 and not self._groups[0].sharded:
            # one rule: the loss-mode node can return the value in its final dtype (no cast node)
            group = self._groups[0]
            return penalty_term(group.penalty, group.trainable(), dtype, group.scratch).to(dtype)
        return self._value().to(dtype)

    def _value(self) -> Tensor:
        return _sum(self._values())

    def _values(self) -> list[Tensor]:
        """R per rule; the rules on DTensor parameters share one collective per round."""
        sharded = [g for g in self._groups if g.sharded]
        if not sharded:
            return [penalty_term(g.penalty, g.trainable(), scratch=g.scratch)
                    for g in self._groups]
        reduced = iter(_distributed.value([(g.penalty, g.trainable()) for g in sharded]))
        return [next(reduced) if g.sharded else g.penalty.value(g.trainable())
                for g in self._groups]

    @torch.no_grad()
    def add_grad_(self, *, value: bool = False) -> Tensor | None:
        """Add ∇R(w) into each penalized parameter's ``.grad`` (call after ``backward()``).

        Where ``.grad`` is ``None`` it is created, as autograd would for ``loss + reg()``. The
        update uses fused ``torch._foreach_*`` kernels and reusable buffers.

        Args:
            value: also return R(w) (detached; costs an extra pass for L2 and L1).

        Returns:
            R(w) as a detached 0-d float64 tensor when ``value`` is true, else ``None``. With
            DTensor parameters the gradient is added to the local shards (group norms are
            global) and R is the global value on every rank (one all-reduce for the call).
        """
        values, sharded = [], []
        for group in self._groups:
            params, grads = [], []
            for p in group.params:
                if p.requires_grad:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    params.append(p)
                    grads.append(p.grad)
            if group.sharded:
                sharded.append((group.penalty, params, grads))
            else:
                values.append(group.penalty.add_grad_(params, grads, value=value,
                                                      scratch=group.scratch))
        if sharded:
            values.extend(_distributed.add_grad_(sharded, value) or ())
        return _sum(values) if value else None

    @torch.no_grad()
    def prox_(self, step: float | Tensor | Sequence[float | Tensor]) -> None:
        """Proximal step in place: ``w ← prox_{t·R}(w)``, per rule (call after the optimizer step).

        Args:
            step: the step size ``t``: a float for every parameter, or a sequence with one entry
                per parameter of :meth:`parameters` (in that order), each a float or a tensor
                broadcastable to the parameter (element-wise steps, e.g. Adam's ``lr/(√v̂+ε)``).

        With DTensor parameters each rank steps its local shards (a step tensor may be a
        DTensor of the parameter's placements); a group lasso whose groups span shards uses the
        global group norms (one all-reduce for the call).

        Raises:
            TypeError: a penalty has no proximal step (e.g. :class:`~regtorch.Orthogonal`).
            ValueError: ``step`` is negative or has the wrong length.
        """
        steps = self._steps(step)
        start, sharded = 0, []
        for group in self._groups:
            mine = steps[start:start + len(group.params)]
            start += len(group.params)
            kept = [(p, s) for p, s in zip(group.params, mine) if p.requires_grad]
            if group.sharded:
                sharded.append((group.penalty, [p for p, _ in kept], [s for _, s in kept]))
            elif kept:
                group.penalty.prox_([p for p, _ in kept], [s for _, s in kept],
                                    scratch=group.scratch)
        if sharded:
            _distributed.prox_(sharded)

    def _steps(self, step: Any) -> list:
        count = sum(len(g.params) for g in self._groups)
        if isinstance(step, Tensor) and step.ndim == 0:
            step = step.item()
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            if not step >= 0:
                raise ValueError(f"Invalid step value: {step} (must be >= 0)")
            return [float(step)] * count
        if isinstance(step, Sequence) and not isinstance(step, str):
            if len(step) != count:
                raise ValueError(f"Invalid step: {len(step)} entries for {count} penalized "
                                 f"parameters (one per reg.parameters(), in order)")
            return list(step)
        raise TypeError(f"Invalid step: {step!r} (expected a float or a sequence of floats or "
                        f"tensors, one per penalized parameter)")

    # -- inspection --------------------------------------------------------------------------
    @torch.no_grad()
    def value(self) -> Tensor:
        """R(w), detached, as a 0-d float64 tensor (reduced in chunks and added in float64:
        accurate on large float32 models). With DTensor parameters: the global value, the same
        on every rank, from one all-reduce of the local partial sums."""
        return self._value()

    @torch.no_grad()
    def breakdown(self) -> dict[str, Tensor]:
        """R(w) per rule, detached (0-d float64 tensors), keyed by the rule's selector (global
        values with DTensor parameters: one all-reduce for every rule together)."""
        return {g.label: v for g, v in zip(self._groups, self._values())}

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """(name, tensor) of every penalized parameter, once each, in rule order."""
        for group in self._groups:
            yield from zip(group.names, group.params)

    def parameters(self) -> Iterator[Tensor]:
        """The penalized tensors, in the order :meth:`prox_` takes per-parameter steps."""
        for _, tensor in self.named_parameters():
            yield tensor

    @property
    def rules(self) -> list[tuple[Selector, Penalty]]:
        """(selector, penalty) of every rule with a penalty; change strengths through these."""
        return [(g.selector, g.penalty) for g in self._groups]

    # -- strengths ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The kind and strengths of every rule's penalty (tensors cloned).

        ``{"kinds": [...], "strengths": [...]}``, one entry per rule with a penalty, in rule
        order; a kind is the penalty's class name, with its terms for a sum
        (``"Sum(L1, GroupLasso)"``).
        """
        return {"kinds": [_kind(g.penalty) for g in self._groups],
                "strengths": [{k: v.clone() if isinstance(v, Tensor) else v
                               for k, v in g.penalty.strengths().items()}
                              for g in self._groups]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore strengths saved by :meth:`state_dict` (same rules, same penalty kinds).

        Raises:
            ValueError: a different number of rules, or a rule whose penalty kind differs from
                the saved one (e.g. rules saved as ``{L1, L2}`` loaded into ``{L2, L1}``: the
                strengths would silently swap meanings). A ``state_dict`` without ``"kinds"``
                (saved before kinds were recorded) is loaded by position.
        """
        strengths: list[dict[str, Strength]] = list(state_dict.get("strengths", ()))
        if len(strengths) != len(self._groups):
            raise ValueError(f"Invalid state_dict: {len(strengths)} rules saved, this "
                             f"regularizer has {len(self._groups)}")
        kinds = state_dict.get("kinds")
        if kinds is not None:
            for index, (group, saved) in enumerate(zip(self._groups, kinds)):
                if saved != _kind(group.penalty):
                    raise ValueError(f"Invalid state_dict: rule {index} ({group.label}) was "
                                     f"saved as {saved}, this regularizer has "
                                     f"{_kind(group.penalty)} there (same rules, in the same "
                                     f"order, are needed)")
        for group, values in zip(self._groups, strengths):
            group.penalty.load_strengths(values)

    # -- printing ----------------------------------------------------------------------------
    def _rows(self) -> list[Row]:
        return [(name, p, g.label, g.penalty) for g in self._groups
                for name, p in zip(g.names, g.params)]

    def __str__(self) -> str:
        return binding_table("Regularizer", "penalized", "penalty", self._rows(),
                             [(i.name, i.param) for i in self._all])

    def __repr__(self) -> str:
        rules = ", ".join(f"{g.label}: {g.penalty!r}" for g in self._groups)
        return f"Regularizer({{{rules}}})"


def _loss_dtype(groups: Sequence[_Group]) -> torch.dtype:
    """float64 when a trainable penalized parameter is float64, else float32."""
    for group in groups:
        for p in group.params:
            if p.dtype == torch.float64 and p.requires_grad:
                return torch.float64
    return torch.float32


def _check_in_out_layout(penalty: Penalty) -> None:
    """Refuse rows/columns groups on a weight stored ``(in, out)`` (Hugging Face's ``Conv1D``):
    there "rows" would be input features, the opposite of what they mean for ``nn.Linear``."""
    for term in penalty.terms:
        if isinstance(term, GroupLasso):
            keyword, axis = "groups", term.groups
        elif isinstance(term, Orthogonal):
            keyword, axis = "mode", term.mode
        else:
            continue
        if axis in ("rows", "columns"):
            other = "columns" if axis == "rows" else "rows"
            unit = "output units" if axis == "rows" else "input features"
            raise ValueError(
                f"the layer stores its weight as (in, out) (transformers' Conv1D, the transpose "
                f"of nn.Linear's (out, in)), so {axis!r} would not be its {unit}; write "
                f"{keyword}={other!r} for its {unit} in a rule of its own, e.g. "
                f"{{inside(Conv1D): {type(term).__name__}(..., {keyword}={other!r})}}, and "
                f"pass as_stored=True")


def _kind(penalty: Penalty) -> str:
    """What a state_dict records of a penalty: its class name, with the terms of a sum."""
    name = type(penalty).__name__
    terms = penalty.terms
    if len(terms) > 1 and name == "Sum":
        return f"Sum({', '.join(type(t).__name__ for t in terms)})"
    return name


def _sum(values: list[Tensor]) -> Tensor:
    """Sum of 0-d float64 tensors, with no extra op for the usual single rule (a plain ``+``
    chain: an empty rule's CPU zero may meet values on another device)."""
    if not values:
        return torch.zeros((), dtype=torch.float64)
    return sum(values[1:], values[0])
