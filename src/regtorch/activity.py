r"""Activity regularization: penalties on what modules *output*, with Keras 3 semantics.

Keras' ``activity_regularizer`` penalizes a layer's output: for every tensor ``a`` in the
(flattened) outputs of the layer it adds

.. math::  \frac{R(a)}{B}, \qquad B = a.\mathrm{shape}[0]

to the model's loss (``divide_no_nan``: an empty batch adds 0; a 0-d output is not divided). The
division makes the penalty a per-example mean: the same examples in a batch twice as large give
the same value. :class:`ActivityRegularizer` does the same in PyTorch with forward hooks, with
regtorch's penalties (so ``L2(lam)`` is ``lam/2 · Σa²``: Keras ``L2(l)`` is ``L2(2·l)``, Keras
``L1(l)`` is ``L1(l)``) and regtorch's selectors, which here pick modules instead of parameters
(:func:`regtorch.selection.collect_modules`).

The term is collected during the forward pass and taken with :meth:`ActivityRegularizer.loss`::

    act = ActivityRegularizer(model, {nn.ReLU: L1(1e-4)})
    loss = criterion(model(x), y) + act.loss()
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from regtorch._table import format_table
from regtorch.penalties import Penalty
from regtorch.selection import (
    Selector,
    assign,
    collect_modules,
    parse_rules,
    rule_labels,
    unwrap,
)

__all__ = ["ActivityRegularizer", "activity_penalty"]

logger = logging.getLogger("regtorch")


def activity_penalty(penalty: Penalty, activity: Tensor) -> Tensor:
    r"""Keras' activity penalty of one output tensor: :math:`R(a) / B`, ``B = a.shape[0]``.

    The first dimension is taken as the batch, as Keras does; a 0-d tensor is not divided and an
    empty batch gives 0 (Keras' ``divide_no_nan``).

    Args:
        penalty: the penalty ``R``.
        activity: the output tensor ``a`` (floating point).

    Returns:
        A differentiable 0-d tensor in ``a``'s dtype (computed in float64, then cast: adding it to
        a loss keeps the loss's dtype).

    Raises:
        ValueError: the penalty cannot act on a tensor of this shape.

    Example:
        >>> a = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
        >>> activity_penalty(L2(0.1), a)  # 0.1/2 · (9 + 16 + 0 + 1) / 2
        tensor(0.6500)
    """
    penalty.check(activity)
    value = penalty.value([activity])
    if activity.ndim > 0:
        # R of an empty batch is 0: dividing by 1 instead of 0 is divide_no_nan.
        value = value / max(activity.shape[0], 1)
    return value.to(activity.dtype)


def _floating_tensors(output: Any) -> Iterator[tuple[str, Tensor]]:
    """``(path, tensor)`` of every floating-point tensor in a nested output (tensors, tuples,
    lists, dict values), like Keras' ``tree.flatten``; anything else is ignored."""
    if isinstance(output, Tensor):
        if output.is_floating_point():
            yield "", output
    elif isinstance(output, (tuple, list)):
        for index, item in enumerate(output):
            for path, tensor in _floating_tensors(item):
                yield f"[{index}]{path}", tensor
    elif isinstance(output, Mapping):
        for key, item in output.items():
            for path, tensor in _floating_tensors(item):
                yield f"[{key!r}]{path}", tensor


class _Rule:
    """One selected module, with the rule that claimed it."""

    __slots__ = ("label", "module", "name", "penalty", "selector")

    def __init__(self, name: str, module: nn.Module, label: str, selector: Selector,
                 penalty: Penalty) -> None:
        self.name = name
        self.module = module
        self.label = label
        self.selector = selector
        self.penalty = penalty


class ActivityRegularizer:
    r"""Penalties on modules' outputs, collected by forward hooks (Keras 3
    ``activity_regularizer``).

    For every selected module and every floating-point tensor ``a`` in its output (a tensor, or
    tensors nested in tuples, lists and dict values: an ``nn.LSTM``'s ``output``, ``h_n`` and
    ``c_n`` are all penalized, as Keras penalizes every flattened output), a forward pass adds

    .. math::  \frac{R(a)}{a.\mathrm{shape}[0]}

    (see :func:`activity_penalty`) to a running total, which :meth:`loss` returns and resets.
    The first dimension is the batch, as in Keras; torch's recurrent layers put it elsewhere
    (``h_n`` is ``[layers, B, H]``; ``output`` is ``[T, B, H]`` unless ``batch_first=True``), and
    those tensors are then divided by that first dimension all the same.

    A module called twice in one forward pass (a shared layer) is penalized twice, as in Keras.
    Nothing is collected while gradients are off (``torch.no_grad()``, ``torch.inference_mode()``):
    evaluation neither accumulates nor keeps any graph alive. With gradients on, ``model.eval()``
    collects like training (as Keras does). Gradient checkpointing
    (``torch.utils.checkpoint``) reruns the forward pass during ``backward()`` and would fire the
    hooks again: that is not handled; do not checkpoint penalized modules.

    The hooks live as long as this object: :meth:`remove` (or leaving a ``with`` block) removes
    them, and so does dropping the last reference to it (an object nobody can call
    :meth:`loss` on must not keep collecting a graph).

    Args:
        model: the model (wrappers from ``DistributedDataParallel`` and ``torch.compile`` are looked
            through; hooks go on the unwrapped modules, names are theirs).
        rules: a dict or a list of ``(selector, penalty or None)`` pairs, as for
            :class:`~regtorch.Regularizer`, over modules
            (:func:`~regtorch.selection.collect_modules`): a name glob matches module names
            (the root module's name is ``""``), a module type matches the modules of that type,
            an instance that module, a predicate gets ``(name, module)``; containers
            (``nn.Sequential``, the model itself) are modules with outputs and are selected like
            any other (``"*"`` matches the root too). Every module goes to the first rule that
            matches it; ``None`` exempts it; a rule left with no module is an error.
            :data:`~regtorch.WEIGHTS` matches no module. Strengths are read at each forward
            pass: ``penalty.lam = ...`` during training takes effect.

    Raises:
        TypeError: ``rules`` is a bare penalty (activity regularization must be told which modules'
            outputs to penalize), a rule's value is not a penalty or ``None``, or a bad selector.
        ValueError: a rule matches no module, or a penalty has stacked ``[K]`` strengths. During a
            forward pass: a penalty cannot act on an output (the message names the module, the
            output's shape and the penalty).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> act = ActivityRegularizer(model, {"0": L2(0.5), nn.ReLU: L1(0.1)})
        >>> print(act)
        ActivityRegularizer: outputs of 2 modules penalized
          module  type    rule          penalty
          0       Linear  named('0')    L2(0.5)
          1       ReLU    inside(ReLU)  L1(0.1)
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.eye(2)), model[0].bias.zero_()
        >>> _ = model(torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
        >>> act.loss()  # (0.5/2 · (1 + 4 + 9) + 0.1 · (1 + 3)) / 2, batch size 2
        tensor(1.9500, grad_fn=<AddBackward0>)
        >>> act.loss()  # reset by the previous call
        tensor(0.)
        >>> act.remove()
    """

    def __init__(self, model: nn.Module, rules: Any) -> None:
        if isinstance(rules, Penalty):
            raise TypeError(f"Invalid rules: {rules!r} (activity regularization needs to be told "
                            f"which modules' outputs to penalize: pass rules, e.g. "
                            f"ActivityRegularizer(model, {{nn.ReLU: {rules!r}}}) or "
                            f"{{'encoder.*': {rules!r}}})")
        parsed = parse_rules(rules, lambda v: v is None or isinstance(v, Penalty),
                             "a regtorch penalty or None")
        infos = collect_modules(model)
        claimed = assign(infos, parsed, what="module")
        self._model = unwrap(model)
        self._rules: list[_Rule] = []
        for (selector, penalty), got, label in zip(parsed, claimed, rule_labels(parsed)):
            if penalty is None:
                continue
            stacked = [k for k, v in penalty.strengths().items() if isinstance(v, Tensor)]
            if stacked:
                raise ValueError(f"Invalid rule {label} -> {penalty!r}: stacked [K] strength "
                                 f"{stacked[0]!r} (an output's first dimension is its batch, "
                                 f"not K members; use a float strength)")
            self._rules += [_Rule(i.name, i.module, label, selector, penalty) for i in got]
        self._total: Tensor | None = None
        self._handles: list[RemovableHandle] = []
        # The hooks see this object through a weak reference, so that dropping it without
        # remove() cannot leave hooks piling up a graph nobody reads: they are removed with it.
        this = weakref.ref(self)
        for rule in self._rules:
            self._handles.append(rule.module.register_forward_hook(_hook(this, rule)))
        weakref.finalize(self, _remove_handles, self._handles)
        logger.info("regtorch: outputs of %d modules penalized", len(self._rules))

    # -- collecting --------------------------------------------------------------------------
    def _accumulate(self, rule: _Rule, output: Any) -> None:
        if not torch.is_grad_enabled():
            return  # evaluation: nothing to collect, no graph to keep alive
        for path, tensor in _floating_tensors(output):
            try:
                term = activity_penalty(rule.penalty, tensor)
            except ValueError as error:
                raise ValueError(f"Rule {rule.label} -> {rule.penalty!r} cannot act on output"
                                 f"{path} of module {rule.name!r} ({type(rule.module).__name__}) "
                                 f"of shape {tuple(tensor.shape)}: {error}") from None
            self._total = term if self._total is None else self._total + term

    def loss(self) -> Tensor:
        """The activity penalty collected since the last call, as a 0-d tensor to add to the loss;
        resets the total (afterwards this object keeps no reference to the graph).

        Call it once per step, before ``backward()``. With nothing collected it is a zero that
        does not require grad: float32 (float64 if the model's first parameter is), on the
        device of the model's first parameter (CPU for a model without parameters).
        """
        total, self._total = self._total, None
        if total is not None:
            return total
        first = next(self._model.parameters(), None)
        if first is None:
            return torch.zeros(())
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        return torch.zeros((), dtype=dtype, device=first.device)

    def remove(self) -> None:
        """Remove every hook and drop any collected term (calling it again does nothing)."""
        _remove_handles(self._handles)
        self._total = None

    def __enter__(self) -> ActivityRegularizer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    # -- inspection --------------------------------------------------------------------------
    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) of every penalized module, in rule order."""
        for rule in self._rules:
            yield rule.name, rule.module

    def __str__(self) -> str:
        rows = [(r.name or repr(r.name), type(r.module).__name__, r.label, repr(r.penalty))
                for r in self._rules]
        return format_table(f"ActivityRegularizer: outputs of {len(self._rules)} modules "
                            f"penalized", ("module", "type", "rule", "penalty"), rows)

    def __repr__(self) -> str:
        seen: dict[str, Penalty] = {}
        for rule in self._rules:
            seen.setdefault(rule.label, rule.penalty)
        rules = ", ".join(f"{label}: {penalty!r}" for label, penalty in seen.items())
        return f"ActivityRegularizer({{{rules}}})"


def _hook(this: weakref.ref[ActivityRegularizer],
          rule: _Rule) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        regularizer = this()
        if regularizer is not None:
            regularizer._accumulate(rule, output)

    return hook


def _remove_handles(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()
